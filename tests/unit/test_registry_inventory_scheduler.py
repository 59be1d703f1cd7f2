"""The coordinator's pure core: registry leases and the inventory index."""

from __future__ import annotations

import pytest

from stoker.coordinator.domain import Constraints, EntryRecord, NodeInfo, NodeState, PlacementRequest, Warmth
from stoker.coordinator.errors import Aborted, InvalidArgument
from stoker.coordinator.inventory import InventoryIndex
from stoker.coordinator.registry import NodeRegistry



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




def test_prefix_index_stays_exact_through_many_adds_and_removes():
    """The sorted-key index is updated lazily (a small list merged into a large one, stale keys skipped and
    compacted); whatever the order of changes, prefix lookups must equal a brute-force scan."""
    import random

    rng = random.Random(5)
    inv = InventoryIndex()
    generation = {"n0": 0, "n1": 0}
    inv.apply_snapshot("n0", 0, [])
    inv.apply_snapshot("n1", 0, [])
    held: dict[str, set[str]] = {"n0": set(), "n1": set()}
    for step in range(12000):
        node = rng.choice(["n0", "n1"])
        key = f"ws-{rng.randrange(30)}/deps-{rng.randrange(400)}"
        generation[node] += 1
        if key in held[node] and rng.random() < 0.5:
            assert inv.apply_delta(node, generation[node], [], [key])
            held[node].discard(key)
        else:
            assert inv.apply_delta(node, generation[node], [entry(key, created=step)], [])
            held[node].add(key)
        if step % 997 == 0:
            everything = held["n0"] | held["n1"]
            for prefix in ("ws-1", "ws-7/", "ws-29/deps-3", ""):
                assert list(inv.keys_under(prefix)) == sorted(k for k in everything if k.startswith(prefix))
    assert inv.all_keys() == sorted(held["n0"] | held["n1"])


def test_newest_keys_under_follows_changes_after_being_remembered():
    inv = InventoryIndex()
    inv.apply_snapshot("n1", 0, [entry("web/1", created=1), entry("web/2", created=2), entry("api/9", created=9)])
    assert inv.newest_keys_under("web/", count=1) == ["web/2"]
    assert inv.apply_delta("n1", 1, [entry("web/3", created=3)], [])
    assert inv.newest_keys_under("web/", count=1) == ["web/3"]
    assert inv.apply_delta("n1", 2, [], ["web/3"])
    assert inv.newest_keys_under("web/", count=1) == ["web/2"]
    inv.apply_snapshot("n2", 0, [entry("web/1", created=50)])  # a newer report of an existing key
    assert inv.newest_keys_under("web/", count=1) == ["web/1"]
    assert inv.newest_keys_under("api/", count=2) == ["api/9"]


def test_remembered_newest_keys_match_a_fresh_scan_through_random_changes():
    import random

    rng = random.Random(9)
    inv = InventoryIndex()
    gens = {"n0": 0, "n1": 0}
    for n in gens:
        inv.apply_snapshot(n, 0, [])
    held = {"n0": set(), "n1": set()}
    created = {}
    for step in range(6000):
        node = rng.choice(["n0", "n1"])
        key = f"ws-{rng.randrange(5)}/deps-{rng.randrange(300):03d}"
        created.setdefault(key, float(rng.randrange(10**6)))
        gens[node] += 1
        if key in held[node] and rng.random() < 0.6:
            inv.apply_delta(node, gens[node], [], [key])
            held[node].discard(key)
        else:
            inv.apply_delta(node, gens[node], [entry(key, created=created[key])], [])
            held[node].add(key)
        if step % 7 == 0:
            prefix = f"ws-{rng.randrange(5)}/"
            count = rng.choice([1, 3])
            everything = [k for k in held["n0"] | held["n1"] if k.startswith(prefix)]
            expect = sorted(everything, key=lambda k: created[k], reverse=True)[:count]
            assert inv.newest_keys_under(prefix, count=count) == expect, step
