"""The aggregation behind QueryInventory, on the pure core: a registry and an inventory index, a fake
clock."""

from __future__ import annotations

import pytest

from stoker.coordinator.core.errors import NotFound
from stoker.coordinator.placement.domain import EntryRecord, NodeInfo, NodeState
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.inventory_report import InventoryQuery, inventory_report
from stoker.coordinator.placement.registry import NodeRegistry
from tests.helpers.clock import FakeClock


def entry(key: str, size: int, last_used: float) -> EntryRecord:
    return EntryRecord(key=key, bytes=size, files=1, created=1.0, last_used=last_used)


@pytest.fixture
def fleet():
    clock = FakeClock()
    registry = NodeRegistry(clock, lease_ttl_s=10)
    inventory = InventoryIndex()
    for name, zone, slots, capacity in [
        ("n2", "a", 4, 1000),
        ("n1", "a", 2, 500),
        ("n3", "b", 8, 2000),
        ("n4", "b", 1, 100),
    ]:
        record = registry.register(NodeInfo(name=name, zone=zone, slots=slots, disk_capacity_bytes=capacity))
        registry.attach(name, record.session_id)
    registry.get("n1").holders.add("b-1")
    registry.get("n1").disk_used_bytes = 300
    registry.get("n3").disk_used_bytes = 700
    inventory.apply_snapshot("n1", 1, [entry("web/deps-1", 100, 50.0), entry("api/deps-1", 40, 5.0)])
    inventory.apply_snapshot("n2", 1, [entry("web/deps-1", 120, 20.0), entry("web/deps-2", 10, 0.0)])
    inventory.apply_snapshot("n3", 1, [entry("web/deps-1", 90, 70.0)])
    registry.detach("n4", registry.get("n4").session_id)
    clock.t += 11
    assert [r.name for r in registry.expire()] == ["n4"]  # lost: listed, but its zone counts nothing of it
    return registry, inventory


def test_keys_are_summed_over_nodes_and_zones_count_nodes_not_lost(fleet):
    report = inventory_report(*fleet, InventoryQuery())
    assert [n.record.name for n in report.nodes] == ["n1", "n2", "n3", "n4"]
    assert [(k.key, k.replicas, k.nodes, k.bytes, k.last_used) for k in report.keys] == [
        ("api/deps-1", 1, ["n1"], 40, 5.0),
        ("web/deps-1", 3, ["n1", "n2", "n3"], 120, 70.0),
        ("web/deps-2", 1, ["n2"], 10, 0.0),
    ]
    assert [
        (z.zone, z.nodes, z.slots, z.running, z.disk_capacity_bytes, z.disk_used_bytes) for z in report.zones
    ] == [("a", 2, 6, 1, 1500, 300), ("b", 1, 8, 0, 2000, 700)]
    assert fleet[0].get("n4").state is NodeState.LOST


def test_the_query_narrows_nodes_zones_and_keys(fleet):
    report = inventory_report(*fleet, InventoryQuery(zone="a", key_prefix="web/"))
    assert [(n.record.name, sorted(e[0] for e in n.entries)) for n in report.nodes] == [
        ("n1", ["web/deps-1"]),
        ("n2", ["web/deps-1", "web/deps-2"]),
    ]
    assert [(k.key, k.replicas) for k in report.keys] == [("web/deps-1", 2), ("web/deps-2", 1)]
    assert [z.zone for z in report.zones] == ["a"]
    only = inventory_report(*fleet, InventoryQuery(node="n3"))
    assert [n.record.name for n in only.nodes] == ["n3"] and [z.zone for z in only.zones] == ["b"]


def test_an_unknown_node_is_not_found(fleet):
    with pytest.raises(NotFound, match="^node n9 is not registered$"):
        inventory_report(*fleet, InventoryQuery(node="n9"))
