"""The coordinator's pure core: registry leases and the inventory index."""

from __future__ import annotations

import pytest

from stoker.common.sketch import pack as pack_sketch
from stoker.common.sketch import unpack as unpack_sketch
from stoker.coordinator.core.errors import Aborted, InvalidArgument
from stoker.coordinator.placement.domain import (
    KEY,
    LAST_USED,
    SKETCH,
    EntryRecord,
    NodeInfo,
    NodeState,
)
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from tests.helpers.clock import FakeClock


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
    inv.apply_snapshot(
        "n1", 0, [entry("web/1", created=1), entry("web/2", created=2), entry("api/1", created=9)]
    )
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
    inv.apply_snapshot(
        "n1", 0, [entry("web/1", created=1), entry("web/2", created=2), entry("api/9", created=9)]
    )
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


def test_touching_entries_through_deltas_does_not_grow_the_index():
    """A delta that touches an entry (its last use) replaces the entry; it must not leave memory behind.

    Entries are parsed from serialized messages, as they come off the wire, so each message's keys are new
    string objects. Before keys were interned, the index's maps kept the first report's string and the entry
    kept its own: a coordinator grew by a string for every entry any delta touched (found by bench/load.py).
    """
    import tracemalloc

    from stoker.coordinator.rpc import convert
    from stoker.v1 import agent_pb2, common_pb2

    n = 20_000
    keys = [f"ws-{i % 50:03d}/deps-{i:08d}" for i in range(n)]
    index = InventoryIndex()

    def touch(generation: int, key: str) -> None:
        delta = agent_pb2.InventoryDelta(
            generation=generation, upserted=[common_pb2.CacheEntry(key=key, bytes=1 << 20, files=10)]
        )
        delta.upserted[0].last_used.FromSeconds(generation)
        wire = agent_pb2.InventoryDelta.FromString(delta.SerializeToString())
        assert index.apply_delta("n1", generation, [convert.entry(e) for e in wire.upserted], [])

    # Traced from before the snapshot: what a touch frees must have been counted when it was allocated.
    tracemalloc.start()
    try:
        snapshot = agent_pb2.InventorySnapshot(
            generation=1, entries=[common_pb2.CacheEntry(key=k, bytes=1 << 20, files=10) for k in keys]
        )
        parsed = agent_pb2.InventorySnapshot.FromString(snapshot.SerializeToString())
        index.apply_snapshot("n1", 1, [convert.entry(e) for e in parsed.entries])
        del snapshot, parsed
        touch(2, keys[0])  # anything allocated once, on first use, is not what is measured
        before = tracemalloc.get_traced_memory()[0]
        for generation, key in enumerate(keys[1:], start=3):
            touch(generation, key)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert index.holders(keys[-1])["n1"][LAST_USED] == n + 1
    # A key's string is about 70 bytes. What may remain is one float (24 bytes) per key: the index's newest
    # ``created`` of the key keeps the first report's float while the entry now holds its own (bounded: one
    # per key, not one per touch; measured 24 bytes per key with the fix, 93 without).
    assert grown < n * 40, f"the index grew {grown / n:.0f} bytes per touched entry"


def test_entries_share_one_string_per_key_across_reports():
    from stoker.coordinator.rpc import convert
    from stoker.v1 import common_pb2

    wire = common_pb2.CacheEntry(key="ws-001/deps-" + "0" * 8, bytes=1).SerializeToString()
    first = convert.entry(common_pb2.CacheEntry.FromString(wire))
    second = convert.entry(common_pb2.CacheEntry.FromString(wire))
    assert first[KEY] == second[KEY] and first[KEY] is second[KEY]


def test_the_garbage_collector_stops_tracking_entries_from_the_wire():
    """A full collection walks every object the collector tracks. At 1,000 nodes x 1,000 keys the inventory's
    entries, as named tuples (which CPython tracks for life), were a million of them: a ~1 s pause of the
    coordinator each time (bench/load.py). As exact tuples of untracked values they are untracked at the
    first collection they survive, and a full collection then untracks the maps that hold only them."""
    import gc

    from stoker.coordinator.rpc import convert
    from stoker.v1 import agent_pb2, common_pb2

    n = 5_000
    snapshot = agent_pb2.InventorySnapshot(
        generation=1,
        entries=[
            common_pb2.CacheEntry(
                key=f"ws-{i % 50:03d}/deps-{i:08d}",
                bytes=1 << 20,
                files=10,
                sketch=pack_sketch([i, i + 1]) if i % 2 else b"",
            )
            for i in range(n)
        ],
    )
    parsed = agent_pb2.InventorySnapshot.FromString(snapshot.SerializeToString())
    index = InventoryIndex()
    gc.collect()
    before = len(gc.get_objects())
    for node in ("n1", "n2"):
        index.apply_snapshot(node, 1, [convert.entry(e) for e in parsed.entries])
    delta = agent_pb2.InventoryDelta(
        generation=2, upserted=[common_pb2.CacheEntry(key="ws-000/new", bytes=1)]
    )
    assert index.apply_delta("n1", 2, [convert.entry(e) for e in delta.upserted], [])
    gc.collect()
    grown = len(gc.get_objects()) - before
    entries = index.entries("n1") + index.entries("n2")
    assert len(entries) == 2 * n + 1
    assert not any(gc.is_tracked(e) for e in entries)
    # 10,001 entries and 5,001 per-key maps: what stays tracked is the index's own few objects.
    assert grown < 100, f"{grown} more objects tracked after loading {2 * n + 1} entries"
    # Both nodes' replicas of an entry share one copy of its sketch (parsed twice, equal, so kept once).
    with_sketch = index.holders("ws-001/deps-00000001")
    assert with_sketch["n1"][SKETCH] is with_sketch["n2"][SKETCH]
    assert list(unpack_sketch(with_sketch["n2"][SKETCH])) == [1, 2]
    # The same fields in a named tuple stay tracked: what this test guards against.
    named = EntryRecord(*entries[0])
    gc.collect()
    assert gc.is_tracked(named)
