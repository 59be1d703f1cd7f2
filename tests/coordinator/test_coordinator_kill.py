"""kill -9 the coordinator with builds queued and running; restart it on the same port and state file.

Every CI client reconnects (the real ``stoker build`` CLI, and a gRPC client that resumes with
``WatchBuild(after_seq)``) and sees each build finish exactly once with its own exit code; marker files
written by the build commands show that no build ran to completion twice. One build ends while the
coordinator is down: the agent must deliver its end after the restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from stoker.v1 import build_pb2, build_pb2_grpc
from tests.helpers.faults import builds_stub, kinds, spec, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def marked_command(marks: Path, tag: str, sleep_s: float, exit_code: int) -> list[str]:
    return [
        "sh",
        "-c",
        (
            f"echo run >> {marks}/{tag}.start; echo begin-{tag}; sleep {sleep_s}; "
            f"echo run >> {marks}/{tag}.done; echo end-{tag}; exit {exit_code}"
        ),
    ]


class ReconnectingClient(threading.Thread):
    """A CI client on raw gRPC: SubmitBuild, and after any break WatchBuild(after_seq=last seen)."""

    def __init__(self, address: str, build_spec, request_id: str, deadline_s: float = 90) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.spec = build_spec
        self.request_id = request_id
        self.deadline = time.monotonic() + deadline_s
        self.events: list[build_pb2.BuildEvent] = []
        self.build_id = ""
        self.reconnects = 0
        self.error: str = ""

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                with grpc.insecure_channel(self.address) as ch:
                    stub = build_pb2_grpc_stub(ch)
                    if not self.build_id:
                        stream = stub.SubmitBuild(
                            build_pb2.SubmitBuildRequest(spec=self.spec, request_id=self.request_id)
                        )
                    else:
                        last = self.events[-1].seq if self.events else 0
                        stream = stub.WatchBuild(
                            build_pb2.WatchBuildRequest(build_id=self.build_id, after_seq=last)
                        )
                    for event in stream:
                        self.build_id = event.build_id
                        self.events.append(event)
                        if event.HasField("finished"):
                            return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    self.error = f"{exc.code().name}: {exc.details()}"
                    return
            self.reconnects += 1
            time.sleep(0.2)
        self.error = "gave up"


def queue_depth(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return next(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith("stoker_coordinator_queue_depth ")
    )


def build_pb2_grpc_stub(channel):
    from stoker.v1 import build_pb2_grpc

    return build_pb2_grpc.BuildsStub(channel)


def stoker_build(address: str, marks: Path, tag: str, sleep_s: float, exit_code: int) -> subprocess.Popen:
    env = {**os.environ, "STOKER_COORDINATOR": address}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stoker.cli.main",
            "build",
            "--workspace",
            f"w-{tag}",
            "--timeout",
            "120",
            "--",
            *marked_command(marks, tag, sleep_s, exit_code),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_coordinator_kill_9_with_builds_queued_and_running(fleet, port_factory, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    port = port_factory()
    listen = f"127.0.0.1:{port}"
    state = tmp_path / "state.db"
    c = fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10)
    fleet.start_agent("n1", slots=1)
    fleet.start_agent("n2", slots=1)
    fleet.wait_ready("n1", "n2")

    # Two builds run, two wait in the queue.
    short_cli = stoker_build(c.address, marks, "short", 4, 3)
    long_rpc = ReconnectingClient(
        c.address, spec(marked_command(marks, "long", 6, 0), workspace="w-long"), "rq-long"
    )
    long_rpc.start()
    wait_until(
        lambda: (marks / "short.start").exists() and (marks / "long.start").exists(),
        30,
        "both running builds to start",
    )
    queued_cli = stoker_build(c.address, marks, "q1", 0.5, 5)
    queued_rpc = ReconnectingClient(
        c.address, spec(marked_command(marks, "q2", 0.5, 7), workspace="w-q2"), "rq-q2"
    )
    queued_rpc.start()
    wait_until(lambda: queued_rpc.events and queued_rpc.events[0].HasField("queued"), 15, "q2 to be queued")
    stub = builds_stub(c.address)
    assert (
        stub.GetBuild(build_pb2.GetBuildRequest(build_id=queued_rpc.build_id), timeout=5).state
        == build_pb2.BUILD_STATE_QUEUED
    )
    wait_until(lambda: queue_depth(c.metrics_port) == 2, 20, "both q1 (the CLI) and q2 to wait in the queue")

    c.kill()
    time.sleep(1.0)
    assert not (marks / "short.done").exists()  # this test keeps every build running across the gap
    c2 = fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10, name="coordinator-2")
    assert c2.grpc_port == port

    outcomes = {}
    for tag, proc, code in (("short", short_cli, 3), ("q1", queued_cli, 5)):
        out, err = proc.communicate(timeout=90)
        outcomes[tag] = (proc.returncode, out, err)
        assert proc.returncode == code, f"{tag}: exit {proc.returncode}, wanted {code}\n{err}"
        # The CLI resumed after the gap without printing anything twice.
        assert out.count(f"begin-{tag}") == 1 and out.count(f"end-{tag}") == 1, out
        assert err.count("stoker: finished") == 1, err
    for client, code in ((long_rpc, 0), (queued_rpc, 7)):
        client.join(90)
        assert not client.error, client.error
        ks = kinds(client.events)
        assert ks.count("finished") == 1 and ks[-1] == "finished", ks
        seqs = [e.seq for e in client.events]
        assert seqs == sorted(set(seqs)), f"events repeated or out of order: {seqs}"
        assert client.events[-1].finished.exit_code == code
        assert client.reconnects >= 1  # it really lost its stream and came back with WatchBuild
    assert long_rpc.events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
    assert queued_rpc.events[-1].finished.state == build_pb2.BUILD_STATE_FAILED

    # No build ran to completion twice (and none was started twice: the restart requeued nothing).
    for tag in ("short", "long", "q1", "q2"):
        assert (marks / f"{tag}.done").read_text().count("run") == 1, tag
        assert (marks / f"{tag}.start").read_text().count("run") == 1, tag
    # The restarted coordinator's record agrees with what the clients saw.
    stub2 = builds_stub(c2.address)
    record = stub2.GetBuild(build_pb2.GetBuildRequest(build_id=long_rpc.build_id), timeout=5)
    assert record.state == build_pb2.BUILD_STATE_SUCCEEDED and record.exit_code == 0 and record.attempt == 1
    history = list(stub2.WatchBuild(build_pb2.WatchBuildRequest(build_id=long_rpc.build_id), timeout=10))
    assert kinds(history).count("finished") == 1
    assert [e.seq for e in history] == [e.seq for e in long_rpc.events]


def test_build_that_ends_while_the_coordinator_is_down_runs_once(fleet, port_factory, tmp_path):
    """The agent reports how the build ended before its first heartbeat, so the restarted coordinator does
    not requeue a build that is already over (it used to run it a second time)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    port = port_factory()
    listen, state = f"127.0.0.1:{port}", tmp_path / "state.db"
    c = fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10)
    fleet.start_agent("n1", slots=1)
    fleet.wait_ready("n1")
    client = stoker_build(c.address, marks, "gap", 1.0, 3)
    wait_until(lambda: (marks / "gap.start").exists(), 30, "the build to start")
    c.kill()
    wait_until(lambda: (marks / "gap.done").exists(), 15, "the build to end while the coordinator is down")
    time.sleep(0.5)
    fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10, name="coordinator-2")
    out, err = client.communicate(timeout=60)
    assert client.returncode == 3, err
    time.sleep(1.0)
    assert (marks / "gap.start").read_text().count("run") == 1, f"the build was started again:\n{err}"
    assert out.count("begin-gap") == 1, out


