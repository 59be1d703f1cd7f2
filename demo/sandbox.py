"""Sandboxed builds for ``stoker demo``: a small image made here, served from a local registry, run by podman.

The demo's builds run the demo's installer, a Python program, so the image holds a Python: the files of the
host's own Debian packages (python3.11-minimal, its standard library and the libraries they link), plus a
static busybox for ``sh``. Nothing comes from outside the machine. The image is pushed to Debian's
``docker-registry`` on 127.0.0.1 (plain HTTP, which the agents are told to allow for that address only), and
every agent pulls it from there on its first build, as a fleet pulls from its registry.

When podman cannot run here (not installed, not root, no Debian Python to make the image from), the demo
says why and runs its builds with the ``process`` executor instead, unsandboxed.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_PACKAGES = (
    "libc6",
    "libgcc-s1",
    "zlib1g",
    "libexpat1",
    "libssl3",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
)
"""The Debian packages whose installed files make the image's Python (python3.11-minimal's dependencies,
and the standard library the installer imports json and shutil from)."""

_TOOLS = {
    "podman": "podman",
    "runc": "runc",
    "iptables": "iptables",
    "catatonit": "catatonit",
    "docker-registry": "docker-registry",
    "busybox": "busybox-static",
    "dpkg-query": "dpkg",
}
_CATATONIT = ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit")


@dataclass
class Sandbox:
    """How the demo's agents run builds: the executor, the agents' settings for it, and why."""

    executor: str
    why: str
    image: str = ""
    agent_env: dict[str, str] = field(default_factory=dict)
    registry: subprocess.Popen | None = None

    def env_for(self, node: str, base: Path) -> dict[str, str]:
        """The agent settings of ``node``: its own podman storage (a short path: podman refuses long run
        directories) when sandboxed, the process executor, said explicitly, otherwise."""
        if self.executor != "podman":
            return {"STOKER_AGENT_BUILD_EXECUTOR": "process"}
        storage = Path(f"/tmp/stoker-demo-pm-{base.name[-8:]}-{node}")
        return {**self.agent_env, "STOKER_AGENT_PODMAN_DIR": str(storage)}

    def stop(self, base: Path, nodes: list[str]) -> None:
        """Stop the registry and remove each agent's podman storage (its overlay mounts with it)."""
        if self.registry is not None:
            self.registry.terminate()
            try:
                self.registry.wait(10)
            except subprocess.TimeoutExpired:
                self.registry.kill()
        if self.executor == "podman":
            for node in nodes:
                storage = Path(self.env_for(node, base)["STOKER_AGENT_PODMAN_DIR"])
                if storage.exists():
                    _podman(storage, "system", "reset", "--force")
                    shutil.rmtree(storage, ignore_errors=True)


def prepare(base: Path, say) -> Sandbox:
    """Make the image and serve it, or say why the demo's builds will not be sandboxed."""
    problem = _why_not_podman()
    if problem:
        return Sandbox("process", problem)
    say("  making the builds' image from this machine's Debian packages (python3.11, busybox) ...")
    started = time.monotonic()
    work = base / "image"
    work.mkdir(parents=True, exist_ok=True)
    rootfs = work / "rootfs.tar"
    try:
        size = _write_rootfs(rootfs)
    except (OSError, subprocess.CalledProcessError) as exc:
        return Sandbox("process", f"cannot make the builds' image: {exc}")
    registry, address = _start_registry(work)
    if registry is None:
        return Sandbox("process", f"docker-registry did not start: {address}")
    image = f"{address}/stoker-demo/python:3.11"
    storage = Path(f"/tmp/stoker-demo-img-{base.name[-8:]}")
    try:
        for args in (("import", str(rootfs), image), ("push", "--tls-verify=false", image)):
            done = _podman(storage, *args)
            if done.returncode != 0:
                registry.terminate()
                last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                return Sandbox("process", f"podman {args[0]} of the builds' image failed: {last}")
    finally:
        _podman(storage, "system", "reset", "--force")
        shutil.rmtree(storage, ignore_errors=True)
    say(f"  image {image} ({size / 1e6:.0f} MB) served from 127.0.0.1 in {time.monotonic() - started:.1f} s")
    env = {
        "STOKER_AGENT_BUILD_EXECUTOR": "podman",
        "STOKER_AGENT_BUILD_DEFAULT_IMAGE": image,
        "STOKER_AGENT_PODMAN_INSECURE_REGISTRIES": address,
    }
    return Sandbox("podman", "each build in its own podman container", image, env, registry)


