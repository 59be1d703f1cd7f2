"""The scheduler's stages one at a time: admit, warm, partial and cold candidates, rank, explain; the pass's
view of the fleet, and fairness between tenants. Each is run on a fleet built by hand on a fake clock."""

from __future__ import annotations

import collections
from dataclasses import replace

import pytest

from stoker.common.sketch import pack as pack_sketch
from stoker.coordinator.placement.domain import Constraints, EntryRecord, NodeInfo, PlacementRequest, Warmth
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRecord, NodeRegistry
from stoker.coordinator.placement.scheduler.costly import Guard
from stoker.coordinator.placement.scheduler.estimates import Estimator, fetch_after, similarity
from stoker.coordinator.placement.scheduler.fairness import TenantShares, fair_order
from stoker.coordinator.placement.scheduler.fleet import FleetView, RunningBuild
from stoker.coordinator.placement.scheduler.heat import LoadHistory
from stoker.coordinator.placement.scheduler.rendezvous import Rendezvous
from stoker.coordinator.placement.scheduler.settings import SchedulerSettings
from stoker.coordinator.placement.scheduler.stages import (
    Candidate,
    Placing,
    admit,
    cold_candidates,
    decide,
    explain,
    partial_candidates,
    rank,
    warm_candidates,
)
from tests.helpers.clock import FakeClock

GB = 1_000_000_000


def entry(key: str, created: float = 1.0, size: int = GB, sketch: tuple[int, ...] = ()) -> EntryRecord:
    return EntryRecord(key, size, 10, created, created, pack_sketch(sketch))


class Fleet:
    """Nodes n0..n{n-1} (zones a and b alternately), an inventory, and the pass's view of them."""

    def __init__(self, n: int, slots: int = 2, **settings: object) -> None:
        self.clock = FakeClock()
        self.registry = NodeRegistry(self.clock, 10)
        self.inventory = InventoryIndex()
        self.settings = SchedulerSettings(**settings)
        self.estimator = Estimator(self.settings)
        self.running: dict[str, RunningBuild] = {}
        self.rendezvous = Rendezvous(self.settings.two_level_from)
        for i in range(n):
            rec = self.registry.register(
                NodeInfo(
                    name=f"n{i}", zone="ab"[i % 2], slots=slots, labels={"disk": "ssd" if i < 2 else "hdd"}
                )
            )
            self.registry.attach(rec.name, rec.session_id)

    def node(self, name: str) -> NodeRecord:
        return self.registry.get(name)

    def busy(self, name: str, build: str, ends_in: float | None = None) -> None:
        self.node(name).holders.add(build)
        if ends_in is not None:
            self.running[build] = RunningBuild(name, "t", "", self.clock.now() + ends_in)

    def view(self, bound: int = 100, guard: Guard | None = None) -> FleetView:
        live = {r.name: r for r in self.registry.all()}
        return FleetView(
            live,
            {name: len(r.holders) for name, r in live.items()},
            bound,
            self.clock.now(),
            self.settings,
            self.estimator,
            self.running,
            LoadHistory(),
            guard or Guard(),
        )

    def placing(self, request: PlacementRequest, view: FleetView | None = None) -> Placing:
        view = view or self.view()
        admitted = admit(request.constraints, view.live)
        return Placing.start(request, view, admitted, self.inventory, self.rendezvous)


def request(key: str = "web/v2", restore: tuple[str, ...] = ("web/",), **kw: object) -> PlacementRequest:
    return PlacementRequest(id=f"r-{key}", workspace=key.split("/")[0], key=key, restore_keys=restore, **kw)


# -- admit --------------------------------------------------------------------------------------------
def test_admit_keeps_the_nodes_the_constraints_allow():
    f = Fleet(4)
    live = f.view().live
    assert admit(Constraints(), live) is live  # no constraints: no copy
    assert sorted(admit(Constraints(zone="b"), live)) == ["n1", "n3"]
    assert sorted(admit(Constraints(zone="a", labels={"disk": "ssd"}), live)) == ["n0"]
    assert admit(Constraints(zone="c"), live) == {}


def test_decide_waits_with_the_constraints_when_no_node_is_admitted():
    f = Fleet(2)
    d = decide(request(constraints=Constraints(zone="c")), f.view(), f.inventory, f.rendezvous)
    assert d.node is None and d.reason == "waiting: no ready node satisfies the constraints (zone=c)"


