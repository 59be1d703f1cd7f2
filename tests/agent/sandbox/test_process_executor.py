"""The process executor (today's behaviour behind the executor interface): exit codes and streams, the
timeout and cancel take the whole process group down, output limits, and a crashed agent's groups are
killed at the next start. It isolates nothing, so it refuses a build that asks for no network."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time

import pytest

from stoker.agent.executors.base import BuildJob, EndReason, Limits
from stoker.agent.executors.process import ProcessExecutor
from tests.helpers.sandbox import Captured

pytestmark = [pytest.mark.integration]


def _run(tmp_path, script: str, **kwargs):
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    build = BuildJob("p1", ("sh", "-c", script), ws, **kwargs)

    async def scenario():
        executor = ProcessExecutor(tmp_path / "groups", ("PATH",), kill_grace_s=0.5)
        await executor.start()
        out = Captured()
        refused = await executor.prepare(build, out)
        if refused is not None:
            return refused, out
        return await executor.run(build, out), out

    return asyncio.run(scenario())


def test_exit_code_streams_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-secret-4711")
    outcome, out = _run(tmp_path, "echo out; echo err >&2; env; exit 4", env={"MINE": "1"})
    assert (outcome.exit_code, outcome.reason) == (4, EndReason.EXITED)
    assert "out" in out.stdout.splitlines() and out.stderr == "err"
    assert "MINE=1" in out.stdout and f"STOKER_WORKSPACE={tmp_path / 'ws'}" in out.stdout
    assert "4711" not in out.stdout


@pytest.mark.parametrize("how", ["timeout", "output"])
def test_timeout_and_output_limit_stop_the_whole_group(tmp_path, how):
    marker = f"{6000 + os.getpid() % 1000}.{random.randint(100, 999)}"
    script = f"sleep {marker} & " + ("yes" if how == "output" else f"sleep {marker}")
    started = time.monotonic()
    outcome, _ = _run(tmp_path, script, timeout_s=1.0, limits=Limits(output_bytes=10_000))
    assert outcome.reason is (EndReason.TIMEOUT if how == "timeout" else EndReason.OUTPUT), outcome
    assert time.monotonic() - started < 10
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith(f"sleep {marker}")]


def test_a_disk_filler_is_stopped_with_a_clear_reason(tmp_path):
    script = "for i in $(seq 1 400); do head -c 1048576 /dev/zero > f$i; sleep 0.05; done; echo end"
    outcome, out = _run(tmp_path, script, limits=Limits(disk_bytes=8 * 1024**2))
    assert outcome.reason is EndReason.DISK, outcome
    assert "past its disk limit of 8388608 bytes" in outcome.message
    assert "end" not in out.stdout and len(list((tmp_path / "ws").iterdir())) < 100


def test_network_none_is_refused(tmp_path):
    outcome, _ = _run(tmp_path, "echo never", limits=Limits(network="none"))
    assert outcome.reason is EndReason.NOT_STARTED and "podman" in outcome.message


def test_leftover_groups_are_killed_at_start(tmp_path):
    groups = tmp_path / "groups"
    groups.mkdir()
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    (groups / "crashed-1").write_text(str(proc.pid))
    killed = asyncio.run(ProcessExecutor(groups, ()).cleanup_leftovers())
    assert killed == 1 and proc.wait(5) == -9
    assert list(groups.iterdir()) == []


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_exit_codes_agree_with_the_podman_executors(tmp_path):
    """The command's status; -N when signal N ended it; 127 when the command does not exist (the podman
    executor's test of the same name checks that it reports the same)."""
    timed_out, _ = _run(tmp_path, "sleep 60", timeout_s=0.5)
    assert (timed_out.exit_code, timed_out.reason) == (-15, EndReason.TIMEOUT), timed_out
    ws = tmp_path / "ws2"
    ws.mkdir()

    async def missing():
        executor = ProcessExecutor(tmp_path / "groups2", ("PATH",), kill_grace_s=0.5)
        await executor.start()
        return await executor.run(BuildJob("p2", ("no-such-command",), ws), Captured())

    outcome = asyncio.run(missing())
    assert outcome.exit_code == 127 and outcome.reason is EndReason.NOT_STARTED, outcome
