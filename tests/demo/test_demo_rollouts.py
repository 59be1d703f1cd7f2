"""The demo's rollout part, as ``stoker demo`` calls it: a coordinator with default settings (like the
demo's), then ``run_demo_rollouts`` — one good and one faulty rollout of the sample service under real
traffic."""

from __future__ import annotations

import time

import pytest

from stoker.coordinator.rollouts.targets import local as target_local
from stoker.demo import local_fleet
from stoker.demo.rollouts import run_demo_rollouts

pytestmark = pytest.mark.integration


def test_demo_rollouts_one_good_one_faulty(tmp_path, haproxy):
    coordinator = local_fleet.start_coordinator(tmp_path)
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        rows = run_demo_rollouts(coordinator.address, tmp_path, say=lines.append)
        took = time.monotonic() - t0
    finally:
        coordinator.kill()
    good, bad = rows
    assert (good["version"], good["outcome"], good["failed_requests"]) == ("v2", "succeeded", 0), good
    assert good["requests"] > 500
    assert (bad["version"], bad["outcome"]) == ("v3", "rolled_back"), bad
    assert 0 < bad["failed_requests"] == bad["by_version"]["v3"]["failed"]  # only the canary's answers failed
    assert bad["detect_s"] is not None and bad["detect_s"] < 15
    assert took < 45, took
    # Caught on its errors: by the judge's test, or by the guardrail when the canary's error rate runs past
    # its 10 % cap first (the faulty version answers 10 % errors; either ends the rollout at the canary).
    assert any(
        "verdict: fail [errors]" in line or ("verdict: fail [guardrail]" in line and "error rate" in line)
        for line in lines
    ), lines
    # everything the demo started is gone
    records = list((tmp_path / "coordinator-rollouts").glob("*/instances/*.json"))
    pids = [int(__import__("json").loads(p.read_text())["pid"]) for p in records]
    assert pids and not any(target_local._alive(p) for p in pids)