# -- warm -----------------------------------------------------------------------------------------------
def test_warm_candidates_are_the_fresh_admitted_holders_of_the_exact_key():
    f = Fleet(4, warmth_ttl_s=60.0)
    for name in ("n0", "n1", "n2"):
        f.inventory.apply_snapshot(name, 0, [entry("web/v2")])
    f.inventory.apply_snapshot("n3", 0, [entry("web/v1")])
    f.node("n2").last_seen = f.clock.now() - 61  # its report no longer counts
    p = f.placing(request(constraints=Constraints(zone="a")))  # n0, n2
    warm_candidates(p)
    assert list(p.candidates) == ["n0"]
    c = p.candidates["n0"]
    assert (c.warmth, c.matched_key, c.fetch_bytes, c.wait_s) == (Warmth.WARM, "web/v2", 0.0, 0.0)
    assert c.ready_s == pytest.approx(GB / f.settings.materialize_bps)  # only materialized, nothing fetched


def test_a_holder_of_the_key_in_a_scope_the_build_reads_is_warm_too():
    """A pull request's build (its own scope first, then the default branch's, read-only) is warm on a node
    that holds the default branch's entry of its key; a holder of its own scope's entry comes first."""
    f = Fleet(3)
    mine, main = "~web/untrusted/pull/7/web/v2", "~web/protected/web/v2"
    f.inventory.apply_snapshot("n1", 0, [entry(main)])
    pr = request(mine, ("~web/untrusted/pull/7/web/", "~web/protected/web/"), also_exact=(main,))
    d = decide(pr, f.view(), f.inventory, f.rendezvous)
    assert (d.node, d.warmth, d.matched_key) == ("n1", Warmth.WARM, main)
    f.inventory.apply_snapshot("n2", 0, [entry(mine)])
    p = f.placing(pr)
    warm_candidates(p)
    assert sorted(p.candidates) == ["n1", "n2"]
    assert p.candidates["n2"].matched_key == mine and p.candidates["n1"].matched_key == main


def test_a_pull_request_is_sized_by_the_entry_it_reads_so_an_older_entry_does_not_tie_with_it():
    """A pull request's own key exists nowhere; sized from it alone its target was empty, so a holder of an
    older entry under its prefix "fetched nothing" and won as often as a holder of main's entry of its very
    key (bench/load.py --scoped placed 227 of 1,000 builds partial, with every key held warm somewhere)."""
    f = Fleet(3)
    mine, main = "~web/untrusted/pull/7/web/v2", "~web/protected/web/v2"
    f.inventory.apply_snapshot("n1", 0, [entry(main, created=2.0, sketch=(1, 2, 3))])
    f.inventory.apply_snapshot("n2", 0, [entry("~web/protected/web/v1", created=1.0, sketch=(4, 5, 6))])
    pr = request(mine, ("~web/untrusted/pull/7/web/", "~web/protected/web/"), also_exact=(main,))
    p = f.placing(pr)
    assert p.target_bytes == GB
    partial_candidates(p)
    assert p.candidates["n2"].warmth is Warmth.PARTIAL and p.candidates["n2"].fetch_bytes > 0
    d = decide(pr, f.view(), f.inventory, f.rendezvous)
    assert (d.node, d.warmth) == ("n1", Warmth.WARM)


def test_warm_candidates_estimate_at_most_the_limit_free_holders_first():
    f = Fleet(6, slots=1, max_warm_candidates=2)
    for i in range(6):
        f.inventory.apply_snapshot(f"n{i}", 0, [entry("web/v2")])
    for name in ("n0", "n1", "n2", "n3"):
        f.busy(name, f"b-{name}")
    p = f.placing(request(), f.view(bound=1))
    warm_candidates(p)
    assert sorted(p.candidates) == ["n4", "n5"]


def test_a_busy_warm_holder_waits_until_its_first_slot_frees():
    f = Fleet(2, slots=1)
    f.inventory.apply_snapshot("n0", 0, [entry("web/v2")])
    f.busy("n0", "b0", ends_in=40.0)
    p = f.placing(request(), f.view(bound=1))
    warm_candidates(p)
    assert p.candidates["n0"].wait_s == pytest.approx(40.0)
    assert p.view.free_at["n0"] == [pytest.approx(f.clock.now() + 40.0)]