def _why_not_podman() -> str:
    """Why podman cannot run the demo's builds here ('' when it can)."""
    missing = [pkg for tool, pkg in _TOOLS.items() if shutil.which(tool) is None]
    if not any(os.access(p, os.X_OK) for p in _CATATONIT):
        missing.append("catatonit")
    if missing:
        packages = " ".join(sorted(set(missing)))
        return f"missing Debian packages: {packages} (scripts/system_deps.sh installs them)"
    if os.geteuid() != 0:
        return "the podman executor maps each build onto its own uid range, which needs root here"
    absent = [p for p in IMAGE_PACKAGES if not _installed(p)]
    if absent:
        return f"no Debian Python to make the builds' image from (not installed: {' '.join(absent)})"
    return ""


def _installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status}", package], capture_output=True, text=True
    )
    return done.returncode == 0 and done.stdout.strip() == "installed"


def _write_rootfs(path: Path) -> int:
    """The image's root filesystem as a tar, merged-/usr like Debian's own: the packages' files as installed,
    busybox as ``sh``, ``python3`` on the PATH, /etc/passwd. Returns the bytes of regular files in it."""
    files: set[str] = set()
    for package in IMAGE_PACKAGES:
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True)
        files.update(line for line in listed.stdout.splitlines() if line.startswith("/"))
    busybox = shutil.which("busybox")
    assert busybox is not None
    total = 0
    with tarfile.open(path, "w") as tar:
        made = ("usr", "usr/bin", "usr/lib", "usr/lib64", "usr/sbin", "etc", "home", "proc", "sys", "dev")
        for d in made:
            _add_dir(tar, d, 0o755)
        _add_dir(tar, "tmp", 0o1777)
        for top in ("bin", "sbin", "lib", "lib64"):
            _add_symlink(tar, top, f"usr/{top}")
        added = {*made, "tmp", "bin", "sbin", "lib", "lib64"}
        for name in sorted(files):
            arcname = _merged_usr(name)
            if arcname in added or not os.path.lexists(name):
                continue  # a file listed twice (/lib and /usr/lib), or excluded from installation (docs)
            if os.path.isdir(name) and not os.path.islink(name):
                _add_dir(tar, arcname, 0o755)
            else:
                tar.add(name, arcname=arcname, recursive=False)
                total += 0 if os.path.islink(name) else os.path.getsize(name)
            added.add(arcname)
        tar.add(busybox, arcname="usr/bin/busybox")
        total += os.path.getsize(busybox)
        _add_symlink(tar, "usr/bin/sh", "busybox")
        _add_symlink(tar, "usr/bin/python3", "python3.11")
        _add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    return total


def _merged_usr(name: str) -> str:
    """Where a package's file goes in a merged-/usr tree (/lib/x → usr/lib/x), as a relative name."""
    for top in ("/bin/", "/sbin/", "/lib/", "/lib64/"):
        if name.startswith(top):
            return "usr" + name
    return name.lstrip("/")


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _start_registry(work: Path) -> tuple[subprocess.Popen | None, str]:
    """Debian's docker-registry on a free port of 127.0.0.1; (process, host:port), or (None, why)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = work / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {work}/registry\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(work / "registry.log", "wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, (work / "registry.log").read_text()[-500:] or f"exit {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    return None, "not listening after 20 s"


def _podman(storage: Path, *args: str) -> subprocess.CompletedProcess:
    runc = shutil.which("runc") or "runc"
    return subprocess.run(
        [
            "podman",
            "--root",
            str(storage / "storage"),
            "--runroot",
            str(storage / "run"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--runtime",
            runc,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
