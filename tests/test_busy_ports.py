"""A second coordinator or agent on a port already in use refuses to start with one clear line (issue 17,
item 2). gRPC Python enables SO_REUSEPORT by default: the second server bound the port too and the kernel
split connections between the two (a client's calls reached the new, empty coordinator). Real processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stoker.demo import local_fleet

pytestmark = pytest.mark.integration


def start(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def coordinator(tmp_path):
    c = local_fleet.start_coordinator(tmp_path / "first")
    yield c
    c.stop()


def one_line(result: subprocess.CompletedProcess, command: str, address: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the start's own log lines
    assert last.startswith(f"stoker {command}: cannot ") and address in last, result.stderr
    assert "give each its own --listen and --metrics-listen" in last


def test_a_second_coordinator_on_a_busy_port_refuses_to_start(coordinator, tmp_path):
    busy = f"127.0.0.1:{coordinator.grpc_port}"
    result = start(
        "coordinator", "--listen", busy, "--metrics-listen", "127.0.0.1:0", "--state", str(tmp_path / "c2.db")
    )
    one_line(result, "coordinator", busy)
    assert coordinator.popen.poll() is None  # the first one goes on


def test_a_busy_metrics_port_is_one_line_too(coordinator, tmp_path):
    busy = f"127.0.0.1:{coordinator.metrics_port}"
    result = start(
        "coordinator", "--listen", "127.0.0.1:0", "--metrics-listen", busy, "--state", str(tmp_path / "c2.db")
    )
    one_line(result, "coordinator", busy)


def test_an_agent_on_a_busy_port_refuses_to_start(coordinator, tmp_path):
    busy = f"127.0.0.1:{coordinator.grpc_port}"
    result = start(
        "agent", "--name", "n9", "--coordinator", coordinator.address, "--listen", busy,
        "--metrics-listen", "127.0.0.1:0", "--cache-dir", str(tmp_path / "cache"),
        "--work-dir", str(tmp_path / "work"), "--blobs", f"file://{tmp_path / 'blobs'}",
        "--executor", "process",
    )  # fmt: skip
    one_line(result, "agent", busy)
