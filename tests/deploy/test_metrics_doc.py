"""docs/metrics.md lists every metric stoker exports, and nothing it does not (issue 17, item 11): a live
coordinator and agent on loopback (real processes), one build through them, both /metrics scraped."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def test_every_exported_metric_is_documented_and_every_documented_one_exported(fleet):
    c = fleet.start_coordinator()
    a = fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stub = build_pb2_grpc.BuildsStub(grpc.insecure_channel(c.address))
    spec = common_pb2.BuildSpec(workspace="w", command=["true"], timeout_s=30)
    events = list(stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=60))
    assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
    with pytest.raises(grpc.RpcError):
        stub.GetBuild(build_pb2.GetBuildRequest(build_id="b-nope"), timeout=10)
    # The RPC's status reaches the client as the server aborts; the interceptor records the call in its
    # `finally` just after, so the scrape waits (briefly) for that line rather than racing it.
    rpc_line = re.compile(
        r'^stoker_coordinator_rpc_seconds_count\{code="NOT_FOUND",method="GetBuild"\} 1\.0$', re.M
    )
    deadline = time.monotonic() + 10
    while not rpc_line.search(scrape(c.metrics_port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = scrape(c.metrics_port) + scrape(a.metrics_port)
    exported = set(re.findall(r"^# HELP (stoker_\w+) ", text, re.M))
    documented = set(re.findall(r"^\| `(stoker_\w+)` \|", DOC.read_text(), re.M))
    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - exported == set(), "in docs/metrics.md but not exported"
    assert "_created" not in text
    assert (
        re.search(r"^process_cpu_seconds_total ", text, re.M) and "python_gc_objects_collected_total" in text
    )
    assert rpc_line.search(text)
    assert re.search(r'^stoker_coordinator_build_run_seconds_count\{warmth="cold"\} 1\.0$', text, re.M)
