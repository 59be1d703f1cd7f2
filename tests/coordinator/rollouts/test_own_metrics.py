"""A service that is not stoker's sample service — ``stoker.demo.shop_service``: its own metric names, its
errors as gRPC status codes, its own label names — rolled out by the local target behind the real HAProxy and
judged through a real Prometheus (Debian package) that discovers the instances from the target's file_sd
file, with a rollout file's PromQL templates and a guardrail."""

from __future__ import annotations

import pytest

from stoker.demo import rollouts as demo_rollouts
from stoker.v1 import rollout_pb2

pytestmark = pytest.mark.integration

PB = rollout_pb2

SHOP = """apiVersion: stoker.dev/v1
kind: Rollout
service: shop
target:
  zones: [zone-a, zone-b]
  instances_per_zone: 2
  env: {{{env}}}
plan:
  bake: 4s
  min_requests: 50
  post_bake: 8s  # longer than Prometheus's discovery (up to 5 s) and a scrape
  steps:
    - share: 50
    - share: 100
analysis:
  source: prometheus
  metrics:
    requests: {requests}
    errors: 'grpc_code=~"Unavailable|Internal|Unknown|DeadlineExceeded"'
    latency: shop_grpc_server_handling_seconds
    service_label: app
  queries:
    requests: >-
      sum by (instance) ({requests}{{app="{{{{service}}}}",
      version="{{{{version}}}}", zone="{{{{zone}}}}"}})
  guardrails:
    - name: queue depth
      query: >-
        max by (instance)
        (shop_grpc_server_queue_depth{{app="{{{{service}}}}", version="{{{{version}}}}"}})
      max: 50
"""


def shop_file(version: str, env: str = "", requests: str = "shop_grpc_server_handled_total"):
    text = SHOP.format(env=env, requests=requests)
    return PB.StartRolloutRequest(
        spec=PB.RolloutSpec(version=version), rollout_file=text, rollout_file_name="shop.yaml"
    )


@pytest.fixture
def shop_fleet(rollout_fleet, prometheus_binary, tmp_path):
    prometheus, url = demo_rollouts.start_prometheus(
        tmp_path / "prometheus", prometheus_binary, rollout_fleet.local_dir, service_label="app"
    )
    try:
        rollout_fleet.start(
            command=demo_rollouts.SHOP_COMMAND, metrics="prometheus", prometheus_url=url, inconclusive_limit=2
        )
        yield rollout_fleet
    finally:
        prometheus.kill()
        prometheus.wait()


def test_own_metrics_through_prometheus_pass_a_good_version_stop_a_breach_and_never_pass_no_series(
    shop_fleet,
):
    stub = shop_fleet.stub()
    first = stub.StartRollout(shop_file("v1"), timeout=10)
    first = demo_rollouts.wait_until(stub, first.id, demo_rollouts.TERMINAL, 60)
    assert first.phase == PB.ROLLOUT_PHASE_SUCCEEDED, first.message

    good = demo_rollouts.run_with_load(stub, shop_file("v2"), first.endpoint, rate=60, timeout=60)
    assert good["outcome"] == "succeeded", good
    assert good["failed_requests"] == 0 and set(good["by_version"]) >= {"v1", "v2"}
    final = stub.GetRollout(PB.GetRolloutRequest(rollout_id=good["rollout_id"]), timeout=5)
    passed = [v for v in final.verdicts if v.check == "all"][0]
    assert passed.canary_requests >= 50 and passed.baseline_requests >= 50  # read through Prometheus
    assert passed.canary_p50_ms > 0

    breach = demo_rollouts.run_with_load(
        stub, shop_file("v3", env="SHOP_QUEUE_DEPTH: '80'"), first.endpoint, rate=60, timeout=60
    )
    assert breach["outcome"] == "rolled_back", breach
    final = stub.GetRollout(PB.GetRolloutRequest(rollout_id=breach["rollout_id"]), timeout=5)
    assert "guardrail queue depth: 80 above its max 50" in final.verdicts[-1].reason
    assert breach["failed_requests"] == 0  # the guardrail stopped it; no request failed

    # a request counter under a name the service does not expose: no series is no data, never a pass
    wrong = demo_rollouts.run_with_load(
        stub, shop_file("v4", requests="shop_rpc_total"), first.endpoint, rate=60, timeout=60,
        stop_at={PB.ROLLOUT_PHASE_PAUSED},
    )  # fmt: skip
    assert wrong["outcome"] == "paused", wrong
    final = stub.GetRollout(PB.GetRolloutRequest(rollout_id=wrong["rollout_id"]), timeout=5)
    assert final.verdicts and all(v.result == PB.VERDICT_RESULT_INCONCLUSIVE for v in final.verdicts)
    assert "returned no series for the canary" in final.verdicts[-1].reason
    stub.AbortRollout(PB.RolloutActionRequest(rollout_id=final.id, reason="test"), timeout=5)
