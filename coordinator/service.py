"""Thin gRPC servicers: validate, call the core, convert. Errors leave through ``status.py``."""

from __future__ import annotations

import asyncio
import logging
import math

import grpc
from stoker.coordinator import auth, convert, validate
from stoker.coordinator.builds import AgentLink, BuildService
from stoker.coordinator.config import CoordinatorConfig
from stoker.coordinator.domain import BYTES, KEY, LAST_USED, Warmth
from stoker.coordinator.errors import Aborted, InvalidArgument, NotFound, PermissionDenied
from stoker.coordinator.inventory import InventoryIndex
from stoker.coordinator.metrics import CoordinatorMetrics
from stoker.coordinator.registry import NodeRegistry
from stoker.coordinator.status import streaming, unary
from stoker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    build_pb2,
    build_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
)

log = logging.getLogger(__name__)


class AgentGatewayServicer(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, config: CoordinatorConfig, registry: NodeRegistry, inventory: InventoryIndex,
                 builds: BuildService, metrics: CoordinatorMetrics) -> None:
        self._config = config
        self._registry = registry
        self._inventory = inventory
        self._builds = builds
        self._metrics = metrics
        self._sessions: dict[str, str] = {}
        self._intake = asyncio.Semaphore(config.nodes.snapshot_intake)

    @unary
    async def Register(self, request: agent_pb2.RegisterRequest, context) -> agent_pb2.RegisterResponse:
        validate.registration(request)
        identity = auth.current.get()
        if identity.role == "agent" and identity.name != request.node:
            raise PermissionDenied(f"node: the client certificate is for {identity.name!r}, not {request.node!r}")
        record = self._registry.register(convert.node_info(request))
        self._sessions[record.session_id] = record.name
        log.info("node %s registered (zone %r, %d slots, session %s)", record.name, record.info.zone,
                 record.info.slots, record.session_id[:8])
        return agent_pb2.RegisterResponse(
            session_id=record.session_id,
            lease_ttl_s=self._config.nodes.lease_ttl_s,
            heartbeat_interval_s=self._config.nodes.heartbeat_interval_s,
        )

    async def Connect(self, request_iterator, context):
        async with self._intake:
            try:
                first = await asyncio.wait_for(anext(request_iterator), self._config.nodes.first_message_s)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no first message within {self._config.nodes.first_message_s:g} s")
            node_name, session_id, record = await self._take_snapshot(first, context)
        # The first message is the node's whole inventory (~0.6 MB for 1,000 entries with their sketches): not
        # kept for the life of the stream. Kept, it cost 1,000 nodes ~670 MiB (bench/load.py).
        del first
        link = AgentLink(node_name, session_id)
        self._builds.attach(link)
        reader = asyncio.create_task(self._read(link, request_iterator))
        try:
            while True:
                getter = asyncio.ensure_future(link.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                command = getter.result()
                if command is None:
                    break
                yield command
        finally:
            reader.cancel()
            self._builds.detach(link)
            if self._sessions.get(session_id) == node_name and record.session_id != session_id:
                self._sessions.pop(session_id, None)
            log.info("node %s stream closed", node_name)

    async def _take_snapshot(self, first: agent_pb2.AgentMessage, context):
        """Check a stream's first message and apply its snapshot: (node, session id, registry record)."""
        session_id = first.session_id
        node_name = self._sessions.get(session_id)
        if node_name is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "unknown session: call Register first (the coordinator may have restarted)")
        identity = auth.current.get()
        if identity.role == "agent" and identity.name != node_name:
            log.warning("refused a stream for node %s from certificate %s", node_name, identity.name)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"the client certificate is for {identity.name!r}, not {node_name!r}")
        if first.WhichOneof("body") != "snapshot":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry a snapshot")
        try:
            record = self._registry.attach(node_name, session_id)
        except Aborted as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        self._apply_snapshot(node_name, first.snapshot)
        log.info("node %s connected: %d entries, generation %d", node_name, len(first.snapshot.entries),
                 first.snapshot.generation)
        return node_name, session_id, record

    async def _read(self, link: AgentLink, request_iterator) -> None:
        try:
            async for message in request_iterator:
                self._handle(link, message)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("error on node %s's stream", link.node)

    def _handle(self, link: AgentLink, message: agent_pb2.AgentMessage) -> None:
        kind = message.WhichOneof("body")
        self._metrics.agent_messages.labels(kind or "empty").inc()
        self._registry.seen(link.node)
        if kind == "heartbeat":
            self._builds.heartbeat(link.node, link.session_id, message.heartbeat)
        elif kind == "build_update":
            self._builds.build_update(link.node, message.build_update)
        elif kind == "delta":
            delta = message.delta
            applied = self._inventory.apply_delta(
                link.node, delta.generation, [convert.entry(e) for e in delta.upserted], list(delta.removed))
            if applied:
                self._set_generation(link.node, delta.generation)
            else:
                log.info("node %s: delta %d does not follow generation %d; asking for a snapshot",
                         link.node, delta.generation, self._inventory.generation(link.node))
                link.send(agent_pb2.CoordinatorCommand(snapshot_request=agent_pb2.SnapshotRequest()))
        elif kind == "snapshot":
            self._apply_snapshot(link.node, message.snapshot)

    def _apply_snapshot(self, node: str, snapshot: agent_pb2.InventorySnapshot) -> None:
        self._inventory.apply_snapshot(node, snapshot.generation, [convert.entry(e) for e in snapshot.entries])
        self._set_generation(node, snapshot.generation)

    def _set_generation(self, node: str, generation: int) -> None:
        record = self._registry.find(node)
        if record is not None:
            record.generation = generation


