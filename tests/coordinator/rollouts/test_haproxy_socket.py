"""HAProxy's runtime API socket lives in the service's home however long its path is, and nothing of it is
left behind however HAProxy stops (issue 20: the demo left ``stoker-haproxy-*.sock`` in the temp dir).

A real HAProxy (Debian package haproxy; scripts/system_deps.sh installs it) on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from stoker.coordinator.rollouts.targets import local as target_local

pytestmark = pytest.mark.integration


@pytest.fixture
def long_home(tmp_path, haproxy, monkeypatch) -> Path:
    """A service home whose socket path is longer than a unix socket address can hold (108 bytes), and a
    private system temp dir, so anything written outside the home shows."""
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    home = tmp_path / ("r" * 60) / ("s" * 60) / "sample"
    home.mkdir(parents=True)
    assert len(str(home / target_local.SOCKET_NAME)) > 108
    return home


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not target_local._alive(pid):
            return True
        time.sleep(0.02)
    return False


def _left_outside(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "systmp").iterdir()) + list(Path("/tmp").glob("stoker-haproxy-*.sock"))


def _started(home: Path, haproxy: str) -> target_local.HAProxy:
    lb = target_local.HAProxy(home, haproxy)
    assert asyncio.run(lb.ensure()) is True
    assert "Name: HAProxy" in asyncio.run(lb.command("show info"))
    assert (home / target_local.SOCKET_NAME).is_socket()
    return lb


def test_stop_removes_the_socket(long_home, haproxy, tmp_path):
    before = set(Path("/tmp").glob("stoker-haproxy-*.sock"))
    lb = _started(long_home, haproxy)
    pid = lb.pid
    lb.stop()
    assert _gone(pid)
    assert not (long_home / target_local.SOCKET_NAME).exists()
    assert [p for p in _left_outside(tmp_path) if p not in before] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_haproxy_killed_from_outside_leaves_nothing_past_the_next_start_or_teardown(
    long_home, haproxy, tmp_path, sig
):
    """Killed by someone else (an operator's SIGTERM, the OOM killer's SIGKILL), HAProxy may leave its socket;
    it is only ever in the home, the next start (a restarted coordinator's ensure) replaces it, and the
    teardown that tests, the demo and the benchmark run removes it."""
    before = set(Path("/tmp").glob("stoker-haproxy-*.sock"))
    lb = _started(long_home, haproxy)
    first = lb.pid
    os.kill(first, sig)
    assert _gone(first)
    assert [p for p in _left_outside(tmp_path) if p not in before] == []

    again = _started(long_home, haproxy)  # as a coordinator restarted after a crash does
    assert again.pid != first
    assert target_local.teardown(long_home.parent) == 1
    assert not (long_home / target_local.SOCKET_NAME).exists()
    assert [p for p in _left_outside(tmp_path) if p not in before] == []


def test_servers_up_by_zone_reads_the_socket_of_a_long_home(long_home, haproxy):
    lb = _started(long_home, haproxy)
    try:
        assert target_local.servers_up_by_zone(long_home.parent, long_home.name) == {}
    finally:
        lb.stop()