# -- partial --------------------------------------------------------------------------------------------
def test_partial_candidates_fetch_what_the_sketches_say_differs():
    f = Fleet(3)
    shared = tuple(range(60))
    new, old = shared + (100, 101, 102, 103), shared + (200, 201, 202, 203)
    f.inventory.apply_snapshot("n0", 0, [entry("web/v2", created=2, sketch=new)])
    f.inventory.apply_snapshot("n1", 0, [entry("web/v1", created=1, sketch=old)])
    f.inventory.apply_snapshot("n2", 0, [entry("web/v0", created=0)])  # no sketch: the default share
    p = f.placing(request())
    warm_candidates(p)
    partial_candidates(p)
    assert list(p.candidates) == ["n0", "n1", "n2"]
    share = similarity(pack_sketch(new), pack_sketch(old))
    assert share is not None and 0.8 < share < 1.0
    assert p.candidates["n1"].warmth is Warmth.PARTIAL and p.candidates["n1"].matched_key == "web/v1"
    assert p.candidates["n1"].fetch_bytes == pytest.approx(GB * (1 - share))
    assert p.candidates["n2"].fetch_bytes == pytest.approx(GB * (1 - f.settings.default_similarity))


def test_partial_candidates_fetch_nothing_more_when_the_target_is_unknown():
    assert fetch_after(0, b"", pack_sketch([1, 2]), 0.9) == 0.0
    f = Fleet(2)
    f.inventory.apply_snapshot("n1", 0, [entry("web/v1")])
    p = f.placing(request("web/v9"))  # nobody holds web/v9 yet
    partial_candidates(p)
    assert p.candidates["n1"].fetch_bytes == 0.0


def test_partial_candidates_past_the_limit_look_only_for_free_holders_of_older_entries():
    f = Fleet(8, slots=1, max_warm_candidates=2, older_free_candidates=1)
    held = {"n0": "web/v5", "n1": "web/v5", "n2": "web/v4", "n3": "web/v3", "n4": "web/v1"}
    for name, key in held.items():
        f.inventory.apply_snapshot(name, 0, [entry(key, created=int(key[-1]))])
    for name in ("n0", "n1", "n2"):
        f.busy(name, f"b-{name}")
    p = f.placing(request("web/v6"), f.view(bound=1))
    partial_candidates(p)
    # The newest two holders (busy) fill the limit; past it n2 is busy and skipped, n3 is the one free found.
    assert sorted(p.candidates) == ["n0", "n1", "n3"]


# -- cold -----------------------------------------------------------------------------------------------
def test_cold_candidates_are_the_first_free_nodes_in_the_keys_rendezvous_order():
    f = Fleet(6, slots=1, explain_candidates=3)
    f.inventory.apply_snapshot("n0", 0, [entry("web/v2")])
    view = f.view(bound=1)
    order = list(f.rendezvous.order("web/v2", view.live))
    busy = order[1]
    f.busy(busy, "b")
    view = f.view(bound=1)
    p = f.placing(request(), view)
    warm_candidates(p)
    cold_candidates(p)
    cold = [c for c in p.candidates.values() if c.warmth is Warmth.COLD]
    expected = [n for n in order if n not in ("n0", busy)][:3]
    assert [c.node for c in cold] == expected
    assert all(c.fetch_bytes == GB and c.wait_s == 0.0 for c in cold)


def test_cold_candidates_fetch_the_newest_entry_under_the_prefix_when_the_key_is_new():
    f = Fleet(2)
    f.inventory.apply_snapshot(
        "n0", 0, [entry("web/v1", created=1, size=3 * GB), entry("web/v0", created=0, size=GB)]
    )
    p = f.placing(request("web/v9", constraints=Constraints(zone="b")))  # n1 only: nothing partial
    cold_candidates(p)
    assert [(c.node, c.fetch_bytes) for c in p.candidates.values()] == [("n1", 3 * GB)]


def test_a_cold_node_that_is_the_last_free_holder_of_a_costly_key_costs_what_that_key_loses():
    f = Fleet(2, slots=1)
    guard = Guard()
    guard.add("big/k", rate=0.01, gain=100.0, free=["n0"])
    p = f.placing(request("web/v9", restore=()), f.view(bound=1, guard=guard))
    cold_candidates(p)
    assert p.candidates["n0"].cost > 0 and p.candidates["n1"].cost == 0.0
    assert guard.cost("n0", request("big/k"), 600.0) == 0.0  # a key's own build costs itself nothing


# -- rank and explain -----------------------------------------------------------------------------------
def candidate(
    node: str,
    ready_s: float,
    *,
    wait_s: float = 0.0,
    load: int = 0,
    weight: int = 0,
    warmth: Warmth = Warmth.COLD,
) -> Candidate:
    return Candidate(node, warmth, "", 0.0, wait_s, ready_s, weight, load=load)