class BuildsServicer(build_pb2_grpc.BuildsServicer):
    def __init__(self, config: CoordinatorConfig, builds: BuildService) -> None:
        self._config = config
        self._builds = builds

    def _check_owner(self, build_id: str) -> None:
        """A ci caller may only see and cancel its own builds (a request_id may name someone else's)."""
        identity = auth.current.get()
        if identity.sees_everything:
            return
        owner = self._builds.get(build_id).owner
        if owner != identity.name:
            raise PermissionDenied(f"build {build_id} belongs to {owner or 'nobody'!r}, not {identity.name!r}")

    def _validate(self, spec, *, need_command: bool) -> None:
        validate.build_spec(spec, need_command=need_command,
                            max_files_bytes=self._config.builds.max_files_bytes,
                            max_timeout_s=self._config.builds.max_timeout_s)

    @streaming
    async def SubmitBuild(self, request: build_pb2.SubmitBuildRequest, context):
        self._validate(request.spec, need_command=True)
        build_id = self._builds.submit(request.spec, request.request_id, owner=auth.current.get().name)
        self._check_owner(build_id)
        async for event in self._builds.watch(build_id):
            yield event

    @streaming
    async def WatchBuild(self, request: build_pb2.WatchBuildRequest, context):
        if not request.build_id:
            raise InvalidArgument("build_id: must not be empty")
        self._check_owner(request.build_id)
        async for event in self._builds.watch(request.build_id, request.after_seq):
            yield event

    @unary
    async def GetBuild(self, request: build_pb2.GetBuildRequest, context) -> build_pb2.Build:
        if not request.build_id:
            raise InvalidArgument("build_id: must not be empty")
        self._check_owner(request.build_id)
        return self._builds.get(request.build_id)

    @unary
    async def CancelBuild(self, request: build_pb2.CancelBuildRequest, context) -> build_pb2.Build:
        if not request.build_id:
            raise InvalidArgument("build_id: must not be empty")
        self._check_owner(request.build_id)
        return self._builds.cancel(request.build_id, request.reason)

    @unary
    async def PlaceBuild(self, request: build_pb2.PlaceBuildRequest, context) -> build_pb2.Placement:
        self._validate(request.spec, need_command=False)
        limit = self._config.builds.max_timeout_s
        if not math.isfinite(request.lease_s) or not 0 <= request.lease_s <= limit:
            raise InvalidArgument(f"lease_s: must be between 0 and {limit:g} seconds, got {request.lease_s}")
        return await self._builds.place(request.spec, request.lease_s, owner=auth.current.get().name)

    @unary
    async def ReleasePlacement(self, request: build_pb2.ReleasePlacementRequest, context):
        if not request.lease_id:
            raise InvalidArgument("lease_id: must not be empty")
        identity = auth.current.get()
        owner = self._builds.lease_owner(request.lease_id)
        if owner is not None and not identity.sees_everything and owner != identity.name:
            raise PermissionDenied(f"lease {request.lease_id} belongs to {owner!r}")
        return build_pb2.ReleasePlacementResponse(released=self._builds.release(request.lease_id))


class InventoryServicer(inventory_pb2_grpc.InventoryServicer):
    def __init__(self, registry: NodeRegistry, inventory: InventoryIndex, builds: BuildService) -> None:
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
