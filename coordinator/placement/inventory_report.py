"""What the fleet holds, for operators and capacity planning: the aggregation behind ``QueryInventory``.

Plain Python over the registry and the inventory index (their public methods only): the RPC layer
validates the request, calls :func:`inventory_report` and converts the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stoker.coordinator.core.errors import NotFound
from stoker.coordinator.placement.claims import ClaimChecker
from stoker.coordinator.placement.domain import BYTES, KEY, LAST_USED, Entry, NodeState
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRecord, NodeRegistry


@dataclass(frozen=True)
class InventoryQuery:
    node: str = ""
    """Only this node (NotFound when it is not registered); empty: every node."""
    zone: str = ""
    """Only nodes in this zone; empty: every zone."""
    key_prefix: str = ""
    """Only entries whose key starts with this."""


@dataclass(frozen=True)
class NodeHoldings:
    record: NodeRecord
    entries: list[Entry]
    """The node's corroborated entries that match the query's key prefix."""
    uncorroborated: int = 0
    """How many entries the node claims that the coordinator could not corroborate (whatever their key)."""


@dataclass
class KeySummary:
    """One key across the fleet."""

    key: str
    replicas: int = 0
    nodes: list[str] = field(default_factory=list)
    """The nodes that hold it, by name."""
    bytes: int = 0
    """The largest size any node reports for it."""
    last_used: float = 0.0
    """The latest use any node reports (0: none reported one)."""


@dataclass
class ZoneSummary:
    """Capacity and use of the zone's nodes that are not lost."""

    zone: str
    nodes: int = 0
    slots: int = 0
    running: int = 0
    disk_capacity_bytes: int = 0
    disk_used_bytes: int = 0


@dataclass(frozen=True)
class InventoryReport:
    nodes: list[NodeHoldings]
    """The matching nodes, by name."""
    keys: list[KeySummary]
    """Every matching key, by key."""
    zones: list[ZoneSummary]
    """Every zone of a matching node (lost ones included, with nothing counted), by zone."""


def inventory_report(
    registry: NodeRegistry,
    inventory: InventoryIndex,
    query: InventoryQuery,
    claims: ClaimChecker | None = None,
) -> InventoryReport:
    if query.node and registry.find(query.node) is None:
        raise NotFound(f"node {query.node} is not registered")
    nodes: list[NodeHoldings] = []
    keys: dict[str, KeySummary] = {}
    zones: dict[str, ZoneSummary] = {}
    for record in sorted(registry.all(), key=lambda r: r.name):
        if (query.node and record.name != query.node) or (query.zone and record.info.zone != query.zone):
            continue
        entries = [e for e in inventory.entries(record.name) if _key(e).startswith(query.key_prefix)]
        flagged = len(claims.uncorroborated(record.name)) if claims is not None else 0
        nodes.append(NodeHoldings(record, entries, flagged))
        zone = zones.setdefault(record.info.zone, ZoneSummary(record.info.zone))
        if record.state is not NodeState.LOST:
            _count_node(zone, record)
        for e in entries:
            _count_entry(keys.setdefault(_key(e), KeySummary(_key(e))), record.name, e)
    return InventoryReport(
        nodes=nodes, keys=[keys[k] for k in sorted(keys)], zones=[zones[z] for z in sorted(zones)]
    )


def _count_node(zone: ZoneSummary, record: NodeRecord) -> None:
    zone.nodes += 1
    zone.slots += record.info.slots
    zone.running += len(record.holders)
    zone.disk_capacity_bytes += record.info.disk_capacity_bytes
    zone.disk_used_bytes += record.disk_used_bytes


def _count_entry(summary: KeySummary, node: str, e: Entry) -> None:
    summary.replicas += 1
    summary.nodes.append(node)
    summary.bytes = max(summary.bytes, e[BYTES])
    summary.last_used = max(summary.last_used, e[LAST_USED])


def _key(e: Entry) -> str:
    return e[KEY]