def test_rank_counts_free_nodes_in_one_tie_slice_as_equally_ready():
    f = Fleet(1, ready_tie_s=0.25)
    p = f.placing(request())
    p.candidates = {
        c.node: c
        for c in (
            candidate("a", 1.05, load=1),
            candidate("b", 1.2, load=0),
            candidate("c", 0.9, load=5),
            candidate("d", 1.1, wait_s=0.5),
        )
    }
    # a and b share the [1.0, 1.25) slice: the less loaded b first; c is sooner; d waits, and a wait is not
    # blurred into a slice: it ranks by its own 1.1 s, after the slice that starts at 1.0 s.
    assert [c.node for c in rank(p)] == ["c", "b", "a", "d"]


def test_explain_names_the_best_the_next_and_a_wait():
    f = Fleet(2, slots=1, explain_candidates=2)
    p = f.placing(request(), f.view(bound=1))
    assert explain(p, []).reason == "waiting for a free slot: 2 capable node(s), all busy"
    best = Candidate("n0", Warmth.PARTIAL, "web/v1", 5e6, 0.0, 2.0, 0)
    d = explain(p, [best, candidate("n1", 3.0), candidate("n2", 4.0)])
    assert (d.node, d.warmth, d.matched_key) == ("n0", Warmth.PARTIAL, "web/v1")
    assert d.reason == "partial: holds web/v1, fetches ~5.0 MB; ready in ~2.0 s (next: n1 cold ~3.0 s)"
    assert d.candidates == (("n0", "partial", 2.0), ("n1", "cold", 3.0))
    waits = Candidate("n1", Warmth.WARM, "web/v2", 0.0, 30.0, 31.0, 0)
    d = explain(p, [waits])
    assert d.node == "n1" and d.reason.startswith("waiting for n1 (warm: holds web/v2): expected wait 30 s")


def test_decide_chains_the_stages_warm_before_partial_before_cold():
    f = Fleet(4, slots=2)
    f.inventory.apply_snapshot("n1", 0, [entry("web/v1")])
    f.inventory.apply_snapshot("n2", 0, [entry("web/v2")])
    d = decide(request(), f.view(), f.inventory, f.rendezvous)
    assert (d.node, d.warmth) == ("n2", Warmth.WARM)
    assert [c[1] for c in d.candidates] == ["warm", "partial", "cold"]


# -- the pass's view ------------------------------------------------------------------------------------
def test_a_reservation_pushes_the_nodes_next_free_slot_later():
    f = Fleet(1, slots=2)
    f.busy("n0", "b0", ends_in=100.0)
    f.busy("n0", "b1")  # not placed by the scheduler: assumed half a fleet build time
    view = f.view(bound=2)
    node = f.node("n0")
    assert not view.is_free("n0")
    now, build_s = f.clock.now(), f.estimator.fleet_build_s
    half = pytest.approx(now + 0.5 * build_s)
    assert sorted(view.slots_free_at(node)) == [pytest.approx(now + 100.0), half]
    view.reserve(node, 100.0)
    assert sorted(view.slots_free_at(node)) == [half, pytest.approx(now + 200.0)]


def test_a_build_running_past_its_estimate_is_expected_to_need_a_little_longer():
    f = Fleet(1, slots=1)
    f.busy("n0", "b0", ends_in=-60.0)  # overran its estimate by a minute
    view = f.view(bound=1)
    overrun = f.clock.now() + 0.1 * f.estimator.fleet_build_s
    assert view.slots_free_at(f.node("n0")) == [pytest.approx(overrun)]


def test_placing_on_a_node_at_its_bound_makes_it_no_free_holder():
    f = Fleet(2, slots=2)
    guard = Guard()
    guard.add("big/k", rate=0.01, gain=100.0, free=["n0", "n1"])
    view = f.view(bound=2, guard=guard)
    view.place("n0")
    assert view.load["n0"] == 1 and guard.keys["big/k"][2] == ["n0", "n1"]
    view.place("n0")
    assert guard.keys["big/k"][2] == ["n1"] and "n0" not in guard.by_node


# -- fairness -------------------------------------------------------------------------------------------
def test_fair_order_ages_requests_and_serves_the_tenant_with_fewer_running_first():
    clock = FakeClock(1000.0)
    queue = [
        PlacementRequest(id="a1", workspace="w", tenant="a", enqueued_at=990.0),
        PlacementRequest(id="a2", workspace="w", tenant="a", enqueued_at=991.0),
        PlacementRequest(id="b1", workspace="w", tenant="b", enqueued_at=995.0),
        PlacementRequest(id="old", workspace="w", tenant="c", enqueued_at=1000.0 - 250, priority=-1),
    ]
    running = collections.Counter({"a": 3})
    order = [r.id for r in fair_order(queue, running, clock.now(), aging_s=120.0)]
    # "old" aged two levels (priority 1); then b (nothing running) before a, then a's in their order.
    assert order == ["old", "b1", "a1", "a2"]


