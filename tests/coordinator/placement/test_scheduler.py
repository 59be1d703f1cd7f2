"""The scheduler on a fake clock: ready-soonest, bounded load, the delay rule, fairness, prewarming."""

from __future__ import annotations

from stoker.common.sketch import pack as pack_sketch
from stoker.coordinator.placement.domain import (
    Constraints,
    EntryRecord,
    NodeInfo,
    PlacementRequest,
    Warmth,
)
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.placement.scheduler import Scheduler, SchedulerSettings, similarity
from tests.helpers.clock import FakeClock


def entry(key: str, created: float = 1.0, size: int = 100_000_000, sketch=()) -> EntryRecord:
    return EntryRecord(
        key=key, bytes=size, files=10, created=created, last_used=created, sketch=pack_sketch(sketch)
    )


class World:
    def __init__(self, n: int, slots: int = 1, zones=("a", "b"), **settings) -> None:
        self.clock = FakeClock()
        self.registry = NodeRegistry(self.clock, 10)
        self.inventory = InventoryIndex()
        self.scheduler = Scheduler(self.inventory, self.clock, SchedulerSettings(**settings))
        for i in range(n):
            rec = self.registry.register(NodeInfo(name=f"n{i}", zone=zones[i % len(zones)], slots=slots))
            self.registry.attach(rec.name, rec.session_id)
        self._ids = 0

    def request(self, key="web/k", restore=("web/",), tenant="t", priority=0, **kw) -> PlacementRequest:
        self._ids += 1
        return PlacementRequest(
            id=f"r{self._ids}",
            workspace=key.split("/")[0],
            key=key,
            restore_keys=tuple(restore),
            tenant=tenant,
            priority=priority,
            enqueued_at=self.clock.now(),
            **kw,
        )

    def run(self, request: PlacementRequest, node: str) -> None:
        self.registry.get(node).holders.add(request.id)
        self.scheduler.started(request, node)

    def plan(self, *requests):
        return self.scheduler.plan(list(requests), self.registry.all())


def test_prefers_warm_then_partial_then_cold():
    w = World(4, slots=2)
    w.inventory.apply_snapshot("n1", 0, [entry("web/old")])
    w.inventory.apply_snapshot("n2", 0, [entry("web/new")])
    d = w.scheduler.choose(w.request("web/new"), w.registry.all())
    assert (d.node, d.warmth) == ("n2", Warmth.WARM) and d.reason.startswith("warm: holds web/new")
    assert d.candidates[0][0] == "n2" and len(d.candidates) == 3
    w.inventory.apply_snapshot("n2", 1, [])
    d = w.scheduler.choose(w.request("web/new"), w.registry.all())
    assert (d.node, d.warmth, d.matched_key) == ("n1", Warmth.PARTIAL, "web/old")


def test_partial_fetch_estimate_uses_sketches():
    w = World(3)
    shared = list(range(60))
    w.inventory.apply_snapshot("n0", 0, [entry("web/new", created=2, sketch=shared + [100, 101, 102, 103])])
    w.inventory.apply_snapshot("n1", 0, [entry("web/old", created=1, sketch=shared + [200, 201, 202, 203])])
    w.registry.get("n0").holders.add("busy")  # the warm node is busy, with a long wait
    w.scheduler.started(PlacementRequest(id="busy", workspace="x"), "n0")
    d = w.scheduler.choose(w.request("web/new"), w.registry.all())
    assert d.node == "n1" and d.warmth is Warmth.PARTIAL
    assert (
        0.8
        < similarity(pack_sketch(shared + [100, 101, 102, 103]), pack_sketch(shared + [200, 201, 202, 203]))
        < 1.0
    )
    assert "fetches ~" in d.reason


def test_cold_ties_follow_a_stable_per_key_order():
    def spill_order(key: str) -> list[str]:
        w = World(8, slots=1)
        order = []
        for _ in range(8):
            d = w.scheduler.choose(w.request(key, restore=()), w.registry.all())
            order.append(d.node)
            w.registry.get(d.node).holders.add("busy")  # the next build of the key spills over
        return order

    first = spill_order("web/k")
    assert sorted(first) == [f"n{i}" for i in range(8)]
    assert spill_order("web/k") == first  # the same next nodes every time (and after a restart)
    firsts = {spill_order(f"ws-{i}/k")[0] for i in range(12)}
    assert len(firsts) >= 3  # different keys start on different nodes


