"""The agents' side of the coordinator: ``Register`` and the ``Connect`` stream of each node."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from stoker.coordinator.config import CoordinatorConfig
from stoker.coordinator.core.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.placement.build_queue import AgentLink, BuildQueue
from stoker.coordinator.placement.claims import ClaimChecker
from stoker.coordinator.placement.registry import NodeRecord, NodeRegistry
from stoker.coordinator.rpc import auth, convert, validate
from stoker.coordinator.rpc.status import streaming, unary
from stoker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
)

log = logging.getLogger(__name__)


class AgentGatewayServicer(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(
        self,
        config: CoordinatorConfig,
        registry: NodeRegistry,
        claims: ClaimChecker,
        builds: BuildQueue,
        metrics: CoordinatorMetrics,
    ) -> None:
        self._config = config
        self._registry = registry
        self._claims = claims
        """Every report of a node goes through it: only what the coordinator corroborates is placed on."""
        self._builds = builds
        self._metrics = metrics
        self._sessions: dict[str, str] = {}
        self._intake = asyncio.Semaphore(config.nodes.snapshot_intake)

    @unary
    async def Register(self, request: agent_pb2.RegisterRequest, context) -> agent_pb2.RegisterResponse:
        validate.registration(request)
        identity = auth.current.get()
        if identity.role == "agent" and identity.name != request.node:
            raise PermissionDenied(
                f"node: the client certificate is for {identity.name!r}, not {request.node!r}"
            )
        record = self._registry.register(convert.node_info(request))
        self._sessions[record.session_id] = record.name
        if record.slots_flagged:
            log.warning(
                "node %s registered with %d slots; it gets %d (nodes.max_slots) and is flagged",
                record.name,
                record.registered_slots,
                record.info.slots,
            )
        log.info(
            "node %s registered (zone %r, %d slots, session %s)",
            record.name,
            record.info.zone,
            record.info.slots,
            record.session_id[:8],
        )
        return agent_pb2.RegisterResponse(
            session_id=record.session_id,
            lease_ttl_s=self._config.nodes.lease_ttl_s,
            heartbeat_interval_s=self._config.nodes.heartbeat_interval_s,
            acknowledges_build_events=True,
        )

    @streaming
    async def Connect(self, request_iterator, context):
        """One node's stream: admit its first message (a snapshot), then relay commands until either side
        ends.

        Refusals leave as domain errors through the status table (``@streaming``)."""
        async with self._intake:
            first = await self._first_message(request_iterator)
            if first is None:
                return
            link, record = self._admit(first)
        # The first message is the node's whole inventory: not kept for the life of the stream (what keeping
        # it cost at 1,000 nodes: bench/RESULTS.md, "Coordinator load").
        del first
        self._builds.attach(link)
        reader = asyncio.create_task(self._read(link, request_iterator))
        try:
            async for command in self._commands(link, reader):
                yield command
        finally:
            reader.cancel()
            self._builds.detach(link)
            self._forget_replaced_session(link, record)
            log.info("node %s stream closed", link.node)

    async def _first_message(self, request_iterator) -> agent_pb2.AgentMessage | None:
        """The stream's first message, or None when the node closed it first; DeadlineExceeded past
        ``nodes.first_message_s`` (a silent stream would hold one of the ``snapshot_intake`` turns)."""
        limit = self._config.nodes.first_message_s
        try:
            return await asyncio.wait_for(anext(request_iterator), limit)
        except StopAsyncIteration:
            return None
        except TimeoutError as exc:
            raise DeadlineExceeded(f"no first message within {limit:g} s") from exc

    def _admit(self, first: agent_pb2.AgentMessage) -> tuple[AgentLink, NodeRecord]:
        """Check a stream's first message and apply its snapshot: the node's link and its registry record."""
        session_id = first.session_id
        node_name = self._sessions.get(session_id)
        if node_name is None:
            raise FailedPrecondition(
                "unknown session: call Register first (the coordinator may have restarted)"
            )
        identity = auth.current.get()
        if identity.role == "agent" and identity.name != node_name:
            log.warning("refused a stream for node %s from certificate %s", node_name, identity.name)
            raise PermissionDenied(f"the client certificate is for {identity.name!r}, not {node_name!r}")
        if first.WhichOneof("body") != "snapshot":
            raise InvalidArgument("the first message must carry a snapshot")
        record = self._registry.attach(node_name, session_id)  # Aborted when a newer session took the node
        self._apply_snapshot(node_name, first.snapshot)
        log.info(
            "node %s connected: %d entries, generation %d",
            node_name,
            len(first.snapshot.entries),
            first.snapshot.generation,
        )
        return AgentLink(node_name, session_id), record

    @staticmethod
    async def _commands(link: AgentLink, reader: asyncio.Task) -> AsyncIterator[agent_pb2.CoordinatorCommand]:
        """The commands queued for the node, until the link is closed or the node's side of the stream
        ends."""
        while True:
            getter = asyncio.ensure_future(link.outbox.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                return
            command = getter.result()
            if command is None:
                return
            yield command

    def _forget_replaced_session(self, link: AgentLink, record: NodeRecord) -> None:
        """Drop the stream's session once the node has registered again under a new one."""
        if self._sessions.get(link.session_id) == link.node and record.session_id != link.session_id:
            self._sessions.pop(link.session_id, None)

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
            update = message.build_update
            self._builds.build_update(link.node, update)
            if update.agent_seq:  # stored (or dropped as stale or repeated): the agent may forget it
                link.ack(update.build_id, update.attempt, update.agent_seq)
        elif kind == "lease_report":
            self._builds.lease_report(link.node, message.lease_report)
        elif kind == "delta":
            delta = message.delta
            applied = self._claims.delta(
                link.node, delta.generation, [convert.entry(e) for e in delta.upserted], list(delta.removed)
            )
            if applied:
                self._set_generation(link.node, delta.generation)
            else:
                log.info(
                    "node %s: delta %d does not follow generation %d; asking for a snapshot",
                    link.node,
                    delta.generation,
                    self._claims.generation(link.node),
                )
                link.send(agent_pb2.CoordinatorCommand(snapshot_request=agent_pb2.SnapshotRequest()))
        elif kind == "snapshot":
            self._apply_snapshot(link.node, message.snapshot)

    def _apply_snapshot(self, node: str, snapshot: agent_pb2.InventorySnapshot) -> None:
        self._claims.snapshot(node, snapshot.generation, [convert.entry(e) for e in snapshot.entries])
        self._set_generation(node, snapshot.generation)

    def _set_generation(self, node: str, generation: int) -> None:
        record = self._registry.find(node)
        if record is not None:
            record.generation = generation
