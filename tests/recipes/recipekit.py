"""What the recipe tests share: a real coordinator and one agent on loopback (tests/conftest.py's
``fleet``), builds that run the recipes in recipes/ with real package managers against their real
registries, and the agent's HOME kept apart so a test can show that nothing leaked into it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from stoker.agent.config import BuildSettings
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2

REPO = Path(__file__).resolve().parents[2]
# Where this machine keeps the CAs it trusts (here, that of a TLS-intercepting proxy in front of the
# registries): the agent passes them to builds as a node's operator would, or Yarn and uv, which do not
# read npm's or pip's configuration, cannot reach the registries.
TRUST_VARIABLES = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR")
DATA = Path(__file__).parent / "data"
TOOLS = Path(__file__).parent / "tools"


def require_tool(name: str, how: str) -> str:
    """The tool's path; a test that lacks it fails (never skips) with how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {how}", pytrace=False)
    return path


def npm_registry_tool(name: str) -> Path:
    """A package manager pinned in tests/recipes/tools/package.json (pnpm, Yarn), installed from the npm
    registry into tests/recipes/tools/node_modules the first time a test needs it and again whenever
    tools/package-lock.json changes. A test that cannot get it fails, saying how.

    ``npm install --no-save``, not ``npm ci``: npm 11 leaves pnpm 12's per-platform optional packages
    (@pnpm/exe.*) for other platforms out of the lockfile it writes, and its own ``npm ci`` then calls that
    lockfile out of sync. The versions are exact in package.json; --no-save leaves both files alone."""
    npm = require_tool("npm", "apt-get install npm (Debian); scripts/system_deps.sh installs it")
    lock = (TOOLS / "package-lock.json").read_bytes()
    stamp = TOOLS / "node_modules" / ".stoker-installed"
    with open(TOOLS / ".install-lock", "w") as guard:  # two test processes at once: one installs
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.read_bytes() != hashlib.sha256(lock).hexdigest().encode():
            done = subprocess.run(
                [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(TOOLS)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                pytest.fail(
                    f"cannot install the pinned {name} (npm install --prefix {TOOLS}, which needs the npm "
                    f"registry):\n{done.stdout}{done.stderr}",
                    pytrace=False,
                )
            stamp.write_text(hashlib.sha256(lock).hexdigest())
    path = TOOLS / "node_modules" / ".bin" / name
    if not path.exists():
        pytest.fail(f"{name} is not in {TOOLS}/package.json: pin it there", pytrace=False)
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


def key_of(prefix: str, files: dict[str, bytes], *names: str, length: int = 16) -> str:
    """The key the docs tell CI to use: a prefix and the hash of the named files, concatenated (``length``
    64: the whole hash, as the recipes' stamps hold it)."""
    return prefix + hashlib.sha256(b"".join(files[n] for n in names)).hexdigest()[:length]


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
    """One coordinator, one agent (``n1``) whose HOME is an empty directory of the test's own, whose PATH
    holds ``tools`` (name -> program) ahead of the machine's own (a node with them installed), and whose
    builds trust the CAs this machine trusts."""

    def __init__(self, fleet, tmp_path: Path, tools: Mapping[str, Path] | None = None) -> None:
        self.home = tmp_path / "agent-home"
        self.home.mkdir()
        bin_dir = tmp_path / "node-bin"
        bin_dir.mkdir()
        for name, program in (tools or {}).items():
            (bin_dir / name).symlink_to(program)
        fleet.start_coordinator()
        pass_env = BuildSettings().pass_env + tuple(v for v in TRUST_VARIABLES if v in os.environ)
        env = {
            "HOME": str(self.home),
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STOKER_AGENT_BUILD_PASS_ENV": ",".join(pass_env),
        }
        fleet.start_agent("n1", env=env)
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