@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_every_line_of_a_build_arrives_once_in_order_across_a_coordinator_restart(
    fleet, port_factory, tmp_path, how
):
    """Issue 17, item 1: 8 of 12 lines of a build were lost across a SIGTERM restart (the agent's re-sent
    end reached the restarted coordinator before the lines waiting in its outbox)."""
    port = port_factory()
    listen, state = f"127.0.0.1:{port}", tmp_path / "state.db"
    c = fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10)
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    script = "for i in $(seq 1 40); do echo line-$i; sleep 0.1; done"
    client = ReconnectingClient(c.address, spec(["sh", "-c", script], workspace="w-lines"), f"rq-{how}")
    client.start()
    wait_until(lambda: any(e.HasField("log") and e.log.text == "line-8" for e in client.events), 30, "line 8")
    if how == "sigterm":
        c.stop()
    else:
        c.kill()
    time.sleep(1.0)
    fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10, name=f"coordinator-{how}")
    client.join(90)
    assert not client.error, client.error
    lines = [e.log.text for e in client.events if e.HasField("log")]
    assert lines == [f"line-{i}" for i in range(1, 41)], lines
    assert kinds(client.events).count("finished") == 1


def test_lines_written_to_a_coordinator_that_died_before_reading_them_arrive_after_its_restart(
    fleet, port_factory, tmp_path
):
    """Issue 17, item 1, under kill -9: a line the agent had written to the stream was lost when the
    coordinator died before reading it (a written message counted as delivered: a fresh-clone run lost a
    build's first line this way). The coordinator is stopped (SIGSTOP) while the build prints, so the lines
    wait unread in its socket, then killed: each must still arrive once, in order."""
    port = port_factory()
    listen, state = f"127.0.0.1:{port}", tmp_path / "state.db"
    c = fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10)
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    go = tmp_path / "go"
    script = (
        f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; "
        "for i in $(seq 1 10); do echo mid-$i; done; sleep 2; echo last"
    )
    client = ReconnectingClient(c.address, spec(["sh", "-c", script], workspace="w-unread"), "rq-unread")
    client.start()
    wait_until(lambda: any(e.HasField("log") and e.log.text == "first" for e in client.events), 30, "first")
    os.kill(c.popen.pid, signal.SIGSTOP)
    go.touch()
    time.sleep(1.0)  # the agent writes the ten lines into the stopped coordinator's socket
    c.kill()
    fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10, name="coordinator-unread")
    client.join(90)
    assert not client.error, client.error
    lines = [e.log.text for e in client.events if e.HasField("log")]
    assert lines == ["first", *(f"mid-{i}" for i in range(1, 11)), "last"], lines
    assert kinds(client.events).count("finished") == 1


def test_sigterm_ends_open_build_streams_at_once_with_unavailable(fleet, tmp_path):
    """Issue 17, item 7: on SIGTERM the coordinator held every open build stream through its whole grace
    period while the clients heard nothing. Now the streams end at once with UNAVAILABLE naming where to
    reattach from, and the coordinator exits without waiting out its 30 s grace."""
    c = fleet.start_coordinator(env={"STOKER_COORDINATOR_SERVER_GRACE_S": "30"})
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stub = build_pb2_grpc.BuildsStub(grpc.insecure_channel(c.address))
    call = stub.SubmitBuild(
        build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", "echo up; sleep 30"])), timeout=60
    )
    seen = []
    for event in call:
        seen.append(event)
        if event.HasField("log") and event.log.text == "up":
            break
    started = time.monotonic()
    c.popen.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as ended:
        for event in call:
            seen.append(event)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
    assert f"reattach with WatchBuild after_seq={seen[-1].seq}" in ended.value.details()
    assert time.monotonic() - started < 10
    assert c.popen.wait(20) == 0 and time.monotonic() - started < 20, c.log_tail()
