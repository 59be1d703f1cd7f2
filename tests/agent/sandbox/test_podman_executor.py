"""The podman executor against real podman (runc), a real local registry and a busybox image built from
Debian's busybox-static: what a build sees, what it cannot reach, its limits, and that nothing outlives it.

Each hostile test also has the control that shows the attempt could have succeeded where it matters (the
build did run and write its output), so a test cannot pass by the build never running.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from stoker.agent.executors.base import EndReason, Limits
from stoker.agent.executors.podman import (
    PodmanExecutor,
    cgroup_parent_problem,
    cni_network,
    guard_rules,
    uid_range_problem,
)
from tests.helpers.sandbox import (
    Captured,
    containers,
    fresh_settings,
    host_addresses,
    host_processes_with,
    http_server,
    job,
    reset_storage,
    run_builds,
    run_one,
)

pytestmark = [pytest.mark.integration, pytest.mark.hostile]


def test_exit_code_output_streams_and_workspace(podman_settings, sandbox_image, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "input.txt").write_text("from the agent\n")
    build = job(
        ws,
        sandbox_image,
        "cat input.txt; echo to-stderr >&2; pwd; echo made > out.txt; exit 3",
        env={"GREETING": "a b  c"},
    )
    [(outcome, out)] = run_builds(podman_settings, build)
    assert (outcome.exit_code, outcome.reason) == (3, EndReason.EXITED), out.text
    assert out.stdout.splitlines() == ["from the agent", "/workspace"]
    assert out.stderr.splitlines()[-1] == "to-stderr"  # after the pull's progress lines
    assert (ws / "out.txt").read_text() == "made\n"
    assert containers(podman_settings) == []


LOSING_PODMAN = """#!/bin/sh
# podman, except that `run` then fails as podman 4.3 does when, under load, it loses the container's exit code
# (seen in this suite: "no such exit code (container in state running)", podman run exiting 127).
# LOSE_EVENTS=1: its died events are lost too (podman runs with an environment of its own, so it is set here).
LOSE_EVENTS={lose}
for arg in "$@"; do
  case "$arg" in
    run) podman "$@"; echo "Error: getting exit code of container c0ffee from DB: no such exit code" \
           "(container in state running)" >&2; exit 127 ;;
    events) if [ -n "$LOSE_EVENTS" ]; then exit 0; fi ;;
  esac
done
exec podman "$@"
"""


@pytest.mark.parametrize("events", ["kept", "lost"])
def test_an_exit_code_podman_loses_is_read_from_its_died_event_or_the_build_is_an_error(
    podman_settings, sandbox_image, tmp_path, events
):
    """podman run sometimes exits 127 without the container's exit code (podman 4.3 under load): the build's
    true code comes from the container's died event; without one the build is the node's error (LOST), never
    the command's 127."""
    wrapper = tmp_path / "podman"
    wrapper.write_text(LOSING_PODMAN.format(lose="1" if events == "lost" else ""))
    wrapper.chmod(0o755)
    settings = replace(podman_settings, binary=str(wrapper))

    async def scenario():
        executor = PodmanExecutor(settings)
        executor.lost_exit_wait_s = 0.5
        await executor.start()
        return await run_one(executor, job(tmp_path / "ws", sandbox_image, "echo ran; exit 3"))

    outcome, out = asyncio.run(scenario())
    assert out.stdout.splitlines() == ["ran"]
    if events == "kept":
        assert (outcome.exit_code, outcome.reason) == (3, EndReason.EXITED), out.text
    else:
        assert (outcome.exit_code, outcome.reason) == (-1, EndReason.LOST), out.text
        assert "podman lost the build's exit code" in outcome.message
    assert containers(podman_settings) == []


