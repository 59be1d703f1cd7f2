"""``stoker rollout ...`` as an operator runs it: the console script in a subprocess against a coordinator
process, over real gRPC."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def stoker(address: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "rollout", *args, "--coordinator", address],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_start_watch_list_get_abort(rollout_fleet):
    address = rollout_fleet.start().address
    first = stoker(
        address,
        "start",
        "web",
        "v1",
        "--zones",
        "zone-a,zone-b",
        "--instances-per-zone",
        "2",
        "--post-bake",
        "0.5",
        "--watch",
    )
    assert first.returncode == 0, first.stderr
    assert "succeeded" in first.stdout and "zone-a" in first.stdout

    # no traffic: the canary bakes, stays inconclusive and the rollout pauses (exit 4), never passes
    paused = stoker(
        address, "start", "web", "v2", "--bake", "1", "--env", "STOKER_SAMPLE_LATENCY_MS=1", "--watch"
    )
    assert paused.returncode == 4, paused.stdout + paused.stderr
    assert "paused" in paused.stdout and "too little data" in paused.stdout
    table = [line.split() for line in paused.stdout.splitlines() if line.strip().startswith("zone-")]
    assert ["zone-a", "1", "1", "2"] in table  # zone, old, new, ready: the canary beside the baseline
    assert "inconclusive [data] canary 0/0" in paused.stdout

    listed = json.loads(stoker(address, "list", "--service", "web", "--json").stdout)
    rollout_id = listed[0]["id"]
    assert [r["phase"] for r in listed] == ["ROLLOUT_PHASE_PAUSED", "ROLLOUT_PHASE_SUCCEEDED"]
    aborted = stoker(address, "abort", rollout_id, "--reason", "test")
    assert aborted.returncode == 0 and "rolling_back" in aborted.stdout
    watched = stoker(address, "watch", rollout_id)
    assert watched.returncode == 3 and "rolled_back" in watched.stdout
    got = stoker(address, "get", rollout_id)
    assert "aborted by an operator (test)" in got.stdout and "history" in got.stdout

    bad = stoker(address, "start", "web", "v3", "--canary", "150")
    assert bad.returncode == 125 and "INVALID_ARGUMENT" in bad.stderr and "canary_percent" in bad.stderr
    missing = stoker(address, "promote", "r-missing")
    assert missing.returncode == 125 and "NOT_FOUND" in missing.stderr
