"""``QueryInventory``: what each node holds, for operators and capacity planning."""

from __future__ import annotations

import logging

from stoker.coordinator.core.errors import NotFound
from stoker.coordinator.placement.build_queue import BuildQueue
from stoker.coordinator.placement.domain import BYTES, KEY, LAST_USED, Warmth
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.rpc import convert
from stoker.coordinator.rpc.status import unary
from stoker.v1 import (
    inventory_pb2,
    inventory_pb2_grpc,
)

log = logging.getLogger(__name__)



class InventoryServicer(inventory_pb2_grpc.InventoryServicer):
    def __init__(self, registry: NodeRegistry, inventory: InventoryIndex, builds: BuildQueue) -> None:
        self._registry = registry
        self._inventory = inventory
        self._builds = builds

    @unary
    async def QueryInventory(self, request: inventory_pb2.QueryInventoryRequest, context):
        if request.node and self._registry.find(request.node) is None:
            raise NotFound(f"node {request.node} is not registered")
        response = inventory_pb2.QueryInventoryResponse()
        keys: dict[str, inventory_pb2.KeySummary] = {}
        zones: dict[str, inventory_pb2.ZoneSummary] = {}
        for record in sorted(self._registry.all(), key=lambda r: r.name):
            if request.node and record.name != request.node:
                continue
            if request.zone and record.info.zone != request.zone:
                continue
            entries = [e for e in self._inventory.entries(record.name) if e[KEY].startswith(request.key_prefix)]
            response.nodes.append(convert.node_inventory(record, entries, with_entries=not request.summary_only))
            zone = zones.setdefault(record.info.zone, inventory_pb2.ZoneSummary(zone=record.info.zone))
            if record.state.value != "lost":
                zone.nodes += 1
                zone.slots += record.info.slots
                zone.running += len(record.holders)
                zone.disk_capacity_bytes += record.info.disk_capacity_bytes
                zone.disk_used_bytes += record.disk_used_bytes
            for e in entries:
                summary = keys.setdefault(e[KEY], inventory_pb2.KeySummary(key=e[KEY]))
                summary.replicas += 1
                summary.nodes.append(record.name)
                summary.bytes = max(summary.bytes, e[BYTES])
                if e[LAST_USED] > convert.seconds(summary.last_used):
                    summary.last_used.CopyFrom(convert.timestamp(e[LAST_USED]))
        response.keys.extend(keys[k] for k in sorted(keys))
        response.zones.extend(zones[z] for z in sorted(zones))
        hits = self._builds.hit_counts
        response.hit_rates.CopyFrom(inventory_pb2.HitRates(
            warm_builds=hits[Warmth.WARM], partial_builds=hits[Warmth.PARTIAL], cold_builds=hits[Warmth.COLD],
            bytes_local=self._builds.bytes_local, bytes_fetched=self._builds.bytes_fetched,
            warm_bytes=self._builds.hit_bytes[Warmth.WARM], partial_bytes=self._builds.hit_bytes[Warmth.PARTIAL],
            cold_bytes=self._builds.hit_bytes[Warmth.COLD]))
        return response