def test_bounded_load_spreads_a_hot_key():
    w = World(4, slots=8)
    w.inventory.apply_snapshot("n0", 0, [entry("web/k", size=1_000_000)])  # small: waiting never pays
    placed = []
    for _ in range(8):
        plan = w.plan(w.request("web/k"))
        [(req, decision)] = plan.assignments
        w.run(req, decision.node)
        placed.append(decision.node)
    loads = [len(w.registry.get(f"n{i}").holders) for i in range(4)]
    total = sum(loads)
    assert max(loads) <= -(-1.25 * total // 4) + 1  # ⌈c·(L+1)/N⌉ at the last placement
    assert placed[0] == "n0" and len(set(placed)) >= 3


def test_delay_rule_waits_for_a_warm_node_only_when_it_pays_and_not_twice():
    w = World(3, build_s=10.0, fetch_bps=10e6, extract_bps=10e6)
    w.inventory.apply_snapshot("n0", 0, [entry("web/k", size=1_000_000_000)])  # 1 GB: cold costs ~200 s
    running = w.request("other/x", restore=())
    w.run(running, "n0")  # n0 is busy for ~10 s
    first, second = w.request("web/k"), w.request("web/k")
    plan = w.plan(first, second)
    assert first.id in plan.waiting and "waiting for n0" in plan.waiting[first.id]
    # The second request for the same busy node would wait behind the first: it goes to a free node
    # only if that is sooner; with a 10 s build on n0 and ~200 s cold elsewhere it still waits — but
    # its expected wait is longer than the first's.
    assert second.id in plan.waiting or any(r.id == second.id for r, _ in plan.assignments)
    w2 = World(3, build_s=600.0, fetch_bps=100e6, extract_bps=100e6)
    w2.inventory.apply_snapshot("n0", 0, [entry("web/k", size=100_000_000)])  # cold costs ~2 s
    w2.run(w2.request("other/x", restore=()), "n0")  # n0 busy for ~600 s
    req = w2.request("web/k")
    plan = w2.plan(req)
    [(_, decision)] = plan.assignments
    assert decision.node != "n0" and decision.warmth is Warmth.COLD


def test_idle_nodes_are_not_left_unused_while_builds_pile_up_on_one_node():
    w = World(4, build_s=60.0, fetch_bps=50e6, extract_bps=50e6)
    w.inventory.apply_snapshot("n0", 0, [entry("web/k", size=2_000_000_000)])  # cold ~80 s, wait ~60 s
    w.run(w.request("other/x", restore=()), "n0")
    requests = [w.request("web/k") for _ in range(4)]
    plan = w.plan(*requests)
    assert len(plan.waiting) == 1  # one waits for the warm node; the rest use the idle nodes
    assert len(plan.assignments) == 3 and all(d.node != "n0" for _, d in plan.assignments)


def test_constraints_and_waiting_reason():
    w = World(4)
    d = w.scheduler.choose(w.request(constraints=Constraints(zone="b")), w.registry.all())
    assert w.registry.get(d.node).info.zone == "b"
    for r in w.registry.all():
        r.holders.add("busy")
    plan = w.plan(w.request(restore=(), constraints=Constraints(zone="b")))
    [reason] = plan.waiting.values()
    assert "capable node(s), all busy" in reason or "waiting for" in reason


def test_priority_and_aging_order():
    w = World(1, aging_s=60.0)
    old_low = w.request(priority=0)
    w.clock.t += 200  # waited long enough to climb 3 levels
    new_high = w.request(priority=2)
    plan = w.plan(new_high, old_low)
    [(placed, _)] = plan.assignments
    assert placed.id == old_low.id
    w.clock.t += 0
    plan = w.plan(w.request(priority=5), old_low)
    assert plan.assignments[0][0].priority == 5


def test_one_tenants_burst_cannot_take_the_whole_fleet():
    w = World(4, tenant_share=0.5)
    burst = [w.request(key=f"a/{i}", restore=(), tenant="team-a") for i in range(6)]
    others = [w.request(key=f"b/{i}", restore=(), tenant="team-b") for i in range(3)]
    plan = w.plan(*burst, *others)  # the burst arrived first
    tenants = [r.tenant for r, _ in plan.assignments]
    assert tenants.count("team-a") == 2 and tenants.count("team-b") == 2
    assert any("team-a holds 2 of 4 slots" in reason for reason in plan.waiting.values())
    # Alone, a tenant may use every free slot: the cap only applies while others wait.
    w2 = World(4, tenant_share=0.5)
    plan = w2.plan(*[w2.request(key=f"a/{i}", restore=(), tenant="team-a") for i in range(6)])
    assert len(plan.assignments) == 4


def test_draining_node_gets_nothing_new():
    w = World(1)
    w.registry.get("n0").draining = True
    assert w.plan(w.request()).assignments == []


def test_hot_key_is_prewarmed_when_its_warm_node_is_busy():
    w = World(4, build_s=30.0, fetch_bps=10e6, extract_bps=10e6)
    w.inventory.apply_snapshot("n0", 0, [entry("web/k", size=2_000_000_000)])
    w.run(w.request("other/x", restore=()), "n0")
    plan = w.plan(w.request("web/k"))
    assert plan.prewarms and plan.prewarms[0][1] == "web/k" and plan.prewarms[0][0] != "n0"
    assert not w.plan(w.request("web/k")).prewarms  # not again within the cooldown


def test_lost_node_hot_keys_and_new_node_get_prewarms():
    w = World(4, hot_builds=2)
    w.inventory.apply_snapshot("n0", 0, [entry("web/k")])
    for _ in range(3):
        r = w.request("web/k")
        w.scheduler.started(r, "n0")
        w.scheduler.finished(r.id)
    w.scheduler.node_lost("n0", w.inventory.entries("n0"), w.registry.all())
    w.inventory.drop_node("n0")
    plan = w.plan(w.request("api/z", restore=()))
    assert any(key == "web/k" and node != "n0" for node, key, _ in plan.prewarms)
    rec = w.registry.register(NodeInfo(name="n9", zone="a", slots=1))
    w.registry.attach("n9", rec.session_id)
    w.scheduler.node_joined(w.registry.get("n9"), w.registry.all())
    live = {n.name: n for n in w.registry.all() if n.schedulable}
    first = next(iter(w.scheduler.order("web/k", live)))
    plan = w.plan(w.request("api/z", restore=()))
    assert (("n9", "web/k", ()) in plan.prewarms) == (first == "n9")


def test_stale_reports_do_not_count_as_warmth():
    w = World(2, warmth_ttl_s=30.0)
    w.inventory.apply_snapshot("n1", 0, [entry("web/k")])
    w.clock.t += 31
    w.registry.seen("n0")
    d = w.scheduler.choose(w.request("web/k"), w.registry.all())
    assert d.warmth is Warmth.COLD


def test_learned_rates_change_the_estimate():
    w = World(1)
    est = w.scheduler.estimator
    before = est.restore_s(100e6, 0)
    for _ in range(20):
        est.observe_restore(100_000_000, 100_000_000, 10.0)  # 10 MB/s observed
    assert est.restore_s(100e6, 0) > before
    for _ in range(20):
        est.observe_build("web/k", "web", 42.0)
    assert abs(est.build_s(w.request("web/k")) - 42.0) < 1.0


def test_similarity_is_the_share_of_one_entry_the_other_holds():
    import heapq
    import random

    rng = random.Random(5)
    old = [rng.getrandbits(64) for _ in range(4000)]
    new = list(old)
    for i in rng.sample(range(4000), 400):  # a tenth of the content changed
        new[i] = rng.getrandbits(64)
    a, b = pack_sketch(heapq.nsmallest(64, old)), pack_sketch(heapq.nsmallest(64, new))
    # Jaccard would say ~0.82; the share of the new entry the old one holds is 0.9.
    assert abs(similarity(b, a) - 0.9) < 0.06
    assert (
        similarity(a, a) == 1.0 and similarity(a, pack_sketch([rng.getrandbits(64) for _ in range(64)])) < 0.1
    )


def costly_world(n: int = 4, **settings) -> World:
    """2 GB entries at the default rates: a cold restore of ~27 s, a costly key."""
    return World(n, slots=1, **settings)


def test_a_costly_key_keeps_a_free_holder_prewarmed_where_the_fetch_is_smallest():
    w = costly_world()
    base = list(range(64))
    w.inventory.apply_snapshot("n0", 0, [entry("web/v2", created=2, size=2_000_000_000, sketch=base)])
    w.inventory.apply_snapshot(
        "n1", 0, [entry("web/v1", created=1, size=2_000_000_000, sketch=base[:56] + list(range(500, 508)))]
    )
    w.inventory.apply_snapshot(
        "n2", 0, [entry("web/v0", created=0, size=2_000_000_000, sketch=base[:16] + list(range(600, 648)))]
    )
    request = w.request("web/v2")
    plan = w.plan(request)
    [(placed, decision)] = plan.assignments
    assert decision.node == "n0" and decision.warmth is Warmth.WARM
    prewarmed = [(node, key) for node, key, _ in plan.prewarms]
    # n0 is now at its bound: web/v2 had no free holder left, so it goes where only the difference is
    # fetched (n1 holds web/v1, 7/8 the same), and n0's replica is touched.
    assert (
        ("n1", "web/v2") in prewarmed and ("n2", "web/v2") not in prewarmed and ("n0", "web/v2") in prewarmed
    )
    w.run(placed, "n0")
    assert not [
        p for p in w.plan(w.request("api/x", restore=())).prewarms if p[1] == "web/v2" and p[0] != "n1"
    ]


def test_a_cheap_key_is_not_replicated():
    w = costly_world()
    w.inventory.apply_snapshot("n0", 0, [entry("web/k", size=100_000_000)])  # ~1.3 s cold
    plan = w.plan(w.request("web/k"))
    assert plan.assignments and not plan.prewarms


def test_a_cold_build_leaves_the_last_free_holder_of_a_costly_key_alone():
    def first_choice(with_demand: bool) -> tuple[str, str]:
        w = costly_world(4)
        w.inventory.apply_snapshot("n2", 0, [entry("big/k", size=2_000_000_000)])
        if with_demand:  # big/k was just built (on n3, still running): it is costly and in demand
            w.inventory.apply_snapshot("n3", 0, [entry("big/k", size=2_000_000_000)])
            w.run(w.request("big/k"), "n3")
        else:
            w.registry.get("n3").holders.add("busy")
        live = {n.name: n for n in w.registry.all() if n.schedulable and not n.holders}
        # A key whose rendezvous order puts n2 first among the free nodes.
        key = next(
            k for k in (f"small/{i}" for i in range(200)) if next(iter(w.scheduler.order(k, live))) == "n2"
        )
        plan = w.plan(w.request(key, restore=()))
        [(_, decision)] = plan.assignments
        return key, decision.node

    key, node = first_choice(with_demand=False)
    assert node == "n2"  # nothing to protect: the key's first free rendezvous node
    key2, node = first_choice(with_demand=True)
    assert key2 == key and node not in ("n2", "n3")


def test_a_cold_build_goes_to_the_least_loaded_of_the_first_free_nodes():
    w = World(4, slots=4)
    live = {n.name: n for n in w.registry.all()}
    key = "cold/k"
    first, *_, last = list(w.scheduler.order(key, live))
    # The key's first rendezvous node runs one build, its last three (at the bound, 2), the others none.
    w.registry.get(first).holders.add("busy")
    w.registry.get(last).holders.update({"b1", "b2", "b3"})
    [(_, decision)] = w.plan(w.request(key, restore=())).assignments
    assert decision.warmth is Warmth.COLD and decision.node != first


def test_only_taking_the_last_slot_under_the_bound_costs_a_costly_key_its_free_holder():
    def choice(others_busy: bool) -> tuple[str, str]:
        w = World(4, slots=2)
        w.inventory.apply_snapshot("n2", 0, [entry("big/k", size=2_000_000_000)])
        w.inventory.apply_snapshot("n3", 0, [entry("big/k", size=2_000_000_000)])
        w.run(w.request("big/k"), "n3")  # big/k is costly and in demand; n2 is its last free holder
        busy = ["n0", "n1", "n2", "n3"] if others_busy else ["n3", "n3"]
        for i, name in enumerate(busy):
            w.registry.get(name).holders.add(f"busy{i}")
        # The bound is 2: with one build on each of n0-n2, any cold build takes a node's last slot.
        live = {n.name: n for n in w.registry.all() if n.name != "n3"}
        key = next(
            k for k in (f"small/{i}" for i in range(200)) if next(iter(w.scheduler.order(k, live))) == "n2"
        )
        [(_, decision)] = w.plan(w.request(key, restore=())).assignments
        return key, decision.node

    key, node = choice(others_busy=False)
    assert node == "n2"  # n2 keeps a free slot after it: still a free holder of big/k, nothing to weigh
    key2, node = choice(others_busy=True)
    assert key2 == key and node in ("n0", "n1")  # it would take n2's last slot: another node will do


def test_per_key_memory_is_bounded_when_keys_keep_changing():
    """A fleet whose keys never stop changing: the scheduler's per-key memory keeps only recent keys (within
    the hot window, the prewarm cooldown) and never more than ``max_tracked_keys`` of each kind."""
    w = World(4, hot_window_s=100.0, prewarm_cooldown_s=50.0, max_tracked_keys=500, hot_builds=2)
    for i in range(3000):
        w.clock.t += 1.0
        r = w.request(f"ws{i % 7}/k{i}", restore=())
        w.run(r, "n0")
        w.scheduler.finished(r.id, key=r.key, workspace=r.workspace, run_s=30.0)
        w.registry.get("n0").holders.discard(r.id)
        w.scheduler.prewarms.queue("n1", r.key, ())
    tracked = w.scheduler.tracked()
    assert tracked["running"] == 0
    assert 90 <= tracked["demand"] <= 101  # one per second within the 100 s window
    assert 40 <= tracked["prewarms"] <= 51  # within the 50 s cooldown
    assert tracked["rates"] == 7
    assert tracked["build_times"] == 500 + 7  # keys capped, the seven workspaces kept
    # What is remembered still works: the latest key is hot, a long-gone one is not, and its build time
    # falls back to its workspace's.
    latest = f"ws{2999 % 7}/k2999"
    w.scheduler.started(w.request(latest, restore=()), "n1")
    assert w.scheduler.demand.is_hot(latest) and not w.scheduler.demand.is_hot("ws0/k0")
    assert abs(w.scheduler.estimator.build_s(w.request("ws0/k0")) - 30.0) < 1e-9


def test_a_prewarm_is_asked_again_once_its_cooldown_has_passed():
    w = World(2, prewarm_cooldown_s=50.0)
    w.scheduler.prewarms.queue("n1", "web/k", ())
    w.scheduler.prewarms.queue("n1", "web/k", ())
    w.clock.t += 51
    w.scheduler.prewarms.queue("n1", "web/k", ())
    assert [p[:2] for p in w.plan().prewarms] == [("n1", "web/k"), ("n1", "web/k")]


def test_a_finished_build_has_its_nodes_older_entries_of_the_workspace_evicted():
    w = World(3, slots=2)
    w.inventory.apply_snapshot(
        "n0", 0, [entry("web/v1", created=1), entry("web/v0", created=0), entry("api/v1", created=1)]
    )
    w.inventory.apply_snapshot("n1", 0, [entry("web/v1", created=1)])
    placed = w.request("web/v2")
    w.run(placed, "n0")  # a partial restore from web/v1
    # Not before the node reports the newer entry: the older one is what it restores from.
    assert not w.plan(w.request("api/x", restore=())).evictions
    w.inventory.apply_delta("n0", 1, [entry("web/v2", created=2)], [])
    w.scheduler.finished(placed.id, key="web/v2", workspace="web", run_s=60.0)
    evictions = w.plan(w.request("api/x", restore=())).evictions
    # n0's older web entries go; n1's web/v1 (its newest) and n0's other workspace stay.
    assert sorted(evictions) == [("n0", "web/v0"), ("n0", "web/v1")]
    assert not w.plan(w.request("api/y", restore=())).evictions  # asked once


def test_no_eviction_when_disabled_or_when_the_build_was_cancelled():
    for settings, run_s in (({"evict_superseded": False}, 60.0), ({}, 0.0)):
        w = World(2, **settings)
        w.inventory.apply_snapshot("n0", 0, [entry("web/v1", created=1), entry("web/v2", created=2)])
        request = w.request("web/v2")
        w.run(request, "n0")
        w.scheduler.finished(request.id, key="web/v2", workspace="web", run_s=run_s)
        assert not w.plan(w.request("api/x", restore=())).evictions


def test_of_equally_ready_warm_holders_the_least_loaded_goes_first():
    for loaded in ("n0", "n1"):
        w = World(2, slots=4)
        w.inventory.apply_snapshot("n0", 0, [entry("web/k")])
        w.inventory.apply_snapshot("n1", 0, [entry("web/k")])
        w.run(w.request("other/x", restore=()), loaded)  # the bound is 2: both stay free holders
        [(_, decision)] = w.plan(w.request("web/k")).assignments
        assert decision.warmth is Warmth.WARM and decision.node != loaded


def test_of_equally_ready_and_loaded_nodes_the_one_that_ran_least_against_the_fleet_goes_first():
    for hot in ("n0", "n1"):
        w = World(2, slots=4)
        w.inventory.apply_snapshot("n0", 0, [entry("web/k")])
        w.inventory.apply_snapshot("n1", 0, [entry("web/k")])
        w.plan(w.request("api/x", restore=()))  # the scheduler sees both nodes from now on
        busy = w.request("other/x", restore=())
        w.run(busy, hot)
        w.clock.t += 7200
        w.scheduler.finished(busy.id, key="other/x", workspace="other", run_s=7200)
        w.registry.get(hot).holders.discard(busy.id)
        for name in ("n0", "n1"):
            w.registry.get(name).last_seen = w.clock.t  # heartbeats: the reports still count
        [(_, decision)] = w.plan(w.request("web/k")).assignments
        assert decision.warmth is Warmth.WARM and decision.node != hot


def test_of_equally_ready_warm_holders_the_last_free_holder_of_a_costly_key_goes_last():
    def choice(with_demand: bool, key: str) -> str:
        w = costly_world(4)
        w.inventory.apply_snapshot("n1", 0, [entry(key)])
        w.inventory.apply_snapshot("n2", 0, [entry(key), entry("big/k", size=2_000_000_000)])
        if with_demand:  # big/k was just built (on n3, still running): n2 is its last free holder
            w.inventory.apply_snapshot("n3", 0, [entry("big/k", size=2_000_000_000)])
            w.run(w.request("big/k"), "n3")
        else:
            w.registry.get("n3").holders.add("busy")
        [(_, decision)] = w.plan(w.request(key, restore=())).assignments
        assert decision.warmth is Warmth.WARM
        return decision.node

    # A small key whose two holders are equally ready and loaded, and n2 wins the tie by rendezvous order.
    key = next(k for k in (f"small/{i}" for i in range(200)) if choice(False, k) == "n2")
    assert choice(True, key) == "n1"


def test_heat_is_a_nodes_mean_load_over_the_fleets_while_it_lived():
    from stoker.coordinator.placement.scheduler.heat import LoadHistory

    h = LoadHistory()
    h.seen({"a": 1, "b": 1}, 0.0)
    h.change("a", +1, 0.0)
    h.change("c", +1, 0.0)  # not seen yet: not counted
    assert h.heat("a", 100.0) == 1.0  # too young to tell
    h.seen({"a": 1, "b": 1, "c": 1}, 3600.0)  # c joins at 1 h, idle
    h.change("c", -1, 3600.0)  # the build it ran before it was seen: never counted, nothing goes negative
    h.change("b", +1, 3600.0)
    # At 3 h: a ran one build all along (3 h), b one for 2 h, c none; since 0 h the fleet ran 5 build-hours in
    # 8 node-hours (a and b were both seen at 0 h).
    assert abs(h.heat("a", 10800.0) - (3 / 3) / (5 / 8)) < 1e-9
    assert abs(h.heat("b", 10800.0) - (2 / 3) / (5 / 8)) < 1e-9
    assert h.heat("c", 10800.0) == 0.0
    h.seen({"a": 1, "c": 1}, 10800.0)  # b is gone: its running build no longer counts for the fleet
    assert "b" not in h._per and h._running == 1


def test_a_free_holder_of_an_older_entry_is_found_past_the_busy_holders_of_the_newest():
    # Under a bound of 1 the newest entries of a busy workspace sit on the nodes running its builds. The first
    # ``max_warm_candidates`` holders looked at are all busy; a free node holding an older entry must still be
    # found, rather than the build starting cold or waiting for a busy holder.
    def choose(**settings):
        w = World(12, slots=1, max_warm_candidates=2, **settings)
        held = {"n0": "web/v5", "n1": "web/v5", "n2": "web/v4", "n3": "web/v4", "n9": "web/v1"}
        for name, key in held.items():
            w.inventory.apply_snapshot(name, 0, [entry(key, created=int(key[-1]), size=2_000_000_000)])
        for name in ("n0", "n1", "n2", "n3"):
            w.run(w.request(held[name]), name)
        return w.scheduler.choose(w.request("web/v6"), w.registry.all())

    d = choose()
    assert (d.node, d.warmth, d.matched_key) == ("n9", Warmth.PARTIAL, "web/v1")
    assert d.candidates[1][1] == "cold"  # then cold (~27 s): none of the busy holders ends soon enough
    d = choose(older_free_candidates=0)  # the earlier behaviour: only the first two holders were looked at
    assert d.node != "n9" and d.warmth is Warmth.COLD