def test_first_pull_reports_progress_and_a_missing_image_fails_once_with_the_registrys_message(
    podman_settings, sandbox_image, local_registry, tmp_path
):
    settings = fresh_settings(podman_settings, Path(tempfile.mkdtemp(prefix="stoker-pm-")))
    good = job(tmp_path / "ws1", sandbox_image, "echo pulled-and-ran")
    missing = job(tmp_path / "ws2", f"{local_registry}/stoker-test/nope:1", "echo never")
    try:
        (ok, ok_out), (bad, bad_out) = run_builds(settings, good, missing)
    finally:
        reset_storage(settings)
    assert ok.succeeded, ok_out.text
    assert f"stoker: pulling image {sandbox_image}" in ok_out.stderr
    assert "Copying blob" in ok_out.stderr
    assert ok_out.stdout == "pulled-and-ran"
    assert bad.reason is EndReason.IMAGE
    assert "nope" in bad.message and "manifest unknown" in bad.message.lower(), bad.message
    assert "never" not in bad_out.stdout


def test_the_agents_environment_is_invisible(podman_settings, sandbox_image, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-secret-4711")
    monkeypatch.setenv("HTTPS_PROXY", "http://agent-proxy-4711:3128")
    build = job(
        tmp_path / "ws",
        sandbox_image,
        "echo PID1; cat /proc/1/environ | tr '\\0' '\\n'; echo ALL; cat /proc/*/environ | tr '\\0' '\\n'; "
        "echo ENV; env",
        env={"BUILD_ONLY": "mine"},
    )
    [(outcome, out)] = run_builds(podman_settings, build)
    assert outcome.succeeded, out.text
    assert "BUILD_ONLY=mine" in out.stdout  # the control: the build's own variables are there
    assert "4711" not in out.text
    assert "AWS_" not in out.text and "PROXY" not in out.text.upper()


def test_files_outside_the_workspace_are_not_reachable(podman_settings, sandbox_image, tmp_path):
    secret = tmp_path / "node-tls.key"
    secret.write_text("PRIVATE-KEY-4711\n")
    other = tmp_path / "other-build"
    other.mkdir()
    (other / ".env").write_text("NPM_TOKEN=other-tenant-4711\n")
    script = (
        f"cat {secret} {other}/.env; ls {tmp_path}; cat /proc/1/root{secret}; "
        "grep -r 4711 / --exclude-dir=proc --exclude-dir=sys 2>/dev/null; echo done"
    )
    [(outcome, out)] = run_builds(podman_settings, job(tmp_path / "ws", sandbox_image, script))
    assert outcome.succeeded, out.text
    assert out.stdout.splitlines()[-1] == "done"
    assert "PRIVATE-KEY" not in out.stdout and "other-tenant" not in out.stdout
    assert "No such file" in out.stderr


def test_a_setsid_daemon_dies_with_its_build(podman_settings, sandbox_image, tmp_path):
    marker = f"{4000 + os.getpid() % 1000}.{random.randint(100, 999)}"  # a sleep no other process runs
    build = job(
        tmp_path / "ws",
        sandbox_image,
        f"setsid sleep {marker} & (setsid sh -c 'sleep {marker}' &); sleep 0.5; "
        f"ps -o pid,args | grep -c '[s]leep {marker}'",
    )
    [(outcome, out)] = run_builds(podman_settings, build)
    assert outcome.succeeded, out.text
    assert int(out.stdout.splitlines()[-1]) >= 2  # the control: both daemons were running
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and host_processes_with(f"sleep {marker}"):
        time.sleep(0.1)
    assert host_processes_with(f"sleep {marker}") == []


def test_home_tmp_and_the_image_start_fresh_for_the_next_build(podman_settings, sandbox_image, tmp_path):
    plant = job(
        tmp_path / "ws1",
        sandbox_image,
        "echo '[core] hooksPath=/tmp/hooks' > $HOME/.gitconfig; echo x > /tmp/planted; "
        "echo x > /root/planted; echo x > /bin/planted; ls -a $HOME /tmp",
    )
    check = job(
        tmp_path / "ws2",
        sandbox_image,
        "ls -a $HOME /tmp /root; for f in $HOME/.gitconfig /tmp/planted /root/planted /bin/planted; do "
        "cat $f && echo FOUND $f; done; echo $HOME",
    )
    (planted, p_out), (checked, c_out) = run_builds(podman_settings, plant, check)
    assert planted.succeeded, p_out.text
    assert ".gitconfig" in p_out.stdout and "planted" in p_out.stdout  # the control
    assert p_out.stderr.count("Read-only file system") == 2, p_out.stderr  # /root and /bin: a read-only root
    assert checked.succeeded, c_out.text
    assert "FOUND" not in c_out.stdout and c_out.stderr.count("No such file") == 4
    assert (
        "planted" not in c_out.stdout and ".gitconfig" not in c_out.stdout and "hooksPath" not in c_out.stdout
    )
    assert c_out.stdout.splitlines()[-1] == "/home/stoker"


def test_a_fork_bomb_hits_its_pids_limit(podman_settings, sandbox_image, tmp_path):
    bomb = job(
        tmp_path / "ws",
        sandbox_image,
        "b() { b & b & wait; }; while :; do b; done",
        limits=Limits(pids=64),
        timeout_s=6,
    )
    started = time.monotonic()
    [(outcome, out)] = run_builds(podman_settings, bomb)
    assert outcome.reason is EndReason.PIDS, (outcome, out.text[-2000:])
    assert "limit of 64 processes" in outcome.message
    assert time.monotonic() - started < 6 + podman_settings.kill_grace_s + 20
    assert "can't fork" in out.stderr
    assert containers(podman_settings) == []


def test_a_memory_hog_ends_with_an_oom_reason(podman_settings, sandbox_image, tmp_path):
    """``set -e`` as in a CI script: the kernel kills either the shell collecting the string or its
    subshell (either happens), and either way the step fails."""
    hog = job(
        tmp_path / "ws",
        sandbox_image,
        "set -e; echo start; x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo end",
        limits=Limits(pids=64, memory_bytes=64 * 1024**2),
    )
    [(outcome, out)] = run_builds(podman_settings, hog)
    assert out.stdout.splitlines()[0] == "start"
    assert "end" not in out.stdout
    assert outcome.reason is EndReason.OOM, (outcome, out.text[-2000:])
    assert "out of memory" in outcome.message


def test_an_oom_kill_the_command_survives_is_named(podman_settings, sandbox_image, tmp_path):
    """A killed child whose parent goes on to exit 0: the build keeps its exit code, and its message says
    what the kernel killed."""
    hog = job(
        tmp_path / "ws",
        sandbox_image,
        "sh -c 'x=$(head -c 400000000 /dev/zero | tr \\\\0 a)' || echo child-failed; echo end",
        limits=Limits(pids=64, memory_bytes=64 * 1024**2),
    )
    [(outcome, out)] = run_builds(podman_settings, hog)
    assert out.stdout.splitlines() == ["child-failed", "end"], out.text[-2000:]
    assert outcome.succeeded and outcome.reason is EndReason.EXITED, outcome
    assert "killed by the kernel at its memory limit" in outcome.message, outcome


def test_the_root_file_system_is_read_only_and_scratch_space_is_tmpfs(
    podman_settings, sandbox_image, tmp_path
):
    """A writable root would land in podman's storage on the node's SSD, outside the disk limit."""
    build = job(
        tmp_path / "ws",
        sandbox_image,
        "for d in /etc /usr /var /root; do touch $d/x 2>/dev/null && echo WROTE $d; done; "
        "for d in /tmp /var/tmp /run $HOME /workspace; do touch $d/x && echo ok $d; done; "
        "grep -E ' (/tmp|/var/tmp|/run|/home/stoker) ' /proc/mounts | cut -d' ' -f2,3 | sort",
    )
    [(outcome, out)] = run_builds(podman_settings, build)
    assert outcome.succeeded, out.text
    assert "WROTE" not in out.stdout, out.stdout
    assert [ln for ln in out.stdout.splitlines() if ln.startswith("ok ")] == [
        "ok /tmp",
        "ok /var/tmp",
        "ok /run",
        "ok /home/stoker",
        "ok /workspace",
    ]
    mounts = [ln for ln in out.stdout.splitlines() if not ln.startswith("ok ")]
    assert mounts == ["/home/stoker tmpfs", "/run tmpfs", "/tmp tmpfs", "/var/tmp tmpfs"], out.stdout


def test_output_over_its_limit_stops_the_build(podman_settings, sandbox_image, tmp_path):
    flood = job(
        tmp_path / "ws", sandbox_image, "yes 0123456789", limits=Limits(pids=64, output_bytes=100_000)
    )
    [(outcome, out)] = run_builds(podman_settings, flood)
    assert outcome.reason is EndReason.OUTPUT, outcome
    assert sum(len(t) + 1 for t, _ in out.lines) <= 100_000
    assert containers(podman_settings) == []


@pytest.mark.parametrize("pace", ["slow", "burst"])
def test_a_disk_filler_is_stopped_with_a_clear_reason(podman_settings, sandbox_image, tmp_path, pace):
    """slow: stopped while it writes (its last line never comes); burst: done before the next measurement,
    caught by the one after it exited (it must not end as a success)."""
    write = "for i in $(seq 1 400); do dd if=/dev/zero of=f$i bs=1M count=1 2>/dev/null; sleep 0.05; done"
    burst = "dd if=/dev/zero of=fill bs=1M count=48 2>/dev/null"
    script = (write if pace == "slow" else burst) + "; echo end"
    limit = 8 * 1024**2
    filler = job(tmp_path / "ws", sandbox_image, script, limits=Limits(pids=64, disk_bytes=limit))
    [(outcome, out)] = run_builds(podman_settings, filler)
    assert outcome.reason is EndReason.DISK, (outcome, out.text[-1000:])
    assert f"past its disk limit of {limit} bytes" in outcome.message
    assert not outcome.succeeded
    if pace == "slow":
        assert "end" not in out.stdout
        assert len(list((tmp_path / "ws").iterdir())) < 100  # stopped well before its 400 files
    assert containers(podman_settings) == []


def test_no_build_reaches_this_machine_and_network_none_reaches_nothing(
    podman_settings, sandbox_image, tmp_path
):
    """The server listens on every address of the machine. A container's 127.0.0.1 is its own, so the build
    tries the machine's addresses and the builds' bridge gateway too. On network default (the builds' own
    bridge) the agent's iptables rules drop all of it; with none there is no interface but lo."""
    server, port = http_server()
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
    try:
        script = (
            f"for h in 127.0.0.1 10.89.0.1 {' '.join(host_addresses())}; do "
            f"{request} | nc -w 2 $h {port} | grep -q hello-4711 && echo REACHED $h; "
            "done; cat /proc/net/dev; cat /proc/net/route; "
            "echo ipv6-addresses $(cat /proc/net/if_inet6 | wc -l); echo done"
        )
        default = job(tmp_path / "ws1", sandbox_image, script)
        isolated = job(tmp_path / "ws2", sandbox_image, script, limits=Limits(pids=64, network="none"))
        (d_outcome, d_out), (n_outcome, n_out) = run_builds(podman_settings, default, isolated)
        # The control: the same request from this machine, to the same address, is answered.
        with socket.create_connection((host_addresses()[0], port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reached = conn.recv(4096)
    finally:
        server.close()
    assert b"hello-4711" in reached, reached
    assert d_outcome.succeeded, d_out.text
    assert "REACHED" not in d_out.stdout, d_out.text
    assert "eth0" in d_out.stdout and "0000590A" in d_out.stdout, d_out.text  # a route on 10.89.0.0/24
    # No IPv6: over it the bridge's link-local address reached services on [::] past the IPv4 guard.
    assert Path("/proc/net/if_inet6").read_text().strip(), "the control: this machine has IPv6"
    assert "ipv6-addresses 0" in d_out.stdout and "ipv6-addresses 0" in n_out.stdout, d_out.text
    assert n_outcome.succeeded, n_out.text
    assert "REACHED" not in n_out.stdout and "hello-4711" not in n_out.stdout
    interfaces = [ln.split(":")[0].strip() for ln in n_out.stdout.splitlines() if ":" in ln and "|" not in ln]
    assert interfaces == ["lo"], n_out.stdout


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_remove_the_container(podman_settings, sandbox_image, tmp_path, how):
    marker = f"{5000 + os.getpid() % 1000}.{random.randint(100, 999)}"
    build = job(
        tmp_path / "ws",
        sandbox_image,
        f"trap '' TERM; echo ready; setsid sleep {marker} & sleep {marker}",
        timeout_s=3 if how == "timeout" else 60,
    )

    async def scenario():
        executor = PodmanExecutor(podman_settings)
        await executor.start()
        out = Captured()
        assert await executor.prepare(build, out) is None
        running = asyncio.create_task(executor.run(build, out))
        if how == "cancel":
            while "ready" not in out.stdout:
                await asyncio.sleep(0.05)
            assert containers(podman_settings) != []  # the control: it was running
            executor.cancel(build.build_id, "user asked")
        return await running, out

    started = time.monotonic()
    outcome, out = asyncio.run(scenario())
    expected = EndReason.CANCELLED if how == "cancel" else EndReason.TIMEOUT
    assert outcome.reason is expected, (outcome, out.text)
    assert outcome.exit_code == -9, outcome  # SIGTERM ignored, then SIGKILL: -9, as the process executor says
    assert time.monotonic() - started < 3 + podman_settings.kill_grace_s + 20
    assert containers(podman_settings) == []
    assert host_processes_with(f"sleep {marker}") == []


def test_a_restarted_agent_removes_the_containers_a_crash_left(podman_settings, sandbox_image, tmp_path):
    settings = podman_settings
    build = job(tmp_path / "ws", sandbox_image, "echo ready; sleep 600", build_id="crashed-1")
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from stoker.agent.config import PodmanSettings
        from stoker.agent.executors.base import BuildJob
        from stoker.agent.executors.podman import PodmanExecutor

        async def main():
            executor = PodmanExecutor(PodmanSettings(dir={settings.dir!r}, kill_grace_s=1.0,
                                                     insecure_registries={settings.insecure_registries!r}))
            await executor.start()
            job = BuildJob("crashed-1", ("sh", "-c", "echo ready; sleep 600"), Path({str(build.workspace)!r}),
                           image={sandbox_image!r})
            assert await executor.prepare(job, lambda line, err: None) is None  # pulls it when run alone
            await executor.run(job, lambda line, err: print(line, flush=True))

        asyncio.run(main())
    """)
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "ready"
    finally:
        agent.send_signal(signal.SIGKILL)  # the crash: no cleanup runs
        agent.wait()
    assert containers(settings) == ["stoker-crashed-1"]  # the control: the crash left it running

    async def restart() -> int:
        executor = PodmanExecutor(settings)
        await executor.start()
        return await executor.cleanup_leftovers()

    assert asyncio.run(restart()) == 1
    assert containers(settings) == []


@pytest.mark.parametrize(
    "base, count, uid_map, own, problem",
    [
        (200000, 65536, "0 0 4294967295", 0, ""),  # a host: everything mapped
        (1, 65535, "0 1000000 65536", 0, ""),  # a user-namespaced pod, the deploy's setting
        (
            200000,
            65536,
            "0 1000000 65536",
            0,
            "are not mapped in the agent's user namespace (it maps 0..65535)",
        ),
        (1, 65536, "0 1000000 65536", 0, "(1..65536) are not mapped"),
        (0, 65536, "0 0 4294967295", 0, "include the agent's own uid 0"),
        (10000, 100, "0 0 4294967295", 10001, "include the agent's own uid 10001"),
        (5, 0, "0 0 4294967295", 0, "must be positive"),
    ],
)
def test_the_uid_range_is_checked_at_start(base, count, uid_map, own, problem):
    found = uid_range_problem(base, count, uid_map, own)
    assert (problem in found) if problem else found == "", found


def test_the_builds_cgroup_parent_is_checked_at_start(tmp_path):
    """A cgroup file system the agent cannot write (read-only in a pod, or a controller missing) stops it at
    start with one line, rather than every build with podman's error. On this machine it can."""
    assert (
        cgroup_parent_problem(Path("/sys/fs/cgroup"), "v1" if Path("/sys/fs/cgroup/pids").is_dir() else "v2")
        == ""
    )
    (tmp_path / "memory").mkdir()
    problem = cgroup_parent_problem(tmp_path, "v1")
    assert problem == (
        f"cannot make the builds' cgroup {tmp_path}/pids/stoker-builds: No such file or directory; the agent "
        "needs /sys/fs/cgroup writable (docs/kubernetes.md)"
    )
    for controller in ("pids", "cpu"):
        (tmp_path / controller).mkdir()
    assert cgroup_parent_problem(tmp_path, "v1") == ""
    assert (tmp_path / "memory" / "stoker-builds").is_dir()


def test_the_builds_network_and_its_guard_rules():
    """What the agent writes and installs at start (test_no_build_reaches_this_machine... runs them)."""
    net = cni_network("10.89.0.0/24")
    bridge = net["plugins"][0]
    assert net["name"] == "stoker-builds" and bridge["bridge"] == "stoker0"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"}]]
    assert [p["type"] for p in net["plugins"]] == ["bridge"]  # the guard's rules replace the firewall plugin
    assert [p["type"] for p in cni_network("10.89.0.0/24", firewall=True)["plugins"]] == [
        "bridge",
        "firewall",
    ]
    rules = guard_rules("10.89.0.0/24", ("169.254.0.0/16", "10.0.0.7/32"))
    assert [(how, r[:5]) for how, r in rules] == [
        ("-I", ("INPUT", "-s", "10.89.0.0/24", "-m", "comment")),
        ("-I", ("FORWARD", "-s", "10.89.0.0/24", "-d", "169.254.0.0/16")),
        ("-I", ("FORWARD", "-s", "10.89.0.0/24", "-d", "10.0.0.7/32")),
        ("-A", ("FORWARD", "-s", "10.89.0.0/24", "-m", "comment")),
        ("-A", ("FORWARD", "-d", "10.89.0.0/24", "-m", "conntrack")),
    ]
    # Drops first in their chains, passes last: a pass can never come before a drop.
    assert [r[-1] for how, r in rules if how == "-I"] == ["DROP"] * 3
    assert [r[-1] for how, r in rules if how == "-A"] == ["ACCEPT"] * 2
    with pytest.raises(ValueError):
        cni_network("10.89.0.0/33")


def test_exit_codes_agree_with_the_process_executors(podman_settings, sandbox_image, tmp_path):
    """What stoker reports as a build's exit code (issue 17, item 6): the command's own status; -N when
    signal N ended it; 127 when the command does not exist. The process executor's are the same
    (tests/agent/sandbox/test_process_executor.py)."""
    own = job(tmp_path / "ws1", sandbox_image, "exit 3")
    term = job(tmp_path / "ws2", sandbox_image, "echo ready; sleep 60", timeout_s=2)
    missing = job(tmp_path / "ws3", sandbox_image, "true")
    missing = replace(missing, argv=("no-such-command",))
    (o_own, _), (o_term, _), (o_missing, m_out) = run_builds(podman_settings, own, term, missing)
    assert (o_own.exit_code, o_own.reason) == (3, EndReason.EXITED), o_own
    assert (o_term.exit_code, o_term.reason) == (-15, EndReason.TIMEOUT), o_term
    assert o_missing.exit_code == 127 and not o_missing.succeeded, (o_missing, m_out.text)
