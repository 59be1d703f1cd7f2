"""kill -9 of the coordinator at every phase of a rollout, then a restart on the same state file: the rollout
resumes from the store and the processes actually running, finishes exactly once, repeats no step (every new
instance started once, each intent recorded once), drops no request, and no zone goes below its floor."""

from __future__ import annotations

import sqlite3
import time

import pytest

from stoker.coordinator.rollouts.targets import local as target_local
from stoker.demo import rollouts as demo_rollouts
from stoker.demo.loadgen import LoadGenerator, summarize
from stoker.v1 import rollout_pb2 as PB

pytestmark = [pytest.mark.integration, pytest.mark.fault]

ORDER = [
    PB.ROLLOUT_PHASE_PENDING,
    PB.ROLLOUT_PHASE_CANARY,
    PB.ROLLOUT_PHASE_BAKING,
    PB.ROLLOUT_PHASE_SURGING,
    PB.ROLLOUT_PHASE_POST_BAKE,
    PB.ROLLOUT_PHASE_SUCCEEDED,
]


def wait_for_phase_at_least(stub, rollout_id, phase, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = stub.GetRollout(PB.GetRolloutRequest(rollout_id=rollout_id), timeout=5)
        if (
            r.phase in ORDER
            and ORDER.index(r.phase) >= ORDER.index(phase)
            or r.phase in demo_rollouts.TERMINAL
        ):
            return r
        time.sleep(0.05)
    raise TimeoutError(f"never reached {PB.RolloutPhase.Name(phase)}")


def test_kill_9_at_every_phase_resumes_exactly_once(rollout_fleet):
    rollout_fleet.start(bake_s=3.0, post_bake_s=2.0)
    stub = rollout_fleet.stub()
    first = demo_rollouts.deploy_first(stub, "web", "v1", instances_per_zone=2)
    killed_in = []
    with (
        LoadGenerator(first.endpoint, 60, max_duration_s=120) as load,
        demo_rollouts.FloorWatcher(rollout_fleet.local_dir, "web") as floor,
    ):
        time.sleep(0.5)
        t0 = time.time()
        r = stub.StartRollout(
            PB.StartRolloutRequest(spec=PB.RolloutSpec(service="web", version="v2")), timeout=5
        )
        for phase in (
            PB.ROLLOUT_PHASE_CANARY,
            PB.ROLLOUT_PHASE_BAKING,
            PB.ROLLOUT_PHASE_SURGING,
            PB.ROLLOUT_PHASE_POST_BAKE,
        ):
            now = wait_for_phase_at_least(stub, r.id, phase)
            if now.phase in demo_rollouts.TERMINAL:
                break
            rollout_fleet.coordinator.kill()  # SIGKILL: no cleanup, no flush
            killed_in.append(PB.RolloutPhase.Name(now.phase))
            time.sleep(0.3)  # the world goes on without a coordinator
            rollout_fleet.start(bake_s=3.0, post_bake_s=2.0)
            stub = rollout_fleet.stub()
        final = demo_rollouts.wait_until(stub, r.id, set(), 60)
        t1 = time.time()
        time.sleep(0.3)
    assert final.phase == PB.ROLLOUT_PHASE_SUCCEEDED, final.message
    assert len(killed_in) == 4, killed_in
    traffic = summarize(load.results, t0, t1)
    assert traffic.requests > 200 and traffic.failed == 0, traffic
    assert floor.samples > 50 and floor.lowest == {"zone-a": 2, "zone-b": 2}, floor.lowest

    starts = [s for s in target_local.starts(rollout_fleet.local_dir, "web") if s["version"] == "v2"]
    assert len(starts) == 4 and len({s["instance"] for s in starts}) == 4  # no instance started twice
    assert all(s["restart"] == 0 for s in starts)
    with sqlite3.connect(rollout_fleet.root / "coordinator.db") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM rollout_intents WHERE rollout_id = ?", (r.id,))]
        done = db.execute(
            "SELECT COUNT(*) FROM rollout_intents WHERE rollout_id = ? AND done IS NOT NULL", (r.id,)
        ).fetchone()[0]
        resumed = db.execute(
            "SELECT COUNT(*) FROM rollout_events WHERE rollout_id = ? AND text LIKE 'coordinator restarted%'",
            (r.id,),
        ).fetchone()[0]
    assert sorted(keys) == [f"{r.id}/1/canary", f"{r.id}/1/surge"] and done == 2
    assert resumed == 4
    assert [(z.old_instances, z.new_instances, z.ready_instances) for z in final.zones] == [
        (0, 2, 2),
        (0, 2, 2),
    ]


PLAN_FILE = """apiVersion: stoker.dev/v1
kind: Rollout
service: web
plan:
  bake: 2s
  post_bake: 1s
  steps:
    - share: 25
    - {share: 50, zone_first: true}
    - pause: {timeout: 5m}
    - share: 100
"""


def wait_for(stub, rollout_id, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = stub.GetRollout(PB.GetRolloutRequest(rollout_id=rollout_id), timeout=5)
        if predicate(r) or r.phase in demo_rollouts.TERMINAL:
            return r
        time.sleep(0.05)
    raise TimeoutError("never got there")


def test_kill_9_at_every_step_of_a_multi_step_file_with_a_pause_resumes_exactly_once(rollout_fleet):
    rollout_fleet.start()
    stub = rollout_fleet.stub()
    first = demo_rollouts.deploy_first(stub, "web", "v1", instances_per_zone=4)
    request = PB.StartRolloutRequest(
        spec=PB.RolloutSpec(version="v2"), rollout_file=PLAN_FILE, rollout_file_name="web.yaml"
    )
    with LoadGenerator(first.endpoint, 80, max_duration_s=150) as load:
        time.sleep(0.5)
        t0 = time.time()
        r = stub.StartRollout(request, timeout=5)
        killed_at = []
        for where, predicate in (
            ("step 1 baking", lambda x: x.step == 1 and x.phase == PB.ROLLOUT_PHASE_BAKING),
            ("step 2 baking", lambda x: x.step == 2 and x.phase == PB.ROLLOUT_PHASE_BAKING),
            ("at the pause", lambda x: x.awaiting_promotion),
            ("surging", lambda x: x.step == 4),
        ):
            now = wait_for(stub, r.id, predicate)
            assert now.phase not in demo_rollouts.TERMINAL, now.message
            rollout_fleet.coordinator.kill()
            killed_at.append(where)
            time.sleep(0.3)
            rollout_fleet.start()
            stub = rollout_fleet.stub()
            if where == "at the pause":  # still waiting after the restart: promote it
                assert stub.GetRollout(PB.GetRolloutRequest(rollout_id=r.id), timeout=5).awaiting_promotion
                stub.PromoteRollout(PB.RolloutActionRequest(rollout_id=r.id, reason="go"), timeout=5)
        final = demo_rollouts.wait_until(stub, r.id, set(), 60)
        t1 = time.time()
    assert final.phase == PB.ROLLOUT_PHASE_SUCCEEDED, final.message
    assert len(killed_at) == 4
    assert summarize(load.results, t0, t1).failed == 0
    starts = [s for s in target_local.starts(rollout_fleet.local_dir, "web") if s["version"] == "v2"]
    assert (
        len(starts) == 8
        and len({s["instance"] for s in starts}) == 8
        and all(s["restart"] == 0 for s in starts)
    )
    with sqlite3.connect(rollout_fleet.root / "coordinator.db") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM rollout_intents WHERE rollout_id = ?", (r.id,))]
    assert sorted(k.split("/")[-1] for k in keys) == ["canary", "step-2", "step-2-first", "surge"]
