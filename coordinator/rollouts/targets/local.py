"""The local-process rollout target: instances are processes on loopback behind a real HAProxy.

Per service, under ``<local_dir>/<service>/``:

- ``haproxy.cfg`` / ``haproxy.sock``: one HAProxy (Debian package ``haproxy``) with a frontend on a fixed
  loopback port and one backend whose servers are added, weighted, drained and put in maintenance at run
  time through the **runtime API** (``add server``, ``set weight``, ``set server … state drain``,
  ``… state maint``; retired entries are not deleted, see :meth:`HAProxy.remove`). Its HTTP health check
  (``GET /ready``) decides when a server takes traffic: an instance is *ready* when HAProxy reports it UP.
- ``instances/<id>.json``: one record per instance (zone, version, port, pid, restarts, leaving), written
  **before** the process is started, so a coordinator killed at any moment finds every process it started.
- ``starts.log``: one line per process start (the fault matrix counts them to prove no step was repeated).
- ``versions.json``: each version's environment, so a rollback can start the old version again.

Processes (HAProxy and instances) run in their own sessions: they outlive a coordinator killed with
``kill -9``, and the next coordinator adopts them from the records.

Converging on a desired state (``converge``) is idempotent and driven by what runs: in each zone it starts
missing instances first; surplus instances are drained only once every version the zone should run has all
its instances ready, so a zone never drops below its capacity. Draining: out of the balancer (``drain``),
in-flight requests finish (the server's current sessions reach 0), ``maint``, SIGTERM, and SIGKILL after a
grace period (for instances that ignore SIGTERM, already out of the balancer).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from stoker.coordinator.core.errors import FailedPrecondition, Unavailable
from stoker.coordinator.rollouts.machine import Instance, Observation, Spec

log = logging.getLogger(__name__)

BACKEND = "be"
CHECK = "check inter 300 fall 2 rise 1"


@dataclass
class InstanceRecord:
    id: str
    zone: str
    version: str
    port: int
    pid: int = 0
    restarts: int = 0
    leaving: bool = False
    created: float = 0.0
    last_exit: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:40]


SOCKET_NAME = "haproxy.sock"


@contextlib.contextmanager
def runtime_api_path(home: Path) -> Iterator[str]:
    """A path to ``home``'s HAProxy socket short enough to connect to, however long ``home`` is: through a
    descriptor of the directory (``/proc/self/fd/N/…``), valid while the context lasts."""
    fd = os.open(home, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


class HAProxy:
    """One HAProxy process for a service, driven through its runtime API socket."""

    def __init__(self, home: Path, binary: str) -> None:
        self.home = home
        self.binary = binary
        # The runtime API socket lives in the service's home whatever its length, so whoever removes the home
        # removes the socket: HAProxy binds it relative to its working directory (the home), and clients
        # reach it through a descriptor of the home (a socket path holds at most 108 bytes; a home under
        # pytest's or a user's temp directory can be longer).
        self.socket = home / SOCKET_NAME
        self.config = home / "haproxy.cfg"
        self.state_file = home / "haproxy.json"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def port(self) -> int:
        return int(self._state().get("port", 0))

    @property
    def pid(self) -> int:
        return int(self._state().get("pid", 0))

    async def command(self, line: str, timeout: float = 5.0) -> str:
        try:
            with runtime_api_path(self.home) as path:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        except (TimeoutError, OSError) as exc:
            raise Unavailable(f"HAProxy runtime API at {self.socket}: {exc}") from exc
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), timeout)
        except (TimeoutError, OSError) as exc:
            raise Unavailable(f"HAProxy runtime API command {line!r}: {exc}") from exc
        finally:
            writer.close()
        return data.decode(errors="replace")

    async def running(self) -> bool:
        if not _alive(self.pid):
            return False
        try:
            await self.command("show info", timeout=2.0)
            return True
        except Unavailable:
            return False

    async def ensure(self) -> bool:
        """Start HAProxy unless it runs; returns True when it was (re)started (its servers are gone)."""
        if await self.running():
            return False
        if self.pid:
            log.warning(
                "HAProxy for %s (pid %d) is gone (alive: %s); starting it again",
                self.home.name,
                self.pid,
                _alive(self.pid),
            )
        binary = shutil.which(self.binary) or (self.binary if os.path.isfile(self.binary) else None)
        if binary is None:
            raise FailedPrecondition(
                f"HAProxy ({self.binary}) is not installed: run scripts/system_deps.sh "
                "(Debian package haproxy) or set rollouts.haproxy_binary"
            )
        port = self.port or free_port()
        self.config.write_text(f"""# written by stoker's local rollout target; servers are added at run time
