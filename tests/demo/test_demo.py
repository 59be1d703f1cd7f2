"""`stoker demo` runs end to end from the installed console script and reports what happened."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stoker.demo import local_fleet

pytestmark = pytest.mark.integration


def test_demo_json_shows_cold_warm_partial_and_a_fetch(tmp_path):
    exe = Path(sys.executable).with_name("stoker")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "stoker.cli.main"]
    import os

    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the demo's temporary directory goes here
    done = subprocess.run(
        [*cmd, "demo", "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    builds = report["builds"]
    # podman is installed wherever the suite runs (scripts/system_deps.sh): the demo sandboxes its builds.
    assert report["executor"] == "podman", report["executor_reason"]
    assert all(b["executor"] == "podman" for b in builds)
    assert [b["warmth"] for b in builds] == ["cold", "warm", "cold", "partial", "cold"]
    assert all(b["exit_code"] == 0 and b["state"] == "succeeded" for b in builds)
    first, again, api, upgraded, other_zone = builds
    assert again["node"] == first["node"] and again["bytes_fetched"] == 0
    assert upgraded["node"] == first["node"] and upgraded["restored_key"] == first["key"]
    assert "1 added, 35 already present" in upgraded["output"]
    assert other_zone["zone"] != first["zone"] and other_zone["bytes_fetched"] > 0
    assert other_zone["restored_key"] == upgraded["key"]
    for field in (
        "id",
        "workspace",
        "key",
        "node",
        "zone",
        "warmth",
        "reason",
        "bytes_fetched",
        "restore_s",
        "exit_code",
    ):
        assert field in first
    rollouts = report["rollouts"]
    assert [(r["version"], r["outcome"]) for r in rollouts] == [("v2", "succeeded"), ("v3", "rolled_back")]
    good, faulty = rollouts
    assert good["failed_requests"] == 0 and good["requests"] > 0
    assert faulty["detect_s"] > 0 and any("fail" in v for v in faulty["verdicts"])
    assert report["ok"] is True
    assert "stoker demo: working in " + str(tmp_path) in done.stderr
    assert not list(tmp_path.iterdir())  # it removed its temporary directory, processes and all


def test_agent_with_wrong_coordinator_address_is_alive_but_not_ready(tmp_path):
    agent = local_fleet.start_agent(tmp_path, "lonely", "127.0.0.1:1", blobs=tmp_path / "blobs")
    try:
        with grpc.insecure_channel(agent.address) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check
            live = check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            ready = check(health_pb2.HealthCheckRequest(service="stoker.agent.Ready"), timeout=5)
        assert live.status == health_pb2.HealthCheckResponse.SERVING
        assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
        import time

        time.sleep(1.5)
        assert agent.alive()
        log = agent.log_path.read_text()
        assert "not connected to the coordinator at 127.0.0.1:1" in log and "retrying in" in log
    finally:
        agent.stop()
    shutil.rmtree(tmp_path / "lonely", ignore_errors=True)


def test_without_podman_the_demo_says_why_and_runs_its_builds_as_processes(monkeypatch, tmp_path):
    from stoker.demo import sandbox

    monkeypatch.setenv("PATH", str(tmp_path))  # no podman, registry or busybox on it
    chosen = sandbox.prepare(tmp_path, lambda *_: None)
    assert chosen.executor == "process"
    assert "missing Debian packages: " in chosen.why and "podman" in chosen.why
    assert "scripts/system_deps.sh installs them" in chosen.why
    assert chosen.env_for("node-a1", tmp_path) == {"STOKER_AGENT_BUILD_EXECUTOR": "process"}
