"""The agents' side of the coordinator: ``Register`` and the ``Connect`` stream of each node."""

from __future__ import annotations

import asyncio
import logging

import grpc
from stoker.coordinator.config import CoordinatorConfig
from stoker.coordinator.core.errors import Aborted, PermissionDenied
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.placement.build_queue import AgentLink, BuildQueue
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.rpc import auth, convert, validate
from stoker.coordinator.rpc.status import unary
from stoker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
)

log = logging.getLogger(__name__)



class AgentGatewayServicer(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, config: CoordinatorConfig, registry: NodeRegistry, inventory: InventoryIndex,
                 builds: BuildQueue, metrics: CoordinatorMetrics) -> None:
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
