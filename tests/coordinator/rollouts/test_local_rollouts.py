"""Rollouts end to end: a coordinator process, real gRPC, the local target's instances behind a real HAProxy
(driven through its runtime API), and real traffic from a load generator through the balancer."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from stoker.coordinator.rollouts.targets import local as target_local
from stoker.demo import rollouts as demo_rollouts
from stoker.v1 import rollout_pb2

pytestmark = pytest.mark.integration

PB = rollout_pb2


def spec(version: str, **kw) -> PB.RolloutSpec:
    return PB.RolloutSpec(service=kw.pop("service", "web"), version=version, **kw)


def new_version_starts(fleet, service: str, version: str) -> list[dict]:
    return [s for s in target_local.starts(fleet.local_dir, service) if s["version"] == version]


def test_good_rollout_drops_nothing_and_a_faulty_one_rolls_back_at_the_canary(rollout_fleet):
    rollout_fleet.start()
    stub = rollout_fleet.stub()
    first = demo_rollouts.deploy_first(stub, "web", "v1", instances_per_zone=2)
    assert first.endpoint.startswith("127.0.0.1:")
    assert [(z.zone, z.new_instances, z.ready_instances) for z in first.zones] == [
        ("zone-a", 2, 2),
        ("zone-b", 2, 2),
    ]

    good = demo_rollouts.run_with_load(stub, spec("v2"), first.endpoint, rate=80, timeout=60)
    assert good["outcome"] == "succeeded", good
    assert good["requests"] > 300
    assert good["failed_requests"] == 0, good
    assert set(good["by_version"]) >= {"v1", "v2"}  # traffic moved from one version to the other
    final = stub.GetRollout(PB.GetRolloutRequest(rollout_id=good["rollout_id"]), timeout=5)
    passed = [v for v in final.verdicts if v.check == "all"]
    assert passed and passed[0].result == PB.VERDICT_RESULT_PASS
    assert passed[0].canary_requests >= 60 and passed[0].baseline_requests >= 60
    assert [(z.old_instances, z.new_instances) for z in final.zones] == [(0, 2), (0, 2)]

    bad = demo_rollouts.run_with_load(
        stub, spec("v3", env={"STOKER_SAMPLE_ERROR_RATE": "0.3"}), first.endpoint, rate=80, timeout=60
    )
    assert bad["outcome"] == "rolled_back", bad
    assert bad["detect_s"] is not None and bad["detect_s"] < 8
    # failures only on the canary share: every failed request was answered by v3
    assert bad["failed_requests"] == bad["by_version"]["v3"]["failed"] > 0
    assert (
        new_version_starts(rollout_fleet, "web", "v3")
        and len(new_version_starts(rollout_fleet, "web", "v3")) == 2
    )
    final = stub.GetRollout(PB.GetRolloutRequest(rollout_id=bad["rollout_id"]), timeout=5)
    failed = [v for v in final.verdicts if v.result == PB.VERDICT_RESULT_FAIL]
    assert failed and failed[0].canary_errors > 0 and failed[0].canary_requests > 0
    assert [(z.old_instances, z.new_instances) for z in final.zones] == [(2, 0), (2, 0)]
    listed = stub.ListRollouts(PB.ListRolloutsRequest(service="web"), timeout=5).rollouts
    assert [r.id for r in listed][:2] == [bad["rollout_id"], good["rollout_id"]]


def test_bad_input_is_refused_by_name_and_leaves_the_running_rollout_alone(rollout_fleet):
    rollout_fleet.start()
    stub = rollout_fleet.stub()
    demo_rollouts.deploy_first(stub, "web", "v1", instances_per_zone=1)
    cases = [
        (spec("v2", target="mesos"), grpc.StatusCode.INVALID_ARGUMENT, "target"),
        (spec("v2", canary_percent=100), grpc.StatusCode.INVALID_ARGUMENT, "canary_percent"),
        (spec("v2", canary_percent=-5), grpc.StatusCode.INVALID_ARGUMENT, "canary_percent"),
        (spec("v2", bake_s=-1), grpc.StatusCode.INVALID_ARGUMENT, "bake_s"),
        (spec(""), grpc.StatusCode.INVALID_ARGUMENT, "version"),
        (spec("v2", service=""), grpc.StatusCode.INVALID_ARGUMENT, "service"),
    ]
    for bad, code, word in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.StartRollout(PB.StartRolloutRequest(spec=bad), timeout=5)
        assert err.value.code() == code, (bad, err.value.details())
        assert word in err.value.details()

    running = stub.StartRollout(PB.StartRolloutRequest(spec=spec("v2", bake_s=30)), timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRollout(PB.StartRolloutRequest(spec=spec("v9")), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has a rollout in progress" in err.value.details()
    for call in (stub.GetRollout, stub.PromoteRollout):
        with pytest.raises(grpc.RpcError) as err:
            call(
                PB.GetRolloutRequest(rollout_id="r-nope")
                if call == stub.GetRollout
                else PB.RolloutActionRequest(rollout_id="r-nope"),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.ResumeRollout(PB.RolloutActionRequest(rollout_id=running.id), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # the running rollout is untouched: it bakes (no traffic → inconclusive), an operator promotes it
    baking = demo_rollouts.wait_until(stub, running.id, {PB.ROLLOUT_PHASE_BAKING}, 30)
    assert baking.spec.version == "v2" and baking.spec.bake_s == 30
    promoted = stub.PromoteRollout(PB.RolloutActionRequest(rollout_id=running.id, reason="test"), timeout=5)
    assert promoted.phase == PB.ROLLOUT_PHASE_SURGING
    done = demo_rollouts.wait_until(stub, running.id, set(), 30)
    assert done.phase == PB.ROLLOUT_PHASE_SUCCEEDED
    assert any(v.check == "operator" for v in done.verdicts)
    with pytest.raises(grpc.RpcError) as err:
        stub.AbortRollout(PB.RolloutActionRequest(rollout_id=running.id), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    "fault,env",
    [
        ("crash_at_start", {"STOKER_SAMPLE_CRASH_AT_START": "1"}),
        ("never_ready", {"STOKER_SAMPLE_NEVER_READY": "1"}),
    ],
)
def test_a_canary_that_never_serves_is_rolled_back_before_the_surge(rollout_fleet, fault, env):
    rollout_fleet.start(progress_deadline_s=4.0)
    stub = rollout_fleet.stub()
    first = demo_rollouts.deploy_first(stub, "web", "v1", instances_per_zone=2)
    row = demo_rollouts.run_with_load(stub, spec("v2", env=env), first.endpoint, rate=60, timeout=40)
    assert row["outcome"] == "rolled_back", row
    assert row["failed_requests"] == 0, (
        row["by_version"],
        row,
    )  # the balancer never sent traffic to an instance that was not up
    starts = new_version_starts(rollout_fleet, "web", "v2")
    assert len({s["instance"] for s in starts}) == 2  # only the canary (one per zone) was ever started
    final = stub.GetRollout(PB.GetRolloutRequest(rollout_id=row["rollout_id"]), timeout=5)
    reason = final.verdicts[-1].reason
    assert ("crash loop" in reason) if fault == "crash_at_start" else ("deadline" in reason), reason


def test_no_traffic_pauses_then_operator_verbs(rollout_fleet):
    rollout_fleet.start()
    stub = rollout_fleet.stub()
    demo_rollouts.deploy_first(stub, "web", "v1", instances_per_zone=1)
    r = stub.StartRollout(PB.StartRolloutRequest(spec=spec("v2", bake_s=2)), timeout=5)
    paused = demo_rollouts.wait_until(stub, r.id, {PB.ROLLOUT_PHASE_PAUSED}, 40)
    assert paused.phase == PB.ROLLOUT_PHASE_PAUSED
    inconclusive = [v for v in paused.verdicts if v.result == PB.VERDICT_RESULT_INCONCLUSIVE]
    assert len(inconclusive) == 2 and "too little data" in inconclusive[0].reason
    assert not any(v.result in (PB.VERDICT_RESULT_PASS, PB.VERDICT_RESULT_FAIL) for v in paused.verdicts)
    assert [(z.old_instances, z.new_instances) for z in paused.zones] == [(0, 1), (0, 1)]  # canary kept
    resumed = stub.ResumeRollout(PB.RolloutActionRequest(rollout_id=r.id, reason="bake again"), timeout=5)
    assert resumed.phase == PB.ROLLOUT_PHASE_BAKING
    stub.PauseRollout(PB.RolloutActionRequest(rollout_id=r.id, reason="hold"), timeout=5)
    aborted = stub.AbortRollout(PB.RolloutActionRequest(rollout_id=r.id, reason="not today"), timeout=5)
    assert aborted.phase == PB.ROLLOUT_PHASE_ROLLING_BACK
    done = demo_rollouts.wait_until(stub, r.id, set(), 30)
    assert done.phase == PB.ROLLOUT_PHASE_ROLLED_BACK
    # retry after the failure: a new attempt starts from the canary again
    retried = stub.ResumeRollout(PB.RolloutActionRequest(rollout_id=r.id, reason="retry"), timeout=5)
    assert retried.phase == PB.ROLLOUT_PHASE_PENDING and retried.attempt == 2
    baking = demo_rollouts.wait_until(stub, r.id, {PB.ROLLOUT_PHASE_BAKING}, 30)
    assert baking.phase == PB.ROLLOUT_PHASE_BAKING
    stub.AbortRollout(PB.RolloutActionRequest(rollout_id=r.id, reason="done"), timeout=5)
    assert demo_rollouts.wait_until(stub, r.id, set(), 30).phase == PB.ROLLOUT_PHASE_ROLLED_BACK


def test_old_instances_that_ignore_sigterm_are_drained_then_killed_without_dropping_requests(rollout_fleet):
    rollout_fleet.start()
    stub = rollout_fleet.stub()
    r = stub.StartRollout(
        PB.StartRolloutRequest(
            spec=PB.RolloutSpec(
                service="web",
                version="v1",
                instances_per_zone=2,
                post_bake_s=0.5,
                env={"STOKER_SAMPLE_IGNORE_SIGTERM": "1", "STOKER_SAMPLE_LATENCY_MS": "30"},
            )
        ),
        timeout=5,
    )
    first = demo_rollouts.wait_until(stub, r.id, set(), 30)
    records = list((rollout_fleet.local_dir / "web" / "instances").glob("*.json"))
    old_pids = [json.loads(p.read_text())["pid"] for p in records]
    row = demo_rollouts.run_with_load(
        stub, spec("v2", min_requests=30, bake_s=2), first.endpoint, rate=60, timeout=40
    )
    assert row["outcome"] == "succeeded", row
    assert row["failed_requests"] == 0, row
    deadline = time.time() + 5
    while time.time() < deadline and any(target_local._alive(p) for p in old_pids):
        time.sleep(0.1)
    assert not any(target_local._alive(p) for p in old_pids), "SIGTERM-ignoring instances were not killed"
    log = (rollout_fleet.root / "coordinator.log").read_text()
    assert "ignored SIGTERM" in log
    assert (
        json.loads((rollout_fleet.local_dir / "web" / "versions.json").read_text())["v1"][
            "STOKER_SAMPLE_IGNORE_SIGTERM"
        ]
        == "1"
    )
