"""The agent's link to the coordinator: register, hold the Connect stream, reconnect forever.

On every (re)connection the agent registers, sends a full inventory snapshot and a heartbeat, then
streams deltas, heartbeats and build updates while it handles commands. Messages produced while
the coordinator is away wait in the outbox; deltas already covered by the new snapshot are skipped.
Build events are numbered per attempt and kept until the coordinator acknowledges storing them
(:class:`UnackedEvents`): after each reconnection every unacknowledged one is sent again, in order and
before the first heartbeat, so a coordinator that died with events unread (kill -9) or restarted mid-build
still gets each line and learns how the build ended; it drops the numbers it has stored. Log lines beyond a
bound are dropped while the coordinator is away, never the end of a build.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from stoker.agent.cache.api import BuildCache, CacheError, EntryInfo
from stoker.agent.config import AgentConfig
from stoker.agent.executors.base import BuildExecutor
from stoker.agent.executors.images import Image
from stoker.agent.local_cache import Leases
from stoker.agent.runner import AgentMetrics, BuildRunner
from stoker.common import sketch
from stoker.v1 import agent_pb2, agent_pb2_grpc, build_pb2, common_pb2

log = logging.getLogger(__name__)

_OUTBOX_LOG_LIMIT = 20_000
"""Unacknowledged build events past which new log lines are dropped (the coordinator is away)."""
_LEASE_CONFIRM_S = 10.0
"""After a (re)connection, how long the coordinator has to grant this node's leases again."""


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def image_entry(image: Image) -> common_pb2.ImageEntry:
    pb = common_pb2.ImageEntry(digest=image.digest, references=image.references, bytes=image.bytes)
    if image.last_used:
        pb.last_used.CopyFrom(_ts(image.last_used))
    return pb


def entry_pb(e: EntryInfo) -> common_pb2.CacheEntry:
    return common_pb2.CacheEntry(
        key=e.key,
        bytes=e.bytes,
        files=e.files,
        created=_ts(e.created),
        last_used=_ts(e.last_used),
        sketch=sketch.pack(e.sketch),
    )


class UnackedEvents:
    """Build events made and not yet acknowledged by the coordinator, in the order they were made."""

    def __init__(self, log_limit: int = _OUTBOX_LOG_LIMIT) -> None:
        self._log_limit = log_limit
        self._numbers: dict[tuple[str, int], int] = {}
        """The last agent_seq given, per (build, attempt)."""
        self._events: dict[int, agent_pb2.AgentMessage] = {}
        """By the order they were made (dicts keep it)."""
        self._of_attempt: dict[tuple[str, int], collections.deque[tuple[int, int]]] = {}
        """(agent_seq, order) of each attempt's unacknowledged events."""
        self._made = 0
        self.dropped_logs = 0

    def add(self, build_id: str, attempt: int, event: build_pb2.BuildEvent) -> agent_pb2.AgentMessage | None:
        """Number and keep ``event``; None for a log line past the bound (dropped)."""
        if event.WhichOneof("kind") == "log" and len(self._events) >= self._log_limit:
            self.dropped_logs += 1
            return None
        key = (build_id, attempt)
        seq = self._numbers[key] = self._numbers.get(key, 0) + 1
        message = agent_pb2.AgentMessage(
            build_update=agent_pb2.BuildUpdate(build_id=build_id, attempt=attempt, event=event, agent_seq=seq)
        )
        self._made += 1
        self._events[self._made] = message
        self._of_attempt.setdefault(key, collections.deque()).append((seq, self._made))
        return message

    def ack(self, build_id: str, attempt: int, agent_seq: int) -> None:
        """Forget the attempt's events numbered up to ``agent_seq``; an attempt whose end is acknowledged is
        forgotten altogether."""
        key = (build_id, attempt)
        kept = self._of_attempt.get(key)
        while kept and kept[0][0] <= agent_seq:
            message = self._events.pop(kept.popleft()[1])
            if message.build_update.event.WhichOneof("kind") == "finished":
                self._numbers.pop(key, None)
        if kept is not None and not kept:
            del self._of_attempt[key]

    def pending(self) -> list[agent_pb2.AgentMessage]:
        return list(self._events.values())

    def __len__(self) -> int:
        return len(self._events)


