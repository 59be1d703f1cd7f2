"""``QueryInventory``: what each node holds, for operators and capacity planning. Thin: call the placement
core's report (``placement/inventory_report.py``), convert it."""

from __future__ import annotations

from stoker.coordinator.core.errors import InvalidArgument
from stoker.coordinator.placement.build_queue import BuildQueue
from stoker.coordinator.placement.claims import ClaimChecker
from stoker.coordinator.placement.domain import Warmth
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.inventory_report import (
    InventoryQuery,
    KeySummary,
    ZoneSummary,
    inventory_report,
)
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.rpc import convert, validate
from stoker.coordinator.rpc.status import unary
from stoker.v1 import (
    inventory_pb2,
    inventory_pb2_grpc,
)


class InventoryServicer(inventory_pb2_grpc.InventoryServicer):
    def __init__(
        self, registry: NodeRegistry, inventory: InventoryIndex, builds: BuildQueue, claims: ClaimChecker
    ) -> None:
        self._registry = registry
        self._inventory = inventory
        self._builds = builds
        self._claims = claims

    @unary
    async def QueryInventory(self, request: inventory_pb2.QueryInventoryRequest, context):
        query = InventoryQuery(node=request.node, zone=request.zone, key_prefix=request.key_prefix)
        report = inventory_report(self._registry, self._inventory, query, self._claims)
        return inventory_pb2.QueryInventoryResponse(
            nodes=[
                convert.node_inventory(
                    n.record,
                    n.entries,
                    with_entries=not request.summary_only,
                    uncorroborated=n.uncorroborated,
                )
                for n in report.nodes
            ],
            keys=[key_summary_to_pb(k) for k in report.keys],
            zones=[zone_summary_to_pb(z) for z in report.zones],
            hit_rates=hit_rates_to_pb(self._builds),
        )

    @unary
    async def Prewarm(self, request: inventory_pb2.PrewarmRequest, context):
        validate.cache_key(request.key, "key")
        for i, prefix in enumerate(request.restore_keys):
            validate.cache_key(prefix, f"restore_keys[{i}]")
        validate.cache_key(request.zone, "zone", allow_empty=True)
        if not 0 <= request.replicas <= _MAX_REPLICAS:
            raise InvalidArgument(f"replicas: must be between 1 and {_MAX_REPLICAS}, got {request.replicas}")
        holding, asked = self._builds.prewarm(
            request.key, tuple(request.restore_keys), request.replicas or 1, request.zone
        )
        return inventory_pb2.PrewarmResponse(holding=holding, asked=asked)

    @unary
    async def ForgetNode(self, request: inventory_pb2.ForgetNodeRequest, context):
        validate.cache_key(request.node, "node")
        self._builds.forget_node(request.node)
        return inventory_pb2.ForgetNodeResponse(node=request.node)


_MAX_REPLICAS = 64


def key_summary_to_pb(k: KeySummary) -> inventory_pb2.KeySummary:
    pb = inventory_pb2.KeySummary(key=k.key, replicas=k.replicas, nodes=k.nodes, bytes=k.bytes)
    if k.last_used > 0:  # left unset when no node reported a use
        pb.last_used.CopyFrom(convert.timestamp(k.last_used))
    return pb


def zone_summary_to_pb(z: ZoneSummary) -> inventory_pb2.ZoneSummary:
    return inventory_pb2.ZoneSummary(
        zone=z.zone,
        nodes=z.nodes,
        slots=z.slots,
        running=z.running,
        disk_capacity_bytes=z.disk_capacity_bytes,
        disk_used_bytes=z.disk_used_bytes,
    )


def hit_rates_to_pb(builds: BuildQueue) -> inventory_pb2.HitRates:
    hits, hit_bytes = builds.hit_counts, builds.hit_bytes
    return inventory_pb2.HitRates(
        warm_builds=hits[Warmth.WARM],
        partial_builds=hits[Warmth.PARTIAL],
        cold_builds=hits[Warmth.COLD],
        bytes_local=builds.bytes_local,
        bytes_fetched=builds.bytes_fetched,
        warm_bytes=hit_bytes[Warmth.WARM],
        partial_bytes=hit_bytes[Warmth.PARTIAL],
        cold_bytes=hit_bytes[Warmth.COLD],
    )
