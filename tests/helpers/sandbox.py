"""Real podman for the sandbox tests: a tiny image made from Debian's busybox-static, a real registry
(Debian's ``docker-registry``) on 127.0.0.1 to pull it from, and podman executors over a storage directory
of their own. No image comes from outside. A missing binary fails the test and names its Debian package."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from stoker.agent.config import PodmanSettings
from stoker.agent.executors.base import BuildJob, Limits, Outcome
from stoker.agent.executors.podman import LABEL, PodmanExecutor
from tests.helpers.net import free_port, wait_port

_PACKAGES = {
    "podman": "podman",
    "runc": "runc",
    "catatonit": "catatonit",
    "docker-registry": "docker-registry",
    "busybox": "busybox-static",
}


def need(command: str) -> str:
    found = shutil.which(command)
    if found is None:
        pytest.fail(
            f"`{command}` is missing: install the Debian package {_PACKAGES[command]} "
            "(scripts/system_deps.sh installs it)"
        )
    return found


def busybox_rootfs_tar() -> bytes:
    """A root filesystem holding only a static busybox, its applets as symlinks, and /etc/passwd."""
    busybox = need("busybox")
    ldd = subprocess.run(["ldd", busybox], capture_output=True, text=True)
    if not any(s in ldd.stdout + ldd.stderr for s in ("not a dynamic executable", "statically linked")):
        pytest.fail(f"{busybox} is not static: install the Debian package busybox-static")
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d, mode in (
            ("bin", 0o755),
            ("etc", 0o755),
            ("tmp", 0o1777),
            ("root", 0o700),
            ("home", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("dev", 0o755),
        ):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@contextmanager
def serve_registry(root: Path) -> Iterator[str]:
    """Debian's docker-registry serving over plain HTTP on 127.0.0.1 with a free port, its data and log under
    ``root``; yields host:port. Raises RuntimeError (with the log's tail) when it does not start."""
    binary = need("docker-registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        try:
            wait_port(port, proc, 30, "docker-registry")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; log: {(root / 'registry.log').read_text()[-2000:]}") from None
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory):
    """:func:`serve_registry` for the session; yields host:port."""
    try:
        with serve_registry(tmp_path_factory.mktemp("registry")) as address:
            yield address
    except RuntimeError as exc:  # it did not start (the tests' own failures are not thrown in here)
        pytest.fail(str(exc))


def _podman(storage: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            need("podman"),
            "--root",
            str(storage / "storage"),
            "--runroot",
            str(storage / "run"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--runtime",
            need("runc"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def push_rootfs(tar: Path, ref: str, work: Path) -> None:
    """Import the root filesystem ``tar`` as the image ``ref`` into a scratch podman storage under ``work``
    and push it to its (plain HTTP) registry; the scratch storage is reset afterwards. RuntimeError when
    podman fails."""
    try:
        for args in (("import", str(tar), ref), ("push", "--tls-verify=false", ref)):
            done = _podman(work, *args)
            if done.returncode != 0:
                raise RuntimeError(f"podman {args[0]} failed: {done.stderr[-2000:]}")
    finally:
        _podman(work, "system", "reset", "--force")


@pytest.fixture(scope="session")
def sandbox_image(local_registry, tmp_path_factory) -> str:
    """The busybox image, imported with podman into a scratch storage and pushed to the local registry."""
    work = tmp_path_factory.mktemp("image")
    tar = work / "rootfs.tar"
    tar.write_bytes(busybox_rootfs_tar())
    ref = f"{local_registry}/stoker-test/busybox:1"
    try:
        push_rootfs(tar, ref, work)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    return ref


@pytest.fixture(scope="session")
def podman_settings(local_registry, sandbox_image, tmp_path_factory) -> PodmanSettings:
    """Settings of a podman executor whose storage lives for the session (the image is pulled once)."""
    for command in ("podman", "runc", "catatonit"):
        need(command)
    storage = tmp_path_factory.mktemp("podman")
    settings = PodmanSettings(dir=str(storage), insecure_registries=(local_registry,), kill_grace_s=1.0)
    yield settings
    reset_storage(settings)


def reset_storage(settings: PodmanSettings) -> None:
    """Remove every container and image of this storage (and its overlay mounts), then the directory."""
    storage = Path(settings.dir)
    for name in containers(settings):
        _podman(storage, "rm", "--force", "--time", "0", name)
    _podman(storage, "system", "reset", "--force")
    shutil.rmtree(storage, ignore_errors=True)


def fresh_settings(settings: PodmanSettings, directory: Path) -> PodmanSettings:
    return replace(settings, dir=str(directory))


def containers(settings: PodmanSettings) -> list[str]:
    """Names of the build containers in this storage, whatever their state."""
    done = _podman(Path(settings.dir), "ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


class OutputLines:
    """A build's output as (text, is_stderr) lines in ``self.lines``, read as its streams."""

    lines: list[tuple[str, bool]]

    @property
    def stdout(self) -> str:
        return "\n".join(t for t, err in self.lines if not err)

    @property
    def stderr(self) -> str:
        return "\n".join(t for t, err in self.lines if err)

    @property
    def text(self) -> str:
        return "\n".join(t for t, _ in self.lines)


class Captured(OutputLines):
    """Output lines of one build, in order, as (text, is_stderr)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def __call__(self, text: str, stderr: bool) -> None:
        self.lines.append((text, stderr))


def job(workspace: Path, image: str, script: str, build_id: str | None = None, **kwargs) -> BuildJob:
    workspace.mkdir(parents=True, exist_ok=True)
    limits = kwargs.pop("limits", Limits(pids=256, memory_bytes=256 * 1024**2))
    return BuildJob(
        build_id=build_id or f"b-{os.urandom(4).hex()}",
        argv=("sh", "-c", script),
        workspace=workspace,
        image=image,
        limits=limits,
        timeout_s=kwargs.pop("timeout_s", 60.0),
        **kwargs,
    )


async def run_one(executor: PodmanExecutor, build: BuildJob) -> tuple[Outcome, Captured]:
    """prepare + run one build on a started executor."""
    out = Captured()
    failed = await executor.prepare(build, out)
    if failed is not None:
        return failed, out
    return await executor.run(build, out), out


def run_builds(settings: PodmanSettings, *builds: BuildJob) -> list[tuple[Outcome, Captured]]:
    """Start an executor and run the builds one after the other (a fresh event loop per call)."""

    async def scenario() -> list[tuple[Outcome, Captured]]:
        executor = PodmanExecutor(settings)
        await executor.start()
        return [await run_one(executor, b) for b in builds]

    return asyncio.run(scenario())


def host_processes_with(text: str) -> list[int]:
    """Host pids whose command line contains ``text`` (a build's marker: none may outlive its build)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read().replace(b"\0", b" "):
                        found.append(int(pid))
            except OSError:
                pass
    return found


def host_addresses() -> list[str]:
    """The host's IPv4 addresses other than podman's bridge (a build on the default network may try them)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if ":" not in a and not a.startswith("10.88.")]


def http_server() -> tuple[socket.socket, int]:
    """A one-line HTTP server on every address (closing it stops the thread)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nhello-4711")

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def host_processes_of_uids(first: int, count: int) -> list[tuple[int, str]]:
    """(pid, command line) of every host process whose real uid is in ``[first, first + count)``: a
    build's user namespace maps onto such a range, so none may run once its builds are over."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uid = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("Uid:")), -1)
        if first <= uid < first + count:
            found.append((int(pid), cmdline.strip()))
    return found