global
    stats socket unix@{SOCKET_NAME} mode 600 level admin
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout queue 5s
    # a health check may take this long (without it HAProxy allows only "inter", 300 ms, and a busy instance
    # answering /ready late twice in a row would flap out of rotation)
    timeout check 2s
frontend fe
    bind 127.0.0.1:{port}
    default_backend {BACKEND}
backend {BACKEND}
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
""")
        self.socket.unlink(missing_ok=True)
        with (self.home / "haproxy.log").open("ab") as out:
            popen = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        _write_json(self.state_file, {"pid": popen.pid, "port": port})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                tail = (self.home / "haproxy.log").read_text(errors="replace")[-2000:]
                raise Unavailable(f"HAProxy exited with {popen.returncode}: {tail}")
            if self.socket.exists():
                try:
                    await self.command("show info", timeout=1.0)
                    log.info(
                        "HAProxy for %s listening on 127.0.0.1:%d (pid %d)", self.home.name, port, popen.pid
                    )
                    return True
                except Unavailable:
                    pass
            await asyncio.sleep(0.05)
        raise Unavailable("HAProxy did not open its runtime API socket within 10 s")

    async def servers(self) -> dict[str, dict]:
        """Server name → {status, scur, weight} from ``show stat``."""
        text = await self.command("show stat")
        rows = csv.reader(io.StringIO(text.lstrip("# ")))
        header = next(rows, [])
        out = {}
        for row in rows:
            if len(row) < len(header):
                continue
            rec = dict(zip(header, row))
            if rec.get("pxname") == BACKEND and rec.get("svname") not in ("BACKEND", "FRONTEND"):
                out[rec["svname"]] = {
                    "status": rec.get("status", ""),
                    "scur": int(rec.get("scur") or 0),
                    "weight": int(rec.get("weight") or 0),
                }
        return out

    async def add(self, name: str, port: int, weight: int = 100) -> None:
        # A new server starts in maintenance and leaves it as UP (HAProxy assumes a server is up until a check
        # fails), so callers add an instance only once it answered GET /ready itself; from then on HAProxy's
        # own check of /ready takes it out of rotation if it stops being ready.
        reply = await self.command(f"add server {BACKEND}/{name} 127.0.0.1:{port} {CHECK} weight {weight}")
        if "registered" not in reply and "Already exists" not in reply:
            raise Unavailable(f"HAProxy refused to add {name}: {reply.strip()}")
        await self.command(f"enable health {BACKEND}/{name}")
        await self.command(f"enable server {BACKEND}/{name}")
        await self.command(f"set weight {BACKEND}/{name} {weight}")

    async def drain(self, name: str) -> None:
        await self.command(f"set server {BACKEND}/{name} state drain")

    async def remove(self, name: str) -> None:
        """Out of rotation for good: maintenance, its health check off. The server entry is not deleted:
        HAProxy 2.6.12 (Debian 12) segfaults when ``del server`` races streams still attached to the server
        (seen here under load), so retired entries stay in maintenance until HAProxy restarts."""
        await self.command(f"set server {BACKEND}/{name} state maint")
        await self.command(f"disable health {BACKEND}/{name}")
        await self.command(f"shutdown sessions server {BACKEND}/{name}")

    def stop(self) -> None:
        """Kill HAProxy and remove its socket (a killed HAProxy leaves it behind)."""
        pid = self.pid
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.socket.unlink(missing_ok=True)


class LocalService:
    """The records and processes of one service."""

    def __init__(self, root: Path, name: str, haproxy_binary: str) -> None:
        self.name = name
        self.home = root / name
        self.instances_dir = self.home / "instances"
        self.logs = self.home / "logs"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.haproxy = HAProxy(self.home, haproxy_binary)
        self.children: dict[int, subprocess.Popen] = {}
        self._published = ""

    def records(self) -> list[InstanceRecord]:
        out = []
        for path in sorted(self.instances_dir.glob("*.json")):
            try:
                out.append(InstanceRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def save(self, rec: InstanceRecord) -> None:
        _write_json(self.instances_dir / f"{rec.id}.json", asdict(rec))

    def forget(self, rec: InstanceRecord) -> None:
        (self.instances_dir / f"{rec.id}.json").unlink(missing_ok=True)

    def versions(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads((self.home / "versions.json").read_text())
        except (OSError, ValueError):
            return {}

    def remember_version(self, version: str, env: dict[str, str]) -> None:
        known = self.versions()
        if version in known and not env:
            return
        known[version] = dict(env)
        _write_json(self.home / "versions.json", known)

    def publish_targets(self, instances: list[Instance]) -> None:
        """``<local_dir>/file_sd+prometheus/<service>.json``: the instances that serve, in Prometheus's
        file_sd format, labelled with service, version and zone, so a Prometheus (``file_sd_configs`` on
        ``<local_dir>/file_sd+prometheus/*.json``: file_sd globs only the last path element) scrapes new
        instances as they come. Written only when it changes, atomically."""
        groups = [
            {
                "targets": [i.address],
                "labels": {
                    "service": self.name,
                    "version": i.version,
                    "zone": i.zone,
                    "stoker_instance": i.id,
                },
            }
            for i in sorted(instances, key=lambda i: i.id)
            if not i.leaving and i.address
        ]
        text = json.dumps(groups, indent=1)
        if text == self._published:
            return
        folder = self.home.parent / "file_sd+prometheus"  # "+": no service can be named so
        folder.mkdir(exist_ok=True)
        path = folder / f"{self.name}.json"
        tmp = folder / f".{self.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        self._published = text

    def alive(self, rec: InstanceRecord) -> bool:
        child = self.children.get(rec.pid)
        if child is not None:
            return child.poll() is None
        return _alive(rec.pid)


class LocalTarget:
    """Implements the engine's target port for processes on this machine."""

    name = "local"

    def __init__(
        self,
        root: str | Path,
        *,
        haproxy_binary: str = "haproxy",
        command: tuple[str, ...] = (),
        drain_timeout_s: float = 10.0,
        stop_grace_s: float = 5.0,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.haproxy_binary = haproxy_binary
        self.command = tuple(command) or (
            sys.executable,
            "-m",
            "stoker.coordinator.rollouts.sample_service",
            "--port",
            "{port}",
            "--instance",
            "{instance}",
            "--version",
            "{version}",
        )
        self.drain_timeout_s = drain_timeout_s
        self.stop_grace_s = stop_grace_s
        self._services: dict[str, LocalService] = {}
        self._draining: dict[str, asyncio.Task] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def check(self) -> None:
        """Raise FailedPrecondition when this target cannot work here (HAProxy missing)."""
        if shutil.which(self.haproxy_binary) is None and not os.path.isfile(self.haproxy_binary):
            raise FailedPrecondition(
                f"the local target needs HAProxy ({self.haproxy_binary}), which is not "
                "installed: run scripts/system_deps.sh (Debian package haproxy)"
            )

    def _service(self, name: str) -> LocalService:
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = LocalService(self.root, name, self.haproxy_binary)
        return svc

    def endpoint(self, spec: Spec) -> str:
        port = self._service(spec.service).haproxy.port
        return f"127.0.0.1:{port}" if port else ""

    async def prepare(self, spec: Spec) -> None:
        """Remember the new version's environment (a rollback to it later needs it)."""
        self.check()
        self._service(spec.service).remember_version(spec.version, spec.env)

    async def observe(self, spec: Spec) -> Observation:
        svc = self._service(spec.service)
        records = svc.records()
        if not records:
            return Observation(())
        servers: dict[str, dict] = {}
        if await svc.haproxy.running():
            servers = await svc.haproxy.servers()
        out = []
        for rec in records:
            status = servers.get(rec.id, {}).get("status", "")
            ready = (not rec.leaving) and svc.alive(rec) and status.startswith("UP")
            out.append(
                Instance(
                    id=rec.id,
                    zone=rec.zone,
                    version=rec.version,
                    ready=ready,
                    restarts=rec.restarts,
                    leaving=rec.leaving,
                    address=f"127.0.0.1:{rec.port}",
                )
            )
        svc.publish_targets(out)
        return Observation(tuple(out))

    async def converge(self, spec: Spec, desired: dict[str, dict[str, int]]) -> None:
        """One idempotent pass towards ``desired`` (zone → version → instances)."""
        lock = self._locks.setdefault(spec.service, asyncio.Lock())
        async with lock:
            await self._converge(spec, desired)

    async def _converge(self, spec: Spec, desired: dict[str, dict[str, int]]) -> None:
        svc = self._service(spec.service)
        restarted = await svc.haproxy.ensure()
        servers = await svc.haproxy.servers()
        records = svc.records()
        now = time.time()
        # Leftover drains (a previous coordinator died mid-drain) continue.
        for rec in records:
            if rec.leaving and rec.id not in self._draining:
                self._start_drain(svc, rec)
        live = [r for r in records if not r.leaving]
        # Crashed instances restart (with a back-off), like a kubelet restarting a container.
        for rec in live:
            if not svc.alive(rec) and rec.pid:
                if not rec.last_exit:
                    rec.last_exit = now
                    svc.save(rec)
                if now - rec.last_exit >= min(0.5 * 2**rec.restarts, 10.0):
                    rec.restarts += 1
                    rec.last_exit = 0.0
                    self._spawn(svc, rec)
            elif not rec.pid and now - rec.created > 5.0:
                await self._adopt_or_spawn(svc, rec)
        # Every live instance is a server of the balancer (after an HAProxy restart, again).
        if restarted:
            servers = {}
        missing = [r for r in live if r.id not in servers and r.pid and svc.alive(r)]
        ready = await asyncio.gather(*(asyncio.to_thread(_probe_ready, r.port, r.id) for r in missing))
        for rec, ok in zip(missing, ready):
            if ok:
                await svc.haproxy.add(rec.id, rec.port)
        servers = await svc.haproxy.servers()

        for zone in sorted(set(desired) | {r.zone for r in live}):
            want = {v: n for v, n in desired.get(zone, {}).items() if n > 0}
            in_zone = [r for r in live if r.zone == zone]
            for version, n in want.items():
                have = [r for r in in_zone if r.version == version]
                for _ in range(n - len(have)):
                    self._create(svc, zone, version)
            ready_enough = all(
                sum(
                    1
                    for r in in_zone
                    if r.version == v
                    and servers.get(r.id, {}).get("status", "").startswith("UP")
                    and svc.alive(r)
                )
                >= n
                for v, n in want.items()
            )
            if not ready_enough:
                continue
            for version in {r.version for r in in_zone}:
                have = [r for r in in_zone if r.version == version]
                surplus = len(have) - want.get(version, 0)
                if surplus <= 0:
                    continue
                # not-ready ones first, then the newest
                have.sort(
                    key=lambda r: (servers.get(r.id, {}).get("status", "").startswith("UP"), -r.created)
                )
                for rec in have[:surplus]:
                    rec.leaving = True
                    svc.save(rec)  # intent first: out of the desired set even if we die right now
                    self._start_drain(svc, rec)

    def _create(self, svc: LocalService, zone: str, version: str) -> InstanceRecord:
        rec = InstanceRecord(
            id=f"{_safe(zone)}-{uuid.uuid4().hex[:8]}",
            zone=zone,
            version=version,
            port=free_port(),
            created=time.time(),
        )
        svc.save(rec)  # the record exists before the process does
        self._spawn(svc, rec)
        return rec

    def _spawn(self, svc: LocalService, rec: InstanceRecord) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_SAMPLE_")}
        env.update(svc.versions().get(rec.version, {}))
        argv = [a.format(port=rec.port, instance=rec.id, version=rec.version) for a in self.command]
        # logged before the process starts, so a coordinator killed right after the start still left a line
        with (svc.home / "starts.log").open("a") as f:
            f.write(
                json.dumps(
                    {
                        "time": time.time(),
                        "instance": rec.id,
                        "zone": rec.zone,
                        "version": rec.version,
                        "restart": rec.restarts,
                    }
                )
                + "\n"
            )
        with (svc.logs / f"{rec.id}.log").open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        svc.children[popen.pid] = popen
        rec.pid = popen.pid
        svc.save(rec)
        log.info(
            "started %s %s in %s on port %d (pid %d)", svc.name, rec.version, rec.zone, rec.port, popen.pid
        )

    async def _adopt_or_spawn(self, svc: LocalService, rec: InstanceRecord) -> None:
        """A record without a pid: the coordinator died between writing it and starting the process (or
        right after). Adopt the process if one answers on the port as this instance, else start it."""
        pid = await asyncio.to_thread(_probe_pid, rec.port, rec.id)
        if pid:
            rec.pid = pid
            svc.save(rec)
        else:
            self._spawn(svc, rec)

    def _start_drain(self, svc: LocalService, rec: InstanceRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(svc, rec))
        self._draining[rec.id] = task
        key = rec.id
        task.add_done_callback(lambda _t: self._draining.pop(key, None))

    async def _drain(self, svc: LocalService, rec: InstanceRecord) -> None:
        try:
            servers = await svc.haproxy.servers()
            if rec.id in servers:
                await svc.haproxy.drain(rec.id)
                deadline = time.monotonic() + self.drain_timeout_s
                await asyncio.sleep(0.2)  # requests already routed to it reach it
                while time.monotonic() < deadline:
                    servers = await svc.haproxy.servers()
                    if servers.get(rec.id, {}).get("scur", 0) == 0:
                        break
                    await asyncio.sleep(0.1)
                await svc.haproxy.remove(rec.id)
            await self._stop_process(svc, rec)
            svc.forget(rec)
            log.info("stopped %s %s in %s (pid %d)", svc.name, rec.version, rec.zone, rec.pid)
        except Exception:
            log.exception("draining %s of %s failed; will retry", rec.id, svc.name)

    async def _stop_process(self, svc: LocalService, rec: InstanceRecord) -> None:
        if not svc.alive(rec):
            return
        try:
            os.kill(rec.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + self.stop_grace_s
        while time.monotonic() < deadline:
            if not svc.alive(rec):
                break
            await asyncio.sleep(0.05)
        if svc.alive(rec):
            log.info("%s ignored SIGTERM for %.1f s; SIGKILL", rec.id, self.stop_grace_s)
            try:
                os.kill(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        child = svc.children.pop(rec.pid, None)
        if child is not None:
            try:
                child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    async def close(self) -> None:
        """Stop driving (processes keep running: a restarted coordinator adopts them)."""
        for task in list(self._draining.values()):
            task.cancel()


def _probe_ready(port: int, instance: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=0.5) as resp:
            if resp.status != 200:
                return False
            body = resp.read()
    except (OSError, ValueError):
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return True  # any 200 is ready; JSON naming another instance (a stale port) is not
    return not isinstance(data, dict) or data.get("instance", instance) == instance


def _probe_pid(port: int, instance: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1.0) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except OSError:
        return 0
    try:
        data = json.loads(body)
    except ValueError:
        return 0
    return int(data.get("pid", 0)) if data.get("instance") == instance else 0


def teardown(root: str | Path) -> int:
    """Kill every process the local target started under ``root`` (tests, the demo and the benchmark call
    this at the end; the coordinator never does, so that its instances outlive it). Returns how many."""
    root = Path(root)
    victims: list[int] = []
    for state in [*root.glob("*/haproxy.json"), *root.glob("*/instances/*.json")]:
        try:
            pid = int(json.loads(state.read_text()).get("pid", 0))
        except (OSError, ValueError):
            continue
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            victims.append(pid)
    killed = len(victims)
    # SIGKILL is delivered asynchronously: wait (briefly) until they are really gone.
    deadline = time.monotonic() + 5.0
    while victims and time.monotonic() < deadline:
        victims = [pid for pid in victims if _alive(pid)]
        if victims:
            time.sleep(0.02)
    for sock in root.glob(f"*/{SOCKET_NAME}"):  # a killed HAProxy leaves its socket behind
        sock.unlink(missing_ok=True)
    return killed


def starts(root: str | Path, service: str) -> list[dict]:
    """Every process start of a service, in order (from ``starts.log``)."""
    path = Path(root) / service / "starts.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def servers_up_by_zone(root: str | Path, service: str) -> dict[str, int]:
    """Zone → instances the service's HAProxy reports UP (ready and taking traffic), read synchronously from
    the runtime API; for observers outside the coordinator (the fault matrix checks capacity floors)."""
    home = Path(root) / service
    haproxy = HAProxy(home, "haproxy")
    zones = {}
    for rec in LocalService(Path(root), service, "haproxy").records():
        zones[rec.id] = rec.zone
    with socket.socket(socket.AF_UNIX) as s, runtime_api_path(haproxy.home) as path:
        s.settimeout(2.0)
        s.connect(path)
        s.sendall(b"show stat\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    rows = csv.reader(io.StringIO(b"".join(chunks).decode(errors="replace").lstrip("# ")))
    header = next(rows, [])
    out: dict[str, int] = {}
    for row in rows:
        stat = dict(zip(header, row))
        if (
            stat.get("pxname") == BACKEND
            and stat.get("status", "").startswith("UP")
            and stat.get("svname") in zones
        ):
            zone = zones[stat["svname"]]
            out[zone] = out.get(zone, 0) + 1
    return out
