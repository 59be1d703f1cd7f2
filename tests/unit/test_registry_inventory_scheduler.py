"""The coordinator's pure core: registry leases, the inventory index, the first placement policy."""

from __future__ import annotations

import pytest

from stoker.coordinator.domain import Constraints, EntryRecord, NodeInfo, NodeState, PlacementRequest, Warmth
from stoker.coordinator.errors import Aborted, InvalidArgument
from stoker.coordinator.inventory import InventoryIndex
from stoker.coordinator.registry import NodeRegistry
from stoker.coordinator.scheduler import Scheduler, rendezvous_weight


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def entry(key: str, created: float = 1.0, size: int = 100) -> EntryRecord:
    return EntryRecord(key=key, bytes=size, files=3, created=created, last_used=created)


def test_register_rejects_empty_name_and_bad_slots():
    reg = NodeRegistry(FakeClock(), 10)
    with pytest.raises(InvalidArgument, match="node"):
        reg.register(NodeInfo(name="", slots=1))
    with pytest.raises(InvalidArgument, match="slots"):
        reg.register(NodeInfo(name="n", slots=0))


def test_node_is_lost_only_after_ttl_and_superseded_session_is_refused():
    clock = FakeClock()
    reg = NodeRegistry(clock, lease_ttl_s=10)
    first = reg.register(NodeInfo(name="n1", slots=2))
    reg.attach("n1", first.session_id)
    assert reg.get("n1").state is NodeState.READY
    reg.detach("n1", first.session_id)
    clock.t += 9.9
    assert reg.expire() == []
    assert reg.get("n1").state is NodeState.DISCONNECTED
    clock.t += 0.2
    assert [r.name for r in reg.expire()] == ["n1"]
    assert reg.get("n1").state is NodeState.LOST
    second = reg.register(NodeInfo(name="n1", slots=2))
    with pytest.raises(Aborted):
        reg.attach("n1", first.session_id)
    assert reg.attach("n1", second.session_id).state is NodeState.READY


def test_reregistering_within_lease_keeps_slot_holders():
    reg = NodeRegistry(FakeClock(), 10)
    first = reg.register(NodeInfo(name="n1", slots=2))
    first.holders.add("b-1")
    second = reg.register(NodeInfo(name="n1", slots=2))
    assert second.holders == {"b-1"}


def test_inventory_deltas_need_consecutive_generations():
    inv = InventoryIndex()
    inv.apply_snapshot("n1", 5, [entry("web/a")])
    assert not inv.apply_delta("n1", 7, [entry("web/b")], [])  # gap: nothing applied
    assert set(inv.holders("web/b")) == set()
    assert inv.apply_delta("n1", 6, [entry("web/b")], ["web/a"])
    assert set(inv.holders("web/b")) == {"n1"}
    assert inv.holders("web/a") == {}
    assert inv.all_keys() == ["web/b"]


def test_inventory_newest_under_prefix_per_node():
    inv = InventoryIndex()
    inv.apply_snapshot("n1", 0, [entry("web/1", created=1), entry("web/2", created=2), entry("api/1", created=9)])
    inv.apply_snapshot("n2", 0, [entry("web/1", created=1)])
    newest = inv.newest_under("web/")
    assert newest["n1"].key == "web/2"
    assert newest["n2"].key == "web/1"
    assert list(inv.keys_under("api")) == ["api/1"]
    inv.drop_node("n1")
    assert set(inv.newest_under("web/")) == {"n2"}


def _fleet(n: int, slots: int = 1, zone_of=lambda i: "a" if i % 2 == 0 else "b"):
    clock = FakeClock()
    reg = NodeRegistry(clock, 10)
    for i in range(n):
        rec = reg.register(NodeInfo(name=f"n{i}", zone=zone_of(i), slots=slots))
        reg.attach(rec.name, rec.session_id)
    return reg


def test_scheduler_prefers_warm_then_partial_then_least_loaded():
    reg = _fleet(4, slots=2)
    inv = InventoryIndex()
    inv.apply_snapshot("n1", 0, [entry("web/old")])
    inv.apply_snapshot("n2", 0, [entry("web/new")])
    sched = Scheduler(inv)
    req = PlacementRequest(id="b", workspace="web", key="web/new", restore_keys=("web/",))
    d = sched.choose(req, reg.all())
    assert (d.node, d.warmth) == ("n2", Warmth.WARM)
    reg.get("n2").holders.update({"x", "y"})  # n2 full: the partial node is next
    d = sched.choose(req, reg.all())
    assert (d.node, d.warmth, d.matched_key) == ("n1", Warmth.PARTIAL, "web/old")
    reg.get("n1").holders.update({"x", "y"})
    d = sched.choose(req, reg.all())
    assert d.warmth is Warmth.COLD and d.node in {"n0", "n3"}


def test_scheduler_cold_ties_follow_rendezvous_order_of_the_key():
    reg = _fleet(6)
    sched = Scheduler(InventoryIndex())
    req = PlacementRequest(id="b", workspace="web", key="web/k")
    expected = max((f"n{i}" for i in range(6)), key=lambda n: rendezvous_weight("web/k", n))
    assert sched.choose(req, reg.all()).node == expected
    reg.get(expected).holders.add("busy")
    second = max((f"n{i}" for i in range(6) if f"n{i}" != expected), key=lambda n: rendezvous_weight("web/k", n))
    assert sched.choose(req, reg.all()).node == second


def test_scheduler_respects_constraints_and_reports_waiting():
    reg = _fleet(4)
    sched = Scheduler(InventoryIndex())
    req = PlacementRequest(id="b", workspace="w", constraints=Constraints(zone="b"))
    assert reg.get(sched.choose(req, reg.all()).node).info.zone == "b"
    for r in reg.all():
        r.holders.add("busy")
    d = sched.choose(req, reg.all())
    assert d.node is None and "2 capable node(s), all busy" in d.reason


def test_draining_node_gets_nothing_new():
    reg = _fleet(1)
    reg.get("n0").draining = True
    d = Scheduler(InventoryIndex()).choose(PlacementRequest(id="b", workspace="w"), reg.all())
    assert d.node is None
