"""Start a coordinator and agents as real processes on loopback (the demo and the tests use this).

Each process binds port 0 and reports its ports through a ready file, so nothing races for ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from stoker.v1 import inventory_pb2, inventory_pb2_grpc


class FleetError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path
    ready: dict = field(default_factory=dict)

    @property
    def grpc_port(self) -> int:
        return self.ready["grpc_port"]

    @property
    def metrics_port(self) -> int:
        return self.ready["metrics_port"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(name: str, args: list[str], workdir: Path, env: dict[str, str] | None, timeout: float) -> Process:
    workdir.mkdir(parents=True, exist_ok=True)
    ready_file = workdir / f"{name}.ready.json"
    ready_file.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_")}
    full_env.update(env or {})
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stoker.cli.main",
                *args,
                "--ready-file",
                str(ready_file),
                "--log-format",
                "text",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
    proc = Process(name=name, popen=popen, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists():
            proc.ready = json.loads(ready_file.read_text())
            return proc
        if popen.poll() is not None:
            raise FleetError(f"{name} exited with {popen.returncode} before it was ready:\n{proc.log_tail()}")
        time.sleep(0.05)
    proc.kill()
    raise FleetError(f"{name} was not ready within {timeout:.0f} s:\n{proc.log_tail()}")


def start_coordinator(
    workdir: Path,
    *,
    name: str = "coordinator",
    state: Path | None = None,
    lease_ttl_s: float | None = None,
    listen: str = "127.0.0.1:0",
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Process:
    args = [
        "coordinator",
        "--listen",
        listen,
        "--metrics-listen",
        "127.0.0.1:0",
        "--state",
        str(state or workdir / "coordinator.db"),
    ]
    if lease_ttl_s is not None:
        args += ["--lease-ttl", str(lease_ttl_s)]
    # One user's own machine, whose agents run their builds as processes (see start_agent): every build
    # may go to them. A deployed coordinator keeps builds off such nodes unless a build asks.
    env = {"STOKER_COORDINATOR_BUILDS_PROCESS_NODES": "always", **(env or {})}
    return _spawn(name, args + (extra or []), workdir, env, timeout)


def start_agent(
    workdir: Path,
    name: str,
    coordinator: str,
    *,
    zone: str = "",
    slots: int = 1,
    blobs: Path,
    labels: dict[str, str] | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Process:
    home = workdir / name
    args = [
        "agent",
        "--name",
        name,
        "--zone",
        zone,
        "--slots",
        str(slots),
        "--coordinator",
        coordinator,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--cache-dir",
        str(home / "cache"),
        "--work-dir",
        str(home / "work"),
        "--blobs",
        f"file://{blobs}",
        "--drain",
        "10",
    ]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    # The harness's builds run this machine's Python, which no image holds: the process executor, said
    # explicitly (an agent's default is podman wherever it can run), unless the caller asks for another.
    # No local cache socket unless the caller asks (STOKER_AGENT_CACHE_LOCAL_SOCKET): the default path is one
    # per machine, and a harness runs several agents on one.
    env = {"STOKER_AGENT_BUILD_EXECUTOR": "process", "STOKER_AGENT_CACHE_LOCAL_SOCKET": "", **(env or {})}
    return _spawn(name, args + (extra or []), workdir, env, timeout)


def wait_for_nodes(
    address: str, names: list[str], timeout: float = 30.0
) -> inventory_pb2.QueryInventoryResponse:
    """Wait until every named node is READY on the coordinator at ``address``."""
    deadline = time.monotonic() + timeout
    last = None
    with grpc.insecure_channel(address) as channel:
        stub = inventory_pb2_grpc.InventoryStub(channel)
        while time.monotonic() < deadline:
            try:
                last = stub.QueryInventory(inventory_pb2.QueryInventoryRequest(summary_only=True), timeout=5)
                ready = {n.node for n in last.nodes if n.state == inventory_pb2.NODE_STATE_READY}
                if set(names) <= ready:
                    return last
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise FleetError(f"nodes {names} did not all become ready within {timeout:.0f} s; last view: {last}")
