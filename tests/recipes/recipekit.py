"""What the recipe tests share: a real coordinator and one agent on loopback (tests/conftest.py's
``fleet``), builds that run the recipes in recipes/ with real package managers against their real
registries, and the agent's HOME kept apart so a test can show that nothing leaked into it."""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"


def require_tool(name: str, how: str) -> str:
    """The tool's path; a test that lacks it fails (never skips) with how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {how}", pytrace=False)
    return path


def files_of(*dirs: Path, recipe: str) -> dict[str, bytes]:
    """The build's input files: every file of ``dirs`` (later ones win) plus the recipe as recipes/<name>."""
    files: dict[str, bytes] = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(d))] = p.read_bytes()
    files[f"recipes/{recipe}"] = (REPO / "recipes" / recipe).read_bytes()
    return files


def key_of(prefix: str, files: dict[str, bytes], *names: str) -> str:
    """The key the docs tell CI to use: a prefix and the hash of the named files, concatenated."""
    return prefix + hashlib.sha256(b"".join(files[n] for n in names)).hexdigest()[:16]


@dataclass
class Build:
    finished: build_pb2.Finished
    lines: list[str]
    kinds: list[str]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def ok(self) -> bool:
        return self.finished.state == build_pb2.BUILD_STATE_SUCCEEDED

    def env(self, name: str) -> str:
        """A ``NAME=value`` line the build printed (the command echoes the variables it was given)."""
        for line in self.lines:
            if line.startswith(f"{name}="):
                return line.split("=", 1)[1]
        raise AssertionError(f"the build did not print {name}:\n{self.output}\nevents: {self.kinds}")

    def count(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    def explain(self) -> str:
        return (
            f"{build_pb2.BuildState.Name(self.finished.state)} exit {self.finished.exit_code}:\n{self.output}"
        )


class RecipeFleet:
    """One coordinator, one agent (``n1``) whose HOME is an empty directory of the test's own."""

    def __init__(self, fleet, tmp_path: Path) -> None:
        self.home = tmp_path / "agent-home"
        self.home.mkdir()
        fleet.start_coordinator()
        fleet.start_agent("n1", env={"HOME": str(self.home)})
        fleet.wait_ready("n1")
        self.fleet = fleet
        self._channel = grpc.insecure_channel(fleet.coordinator.address)
        self.stub = build_pb2_grpc.BuildsStub(self._channel)

    def run(
        self,
        command: str,
        files: dict[str, bytes],
        *,
        key: str = "",
        restore: tuple[str, ...] = (),
        paths: tuple[str, ...] = (),
        workspace: str = "web",
        env: dict[str, str] | None = None,
        timeout: float = 240,
    ) -> Build:
        """Run ``sh -c command`` with the cache spec given; the command's first lines echo the cache
        signal."""
        echo = (
            'echo "STOKER_CACHE_HIT=$STOKER_CACHE_HIT"; '
            'echo "STOKER_CACHE_RESTORED_KEY=$STOKER_CACHE_RESTORED_KEY"; '
        )
        spec = common_pb2.BuildSpec(
            workspace=workspace,
            command=["sh", "-c", echo + command],
            timeout_s=timeout,
            files=files,
            env=env or {},
            cache=common_pb2.CacheSpec(key=key, restore_keys=list(restore), paths=list(paths) if key else []),
        )
        lines: list[str] = []
        kinds: list[str] = []
        finished = None
        for event in self.stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=timeout + 60):
            kind = event.WhichOneof("kind")
            kinds.append(f"{event.seq}:{kind}")
            if kind == "log":
                lines.append(event.log.text)
            elif kind == "finished":
                finished = event.finished
        assert finished is not None, "the build stream ended without a finished event"
        return Build(finished, lines, kinds)

    def home_contents(self) -> list[str]:
        """What builds left in the agent's HOME, but for ~/.rustup: pip puts `rustc --version` in its
        user agent, and the rustup proxy on this machine's PATH writes its settings there."""
        return sorted(
            str(p.relative_to(self.home))
            for p in self.home.rglob("*")
            if not str(p.relative_to(self.home)).startswith(".rustup")
        )

    def close(self) -> None:
        self._channel.close()