class CoordinatorSession:
    def __init__(
        self,
        config: AgentConfig,
        registration: agent_pb2.RegisterRequest,
        cache: BuildCache,
        executor: Executor,
        metrics: AgentMetrics,
        build_executor: BuildExecutor | None = None,
    ) -> None:
        self._config = config
        self._registration = registration
        self._cache = cache
        self._executor = executor
        self._metrics = metrics
        self._outbox: collections.deque[agent_pb2.AgentMessage] = collections.deque()
        self._wakeup = asyncio.Event()
        self._unacked = UnackedEvents()
        self._acknowledged = True
        """Whether the coordinator acknowledges build events (RegisterResponse); else written is done."""
        self._sent_generation = -1
        self.connected = asyncio.Event()
        self.last_error = "not connected yet"
        self.runner = BuildRunner(
            config.build, registration.slots, cache, executor, self._emit_build_event, metrics, build_executor
        )
        self.leases = Leases()
        """Placement leases granted on this node, which runners use through the local socket."""
        cache.subscribe(self._on_cache_change)
        self.runner.on_drain(self._send_heartbeat_now)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- producers -----------------------------------------------------------------------------
    def _emit_build_event(self, build_id: str, attempt: int, event: build_pb2.BuildEvent) -> None:
        message = self._unacked.add(build_id, attempt, event)
        if message is not None:
            self._push(message)

    def _on_cache_change(
        self, generation: int, upserted: Sequence[EntryInfo], removed: Sequence[str]
    ) -> None:
        """Called by the cache, possibly from a worker thread."""
        message = agent_pb2.AgentMessage(
            delta=agent_pb2.InventoryDelta(
                generation=generation, upserted=[entry_pb(e) for e in upserted], removed=list(removed)
            )
        )
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._push, message)

    def report_lease(self, report: agent_pb2.LeaseReport) -> None:
        """What the agent did for a runner under a lease, for the coordinator (kept while it is away)."""
        self._push(agent_pb2.AgentMessage(lease_report=report))

    def _send_heartbeat_now(self) -> None:
        """Queue a heartbeat now (it says the node is draining), not at the next interval."""
        self._push(agent_pb2.AgentMessage(heartbeat=self._heartbeat_message()))

    def _push(self, message: agent_pb2.AgentMessage) -> None:
        self._outbox.append(message)
        self._wakeup.set()

    # -- the connection loop -------------------------------------------------------------------
    async def run_forever(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        delay = self._config.coordinator.reconnect_initial_s
        address = self._config.coordinator.address
        while not stop.is_set():
            self._metrics.reconnects.inc()
            began = time.monotonic()
            try:
                async with self._channel(address) as channel:
                    await self._connect_once(agent_pb2_grpc.AgentGatewayStub(channel), stop)
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
            except (OSError, CacheError) as exc:
                self.last_error = str(exc)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("the stream to the coordinator broke unexpectedly", exc_info=True)
            finally:
                self.connected.clear()
                self._metrics.connected.set(0)
            if stop.is_set():
                break
            if time.monotonic() - began > 30:
                delay = self._config.coordinator.reconnect_initial_s  # it was a healthy stream: start over
            wait = min(delay, self._config.coordinator.reconnect_max_s) * random.uniform(0.5, 1.0)
            log.warning(
                "not connected to the coordinator at %s (%s); retrying in %.1f s",
                address,
                self.last_error,
                wait,
            )
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass
            delay = min(delay * 2, self._config.coordinator.reconnect_max_s)

    def _channel(self, address: str) -> grpc.aio.Channel:
        options = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        link = self._config.coordinator
        if not link.tls_ca:
            return grpc.aio.insecure_channel(address, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(link.tls_ca).read_bytes(),
            private_key=Path(link.tls_key).read_bytes() if link.tls_key else None,
            certificate_chain=Path(link.tls_cert).read_bytes() if link.tls_cert else None,
        )
        return grpc.aio.secure_channel(address, credentials, options=options)

    async def _connect_once(self, stub: agent_pb2_grpc.AgentGatewayStub, stop: asyncio.Event) -> None:
        reply = await stub.Register(self._registration, timeout=10, wait_for_ready=False)
        self._acknowledged = reply.acknowledges_build_events
        interval = self._config.server.heartbeat_interval_s or reply.heartbeat_interval_s or 2.0
        call = stub.Connect()
        await call.write(agent_pb2.AgentMessage(session_id=reply.session_id, snapshot=await self._snapshot()))
        # Every build event the coordinator has not acknowledged goes (again) before the first heartbeat, in
        # the order made: a coordinator that restarted while a build ended must learn that before it
        # reconciles what the node runs (or it would requeue a build that already finished, and run it
        # twice), and a build's last lines must reach it before its end. Events made meanwhile go through the
        # outbox after these.
        self._outbox = collections.deque(m for m in self._outbox if m.WhichOneof("body") != "build_update")
        for message in self._unacked.pending():
            await call.write(message)
            self._written(message)
        await call.write(agent_pb2.AgentMessage(heartbeat=await self._heartbeat()))
        self.connected.set()
        self._metrics.connected.set(1)
        # The coordinator grants this node's leases again as the stream opens (before any other command);
        # those it does not, it no longer holds. Runners' calls meanwhile go on under the leases as they were.
        stream = self.leases.new_stream()
        asyncio.get_running_loop().call_later(_LEASE_CONFIRM_S, self.leases.forget_unconfirmed, stream)
        self.last_error = ""
        log.info(
            "connected to the coordinator as %s (session %s)", self._registration.node, reply.session_id[:8]
        )
        tasks = [
            asyncio.create_task(self._write_loop(call)),
            asyncio.create_task(self._heartbeat_loop(call, interval)),
            asyncio.create_task(self._read_loop(call)),
            asyncio.create_task(stop.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # The reader's error says why the stream ended; a writer that found the call finished says less.
            reader = tasks[2]
            failed = [
                err
                for t in sorted(done, key=lambda t: t is not reader)
                if not t.cancelled() and (err := t.exception()) is not None
            ]
            if failed:
                raise failed[0]
            if not stop.is_set():
                self.last_error = "the coordinator closed the stream"
        finally:
            for task in tasks:
                task.cancel()
            call.cancel()

    async def _snapshot(self) -> agent_pb2.InventorySnapshot:
        generation, entries = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._cache.inventory
        )
        self._sent_generation = generation
        return agent_pb2.InventorySnapshot(generation=generation, entries=[entry_pb(e) for e in entries])

    async def _heartbeat(self) -> agent_pb2.Heartbeat:
        return self._heartbeat_message()

    def _heartbeat_message(self) -> agent_pb2.Heartbeat:
        used, free = self._cache.disk_usage()
        generation = self._sent_generation
        return agent_pb2.Heartbeat(
            running=[agent_pb2.RunningBuild(build_id=b, attempt=a) for b, a in self.runner.running()],
            free_slots=self.runner.free_slots(),
            disk_used_bytes=used,
            disk_free_bytes=free,
            generation=generation,
            evicted_bytes_total=self._cache.evicted_bytes_total,
            draining=self.runner.draining,
            images=[image_entry(i) for i in self.runner.images()],
        )

    async def _write_loop(self, call) -> None:
        while True:
            while self._outbox:
                message = self._outbox[0]
                if message.WhichOneof("body") == "delta":
                    if message.delta.generation <= self._sent_generation:
                        self._outbox.popleft()
                        continue
                    self._sent_generation = message.delta.generation
                if call.done():
                    return  # the stream is over: what is left waits in the outbox for the next one
                await call.write(message)
                self._outbox.popleft()
                self._written(message)
            self._wakeup.clear()
            await self._wakeup.wait()

    def _written(self, message: agent_pb2.AgentMessage) -> None:
        """A coordinator that does not acknowledge build events (one from before they were numbered) is
        taken to have each one once it is written: kept, they would be sent to it again, and it would record
        them twice."""
        if not self._acknowledged and message.WhichOneof("body") == "build_update":
            update = message.build_update
            self._unacked.ack(update.build_id, update.attempt, update.agent_seq)

    async def _heartbeat_loop(self, call, interval: float) -> None:
        while not call.done():
            await asyncio.sleep(interval)
            if call.done():
                return
            await call.write(agent_pb2.AgentMessage(heartbeat=await self._heartbeat()))

    async def _read_loop(self, call) -> None:
        async for command in call:
            kind = command.WhichOneof("command")
            if kind == "run_build":
                self.runner.start(command.run_build)
            elif kind == "cancel_build":
                c = command.cancel_build
                self.runner.cancel(c.build_id, c.attempt, c.reason)
            elif kind == "prewarm":
                asyncio.create_task(self._prewarm(command.prewarm))
            elif kind == "evict":
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._cache.evict, command.evict.key
                )
            elif kind == "snapshot_request":
                self._push(agent_pb2.AgentMessage(snapshot=await self._snapshot()))
            elif kind == "grant_lease":
                self.leases.grant(command.grant_lease)
            elif kind == "drop_lease":
                self.leases.drop(command.drop_lease.lease_id, command.drop_lease.reason)
            elif kind == "ack_build_events":
                ack = command.ack_build_events
                self._unacked.ack(ack.build_id, ack.attempt, ack.agent_seq)

    async def _prewarm(self, command: agent_pb2.PrewarmCommand) -> None:
        started = time.monotonic()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._cache.prewarm, command.key, list(command.restore_keys)
            )
            log.info(
                "prewarmed %s: %s, %d bytes fetched in %.2f s (waiting for a worker included)",
                command.key,
                result.restored_key or "nothing found",
                result.bytes_fetched,
                time.monotonic() - started,
            )
        except CacheError as exc:
            log.warning("prewarm of %s failed: %s", command.key, exc)