def test_a_tenant_over_its_share_waits_only_while_others_wait():
    queue = [PlacementRequest(id=f"{t}{i}", workspace="w", tenant=t) for t in "ab" for i in range(2)]
    shares = TenantShares(collections.Counter({"a": 2}), queue, total_slots=4, share=0.5)
    assert shares.over_share(queue[0]) == "tenant a holds 2 of 4 slots while others wait"
    assert shares.over_share(queue[2]) is None
    for r in queue[2:]:
        shares.placed(r)  # b's requests are all placed: a is alone in the queue now
    assert shares.running["b"] == 2 and shares.over_share(queue[0]) is None


# -- images ---------------------------------------------------------------------------------------------
IMAGE = "registry.example/ci/node:20"


def test_a_node_without_the_image_counts_its_pull_in_the_time_to_ready():
    f = Fleet(2, pull_bps=100e6)
    for name in ("n0", "n1"):
        f.inventory.apply_snapshot(name, 0, [entry("web/v2")])
    f.node("n1").images = {IMAGE: 500_000_000}
    p = f.placing(request(image=IMAGE))
    assert (p.image_holders, p.image_bytes) == (frozenset({"n1"}), 500_000_000)
    warm_candidates(p)
    n0, n1 = p.candidates["n0"], p.candidates["n1"]
    assert n0.pull_bytes == 500_000_000 and n1.pull_bytes == 0
    assert n0.ready_s - n1.ready_s == pytest.approx(5.0)  # 500 MB at 100 MB/s
    d = explain(p, rank(p))
    assert d.node == "n1" and "holds the image" in d.reason
    assert "next: n0 warm ~" in d.reason and "pulls image ~500 MB" in d.reason


def test_an_image_no_node_holds_or_a_request_without_one_counts_no_pull():
    f = Fleet(2)
    f.inventory.apply_snapshot("n0", 0, [entry("web/v2")])
    for image in ("", "registry.example/other:1"):
        p = f.placing(request(image=image))
        warm_candidates(p)
        assert p.image_holders == frozenset() and p.candidates["n0"].pull_bytes == 0
        assert "image" not in explain(p, rank(p)).reason


def test_a_warm_node_that_must_pull_a_large_image_loses_to_a_cold_node_that_holds_it():
    f = Fleet(8, pull_bps=50e6)
    f.inventory.apply_snapshot("n0", 0, [entry("web/v2", size=100_000_000)])
    holder = "n5"
    f.node(holder).images = {IMAGE: 2 * GB}  # 40 s to pull; the cold fetch of 100 MB takes ~1.3 s
    d = decide(request(image=IMAGE), f.view(), f.inventory, f.rendezvous)
    assert d.node == holder and d.warmth is Warmth.COLD, d.reason


def test_cold_candidates_look_at_free_image_holders_first_then_the_rendezvous_order():
    f = Fleet(8, explain_candidates=2)
    for name in ("n3", "n6", "n7"):
        f.node(name).images = {IMAGE: GB}
    f.busy("n7", "b1")  # both of n7's slots taken
    f.busy("n7", "b2")
    p = f.placing(request(image=IMAGE))
    cold_candidates(p)
    found = list(p.candidates)
    assert set(found[:2]) == {"n3", "n6"}  # the free holders, looked at before the rendezvous walk
    assert "n7" not in found  # a busy holder is not a cold candidate
    assert len(found) == 4  # then two more in the key's rendezvous order
    assert all(p.candidates[n].pull_bytes == GB for n in found[2:])


def test_a_build_that_names_an_image_goes_only_to_nodes_whose_executor_runs_images():
    f = Fleet(3)
    for name, executor in (("n0", "process"), ("n1", "podman"), ("n2", "process")):
        record = f.node(name)
        record.info = replace(record.info, executor=executor)
    live = f.view().live
    # convert.placement_request turns an image into this constraint (test_sandbox_placement.py)
    sandbox = Constraints(sandbox=True)
    assert sorted(admit(sandbox, live)) == ["n1"]
    assert admit(Constraints(), live) is live  # a build that needs no sandbox runs anywhere
    in_a = Constraints(zone="a", sandbox=True)
    assert admit(in_a, live) == {}  # n0 and n2: both process
    d = decide(request(image=IMAGE, constraints=in_a), f.view(), f.inventory, f.rendezvous)
    assert d.node is None and d.reason.endswith("(zone=a, a sandboxing executor (podman))"), d.reason
    assert decide(request(image=IMAGE), f.view(), f.inventory, f.rendezvous).node == "n1"
