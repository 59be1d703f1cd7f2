"""The build queue: accept builds, place them, dispatch them to agents, and record what happens.

:class:`BuildQueue` is the coordinator's application core. It owns the queue, the active builds
and placement leases; it asks the :class:`Scheduler` where each request goes; it sends commands to
agents through :class:`AgentLink` objects (one per open stream) and records every event in the
state store before fanning it out to watchers. It runs on one asyncio loop, so its state needs no
locks.

Exactly-once bookkeeping: each run of a build is an *attempt*. Updates from an agent for any other
attempt than the current one are ignored (and the agent is told to stop it), so a build requeued
after its node was lost finishes once, whatever the lost node does later.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from stoker.coordinator.config import BuildSettings
from stoker.coordinator.core.clock import Clock
from stoker.coordinator.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.core.state import NodeEvent, StateStore, is_terminal
from stoker.coordinator.placement.claims import ClaimChecker
from stoker.coordinator.placement.domain import (
    NO_LIMITS,
    RESOURCE_FIELDS,
    Constraints,
    NodeInfo,
    NodeState,
    PlacementRequest,
    Warmth,
    number,
)
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRecord, NodeRegistry
from stoker.coordinator.placement.scheduler import Scheduler
from stoker.coordinator.rpc import convert
from stoker.v1 import agent_pb2, build_pb2, common_pb2

log = logging.getLogger(__name__)


def _tracked(scheduler: Scheduler, kind: str) -> int:
    return scheduler.tracked()[kind]


_EXPECTED_TO_STATE: dict[int, str] = {
    build_pb2.BUILD_STATE_SUCCEEDED: "succeeded",
    build_pb2.BUILD_STATE_FAILED: "failed",
    build_pb2.BUILD_STATE_CANCELLED: "cancelled",
    build_pb2.BUILD_STATE_TIMED_OUT: "timed_out",
    build_pb2.BUILD_STATE_ERROR: "error",
}


class AgentLink:
    """The outbound half of one node's stream: commands queue here and the stream writer sends them."""

    MAX_ADVISORY = 1000
    """Prewarm and evict commands are advice: beyond this many commands waiting for a slow (or stuck)
    stream they are dropped rather than queued, so such a stream cannot grow the coordinator's memory."""

    def __init__(self, node: str, session_id: str) -> None:
        self.node = node
        self.session_id = session_id
        self.outbox: asyncio.Queue[agent_pb2.CoordinatorCommand | None] = asyncio.Queue()
        self._acks: dict[tuple[str, int], int] = {}

    def ack(self, build_id: str, attempt: int, agent_seq: int) -> None:
        """Tell the agent its events of the attempt up to ``agent_seq`` are stored: one command per attempt
        for what arrived together (acknowledgements are gathered until the event loop's next turn)."""
        key = (build_id, attempt)
        if not self._acks:
            asyncio.get_running_loop().call_soon(self._send_acks)
        self._acks[key] = max(agent_seq, self._acks.get(key, 0))

    def _send_acks(self) -> None:
        """Acknowledgements are advice: a node that does not read its stream (and sends updates of builds
        it makes up) cannot queue them without bound; one dropped costs a repeat after its reconnection."""
        acks, self._acks = self._acks, {}
        for (build_id, attempt), agent_seq in acks.items():
            self.send(
                agent_pb2.CoordinatorCommand(
                    ack_build_events=agent_pb2.AckBuildEvents(
                        build_id=build_id, attempt=attempt, agent_seq=agent_seq
                    )
                ),
                advisory=True,
            )

    def send(self, command: agent_pb2.CoordinatorCommand, advisory: bool = False) -> bool:
        """Queue ``command`` for the stream; False when it was advisory and dropped (see MAX_ADVISORY)."""
        if advisory and self.outbox.qsize() >= self.MAX_ADVISORY:
            return False
        self.outbox.put_nowait(command)
        return True

    def close(self) -> None:
        self.outbox.put_nowait(None)


@dataclass
class ActiveBuild:
    record: build_pb2.Build
    request: PlacementRequest
    events: list[build_pb2.BuildEvent] = field(default_factory=list)
    waiters: list[asyncio.Future] = field(default_factory=list)
    dispatch_session: str = ""
    placed_at: float = 0.0
    queued_reason: str = ""
    cancel_requested: bool = False
    log_bytes: int = 0
    """Output kept so far (this attempt's and earlier ones'), against builds.max_log_bytes."""
    dropped: DroppedOutput | None = None
    """Output past the bound: counted, with its tail."""
    agent_seq: int = 0
    """The highest agent_seq of the current attempt's events recorded: the agent's repeats of events this
    coordinator (or the one before a restart) stored are dropped."""

    @property
    def finished(self) -> bool:
        return is_terminal(self.record.state)


@dataclass
class DroppedOutput:
    """A build's output past builds.max_log_bytes: how much, and its last lines."""

    lines: int = 0
    bytes: int = 0
    tail: collections.deque[build_pb2.LogLine] = field(default_factory=collections.deque)
    tail_bytes: int = 0


@dataclass
class PendingPlacement:
    request: PlacementRequest
    spec: common_pb2.BuildSpec
    lease_s: float
    future: asyncio.Future
    owner: str = ""


@dataclass
class Lease:
    lease_id: str
    node: str
    expires: float
    owner: str = ""
    request: PlacementRequest | None = None
    """The scheduler's view of the placement (its keys as nodes store them)."""
    spec: common_pb2.BuildSpec = field(default_factory=common_pb2.BuildSpec)
    """The spec as bound to the caller's token: what the node's agent restores and saves under the lease."""
    secret_sha256: bytes = b""
    """SHA-256 of the secret the caller got (the secret itself is never kept)."""
    cache: common_pb2.CacheFigures = field(default_factory=common_pb2.CacheFigures)
    timings: common_pb2.Timings = field(default_factory=common_pb2.Timings)
    """What the node's agent reported doing under the lease (LeaseReport), for the scheduler at its end."""
    created: float = 0.0
    """When PlaceBuild asked for it; with ``granted``, the queue wait the build history keeps."""
    granted: float = 0.0
    reason: str = ""
    """Why the scheduler chose the node."""


class BuildQueue:
    def __init__(
        self,
        settings: BuildSettings,
        registry: NodeRegistry,
        inventory: InventoryIndex,
        scheduler: Scheduler,
        store: StateStore,
        clock: Clock,
        metrics: CoordinatorMetrics,
        slot_caps: dict[str, int] | None = None,
        claims: ClaimChecker | None = None,
    ) -> None:
        """``slot_caps``: principal name → the most slots its builds and leases hold at once (its token's
        ``max_slots``); past it they wait, whatever the fleet has free."""
        self._settings = settings
        self._slot_caps = dict(slot_caps or {})
        self._registry = registry
        self._inventory = inventory
        self._scheduler = scheduler
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._claims = claims or ClaimChecker(inventory, clock, store, enabled=False)
        """Told what the node of each build restored and saved, and what prewarms and leases asked of nodes:
        what corroborates the nodes' claims (``placement.claims``)."""
        self._active: dict[str, ActiveBuild] = {}
        self._queue: list[ActiveBuild | PendingPlacement] = []
        self._links: dict[str, AgentLink] = {}
        self._leases: dict[str, Lease] = {}
        self._recovered_at = clock.now()
        self._pruned_at = float("-inf")
        self._closing = False
        self.hit_counts = {w: 0 for w in Warmth}
        self.hit_bytes = {w: 0 for w in Warmth}
        self.bytes_local = 0
        self.bytes_fetched = 0
        # Read by the metrics server's thread: take the links as one list (atomic) before walking them.
        metrics.outbox_commands.set_function(
            lambda: sum(link.outbox.qsize() for link in list(self._links.values()))
        )
        # Read when /metrics is scraped, like the two above: all() copies the registry's dict in one step.
        metrics.slots.labels("total").set_function(lambda: sum(n.info.slots for n in self._ready_nodes()))
        metrics.slots.labels("busy").set_function(lambda: sum(len(n.holders) for n in self._ready_nodes()))
        metrics.claims_uncorroborated.set_function(self._claims.uncorroborated_total)
        metrics.nodes_flagged.labels("entries").set_function(self._claims.flagged_nodes)
        metrics.nodes_flagged.labels("slots").set_function(
            lambda: sum(1 for n in self._registry.all() if n.slots_flagged)
        )
        for kind in scheduler.tracked():  # read when /metrics is scraped
            metrics.scheduler_tracked.labels(kind).set_function(functools.partial(_tracked, scheduler, kind))

    # -- start-up ------------------------------------------------------------------------------
    def recover(self) -> int:
        """Reload unfinished builds from the store after a restart. Returns how many."""
        self._recovered_at = self._clock.now()
        count = 0
        for record in self._store.unfinished():
            events = self._store.events(record.id)
            if events:
                record.last_seq = max(record.last_seq, events[-1].seq)
            active = ActiveBuild(
                record=record,
                events=events,
                request=self._request(record.id, record.spec, convert.seconds(record.created)),
                log_bytes=sum(len(e.log.text.encode()) + 1 for e in events if e.HasField("log")),
                agent_seq=max((e.agent_seq for e in events if e.attempt == record.attempt), default=0),
            )
            placed = [e for e in events if e.HasField("placed")]
            if placed and record.state != build_pb2.BUILD_STATE_QUEUED:
                # Its queue wait ended when it was last placed, not when the restarted coordinator finishes
                # it (the wait read as the build's whole duration: issue 17, item 1).
                active.placed_at = convert.seconds(placed[-1].time)
            self._active[record.id] = active
            if record.state == build_pb2.BUILD_STATE_QUEUED:
                self._queue.append(active)
            count += 1
        self._metrics.queue_depth.set(len(self._queue))
        if count:
            log.info("recovered %d unfinished builds from the state store", count)
        return count

    # -- CI side -------------------------------------------------------------------------------
    def submit(self, spec: common_pb2.BuildSpec, request_id: str = "", owner: str = "") -> str:
        """Queue a build; returns its id. A ``request_id`` is the caller's idempotency key, scoped to
        ``owner`` (the principal): the same id with the same spec returns the build it made; with another
        spec, ALREADY_EXISTS naming the fields that differ. Another principal's ids never collide."""
        if spec.timeout_s == 0:
            spec = _with_timeout(spec, self._settings.default_timeout_s)
        scoped = _scoped_request_id(owner, request_id)
        if scoped:
            existing = self._store.find_request(scoped)
            if existing:
                first = self.get(existing).spec
                if first != spec:
                    raise AlreadyExists(
                        f"request_id {_short(request_id)} was used for a build with another spec "
                        f"(differs in {', '.join(_differing_fields(first, spec))}); use a new request_id "
                        "for a new build"
                    )
                return existing
        self._check_queued(owner)
        now = self._clock.now()
        build_id = "b-" + uuid.uuid4().hex[:16]
        request = self._request(build_id, spec, now)
        self._check_satisfiable(request)
        record = build_pb2.Build(
            id=build_id,
            spec=spec,
            state=build_pb2.BUILD_STATE_QUEUED,
            attempt=1,
            created=convert.timestamp(now),
            exit_code=-1,
            owner=owner,
        )
        self._store.put_build(record, scoped)
        active = ActiveBuild(record=record, request=request)
        self._active[build_id] = active
        self._queue.append(active)
        self._metrics.builds_submitted.inc()
        self._metrics.queue_depth.set(len(self._queue))
        log.info("build %s queued: workspace %s key %s", build_id, spec.workspace, spec.cache.key or "-")
        self._schedule()
        if active.record.state == build_pb2.BUILD_STATE_QUEUED and not active.queued_reason:
            self._emit_queued(active)  # the pass above said nothing of it (it emits its reason when it does)
        return build_id

    def _check_queued(self, owner: str) -> None:
        """Refuse a caller's new build or placement while it has ``builds.max_queued_per_principal``
        waiting (only callers with a token are counted: without tokens there is no one to tell apart)."""
        limit = self._settings.max_queued_per_principal
        if not owner or not limit:
            return
        waiting = sum(1 for item in self._queue if _owner(item) == owner)
        if waiting >= limit:
            raise ResourceExhausted(
                f"you have {waiting} builds and placements waiting, the most one caller may "
                "(builds.max_queued_per_principal): wait for some to start, or cancel some"
            )

    def _request(self, build_id: str, spec: common_pb2.BuildSpec, enqueued_at: float) -> PlacementRequest:
        return convert.placement_request(build_id, spec, enqueued_at, self._settings.process_nodes)

    def _check_satisfiable(self, request: PlacementRequest) -> None:
        """UNAVAILABLE before any node registered; INVALID_ARGUMENT for a limit above the largest maximum of
        the live nodes that could run the build; FAILED_PRECONDITION when no one node admits it all."""
        live = self._registry.live_nodes()
        if not live:
            raise Unavailable("no build node has registered yet; start agents or retry shortly")
        nodes = [n.info for n in live]
        _check_maxima(request.constraints, nodes)
        if not any(request.constraints.admits(n) for n in nodes):
            zones = sorted({n.zone for n in nodes})
            executors = sorted({n.executor or "process" for n in nodes})
            hint = ""
            if request.constraints.sandbox and not any(n.sandboxed for n in nodes):
                hint = (
                    "; no node sandboxes builds: run agents with podman, or, for trusted code only, set "
                    "allow_unsandboxed on the build (stoker build --allow-unsandboxed) where the "
                    "coordinator's builds.process_nodes is when_asked"
                )
            raise FailedPrecondition(
                f"no registered node satisfies the constraints ({request.constraints.describe()}); "
                f"{len(nodes)} node(s) in zone(s) {', '.join(repr(z) for z in zones)}, executors "
                f"{', '.join(executors)}{hint}"
            )

    def get(self, build_id: str) -> build_pb2.Build:
        active = self._active.get(build_id)
        if active is not None:
            return active.record
        record = self._store.get_build(build_id)
        if record is None:
            raise NotFound(f"build {_short(build_id)} not found")
        return record

    def list_builds(
        self,
        wanted: Callable[[build_pb2.Build], bool],
        since: float,
        page_size: int,
        page_token: str,
        owner: str = "",
    ) -> tuple[list[build_pb2.Build], str]:
        """Builds for which ``wanted`` holds, newest first, one page: the running ones as they stand now.
        Only ``owner``'s builds are read when it is given (a ci caller's listing costs its own history, not
        every tenant's). Scans at most _LIST_SCAN rows per call, so a page may come back short with a token
        to go on."""
        after = _position(page_token)
        found: list[build_pb2.Build] = []
        scanned = 0
        while scanned < _LIST_SCAN:
            batch = min(_LIST_SCAN - scanned, 500)
            rows = self._store.scan(after, since, batch, owner)
            for created, stored in rows:
                after = (created, stored.id)
                active = self._active.get(stored.id)
                build = active.record if active is not None else stored
                if wanted(build):
                    found.append(build)
                    if len(found) == page_size:
                        return found, _token(after)
            scanned += len(rows)
            if len(rows) < batch:
                return found, ""  # the end of the history
        assert after is not None  # rows were read
        return found, _token(after)

    async def watch(self, build_id: str, after_seq: int = 0) -> AsyncIterator[build_pb2.BuildEvent]:
        active = self._active.get(build_id)
        if active is None:
            if self._store.get_build(build_id) is None:
                raise NotFound(f"build {_short(build_id)} not found")
            for event in self._store.events(build_id, after_seq):
                yield event
            return
        seq = after_seq
        while True:
            for event in active.events[self._index_after(active, seq) :]:
                yield event
                seq = event.seq
            if active.finished and (not active.events or active.events[-1].seq <= seq):
                return
            if not active.events or active.events[-1].seq <= seq:
                if self._closing:
                    raise _shutting_down(seq)
                waiter = asyncio.get_running_loop().create_future()
                active.waiters.append(waiter)
                if not await waiter:
                    raise _shutting_down(seq)

    def close_streams(self) -> int:
        """At shutdown: end every open build stream now, with UNAVAILABLE saying where to reattach from,
        rather than holding them through the grace period while their clients hear nothing (issue 17, item 7);
        placements still waiting for a slot fail the same way. Returns how many streams were ended."""
        self._closing = True
        ended = 0
        for active in self._active.values():
            waiters, active.waiters = active.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(False)
                    ended += 1
        for item in self._queue:
            if isinstance(item, PendingPlacement) and not item.future.done():
                item.future.set_exception(Unavailable("the coordinator is shutting down; ask again"))
                ended += 1
        return ended

    @staticmethod
    def _index_after(active: ActiveBuild, seq: int) -> int:
        events = active.events
        if not events or seq < events[0].seq:
            return 0
        return max(0, min(len(events), seq - events[0].seq + 1))

    def cancel(self, build_id: str, reason: str) -> build_pb2.Build:
        active = self._active.get(build_id)
        if active is None:
            return self.get(build_id)  # finished already (or NotFound)
        reason = reason or "cancelled by a client"
        if active.record.state == build_pb2.BUILD_STATE_QUEUED:
            self._remove_from_queue(active)
            self._finish(active, build_pb2.BUILD_STATE_CANCELLED, -1, reason)
        else:
            active.cancel_requested = True
            link = self._links.get(active.record.node)
            if link is not None:
                link.send(
                    agent_pb2.CoordinatorCommand(
                        cancel_build=agent_pb2.CancelBuildCommand(
                            build_id=build_id, attempt=active.record.attempt, reason=reason
                        )
                    )
                )
            else:
                # The node is unreachable: the build is over for its caller; the agent is told to
                # stop it when it reconnects (it then reports a build the coordinator does not expect).
                self._finish(active, build_pb2.BUILD_STATE_CANCELLED, -1, reason + " (node unreachable)")
        return active.record

    async def place(self, spec: common_pb2.BuildSpec, lease_s: float, owner: str = "") -> build_pb2.Placement:
        # The lease's id is the request's: the scheduler counts the placement as running under it until
        # it is released (or expires), as it counts a build under the build's id.
        # A placement-only lease runs nothing through the node's executor (the caller's runner does the
        # work), so builds.process_nodes does not apply; an image or cgroup limit in the spec still does.
        self._check_queued(owner)
        request = convert.placement_request("l-" + uuid.uuid4().hex[:16], spec, self._clock.now(), "always")
        self._check_satisfiable(request)
        pending = PendingPlacement(
            request=request,
            spec=spec,
            owner=owner,
            lease_s=lease_s or self._settings.placement_lease_s,
            future=asyncio.get_running_loop().create_future(),
        )
        self._queue.append(pending)
        self._metrics.queue_depth.set(len(self._queue))
        self._schedule()
        try:
            return await pending.future
        finally:
            # Cancelled (the caller went away: awaiting the future cancels it too) or failed: it must not
            # stay queued, or a slot would later be granted to nobody.
            if pending.future.cancelled() or not pending.future.done():
                self._remove_from_queue(pending)

    def lease_owner(self, lease_id: str) -> str | None:
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.owner

    def release(self, lease_id: str, reason: str = "released") -> bool:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        # What the runner's job did on the node, as its agent reported it, teaches the scheduler as a
        # build's end does (run and restore times by key and workspace).
        self._scheduler.finished(
            lease_id,
            key=lease.request.key if lease.request is not None else "",
            workspace=lease.spec.workspace,
            run_s=lease.timings.run_s,
            bytes_fetched=lease.cache.bytes_fetched,
            bytes_restored=lease.cache.bytes_restored,
            restore_s=lease.timings.restore_s,
        )
        node = self._registry.find(lease.node)
        if node is not None:
            node.holders.discard(lease_id)
        link = self._links.get(lease.node)
        if link is not None:
            link.send(
                agent_pb2.CoordinatorCommand(
                    drop_lease=agent_pb2.DropLeaseCommand(lease_id=lease_id, reason=reason)
                )
            )
        self._record_placement(lease, reason)
        self._schedule()
        return True

    def _record_placement(self, lease: Lease, reason: str) -> None:
        """Keep the ended lease in the build history (``stoker history export``, ``stoker plan``): what a
        placement-only job's node restored and saved, and when, as a build's record says it. Called after
        the lease's slot is free again: a state store that fails here loses the record, nothing else."""
        state = {
            "expired": build_pb2.BUILD_STATE_TIMED_OUT,
            "node lost": build_pb2.BUILD_STATE_ERROR,
        }.get(reason, build_pb2.BUILD_STATE_SUCCEEDED)
        try:
            self._store.put_placement(self._placement_record(lease, reason, state))
        except Unavailable as exc:
            log.warning("placement %s is not in the build history: %s", lease.lease_id, exc)

    def _placement_record(self, lease: Lease, reason: str, state: build_pb2.BuildState) -> build_pb2.Build:
        now = self._clock.now()
        timings = common_pb2.Timings()
        timings.CopyFrom(lease.timings)
        timings.queued_s = max(0.0, lease.granted - lease.created)
        timings.total_s = max(0.0, now - lease.created)
        return build_pb2.Build(
            id=lease.lease_id,
            spec=lease.spec,
            state=state,
            node=lease.node,
            attempt=1,
            created=convert.timestamp(lease.created),
            finished=convert.timestamp(now),
            exit_code=-1,
            message=f"placement-only: lease {reason}",
            timings=timings,
            cache=lease.cache,
            placement_reason=lease.reason,
            owner=lease.owner,
        )

    def lease_report(self, node_name: str, report: agent_pb2.LeaseReport) -> bool:
        """What a node's agent did for a runner under a lease: counted only for a lease granted to that node
        (False, and nothing learned, otherwise). A restore's entry and a saved entry corroborate the node's
        claims of them, as a build's do; the timings reach the scheduler when the lease ends."""
        lease = self._leases.get(report.lease_id)
        if lease is None or lease.node != node_name:
            log.warning(
                "node %s reported on lease %s, which it does not hold; ignored", node_name, report.lease_id
            )
            self._metrics.lease_reports.labels("refused").inc()
            return False
        figures = report.cache
        request = lease.request
        if (
            request is not None
            and figures.restored_key
            and not _lease_may_read(request, figures.restored_key)
        ):
            log.warning(
                "node %s reported restoring %s under lease %s, which may not read it; ignored",
                node_name,
                figures.restored_key,
                report.lease_id,
            )
            self._metrics.lease_reports.labels("refused").inc()
            return False
        if report.restored:
            lease.cache.CopyFrom(figures)
            lease.cache.saved = False
            lease.cache.bytes_uploaded = 0
            lease.timings.restore_s = report.timings.restore_s
            self._claims.vouch(
                node_name, figures.restored_key, figures.bytes_restored, figures.files_restored
            )
            self._metrics.lease_reports.labels("restored").inc()
            if figures.warmth:
                warmth = convert.WARMTH_FROM_PB[figures.warmth]
                self.hit_counts[warmth] += 1
                self.hit_bytes[warmth] += figures.bytes_restored
                self._metrics.cache_hits.labels(warmth.value).inc()
                self._metrics.restore_seconds.labels(warmth.value).observe(report.timings.restore_s)
                local = max(0, figures.bytes_restored - figures.bytes_fetched)
                self.bytes_local += local
                self.bytes_fetched += figures.bytes_fetched
                self._metrics.cache_bytes.labels("local").inc(local)
                self._metrics.cache_bytes.labels("fetched").inc(figures.bytes_fetched)
        if report.saved:
            lease.cache.saved = lease.cache.saved or figures.saved
            lease.cache.bytes_uploaded += figures.bytes_uploaded
            lease.timings.save_s = report.timings.save_s
            lease.timings.run_s = report.timings.run_s
            if figures.saved and lease.request is not None:
                self._claims.vouch(node_name, lease.request.key)  # the lease's key, in its own scope
            self._metrics.lease_reports.labels("saved").inc()
        log.info(
            "lease %s on %s: %s",
            report.lease_id,
            node_name,
            "restored" if report.restored else "saved" if figures.saved else "nothing saved",
        )
        return True

    def _grant_command(self, lease: Lease) -> agent_pb2.CoordinatorCommand:
        return agent_pb2.CoordinatorCommand(
            grant_lease=agent_pb2.GrantLeaseCommand(
                lease_id=lease.lease_id,
                secret_sha256=lease.secret_sha256,
                spec=lease.spec,
                principal=lease.owner,
                expires_in_s=max(0.0, lease.expires - self._clock.now()),
            )
        )

    # -- agent side ----------------------------------------------------------------------------
    def attach(self, link: AgentLink) -> None:
        old = self._links.get(link.node)
        if old is not None and old is not link:
            old.close()
        self._links[link.node] = link
        node = self._registry.get(link.node)
        # The node's agent may have restarted since its leases were granted: it learns them again.
        for lease in self._leases.values():
            if lease.node == link.node:
                link.send(self._grant_command(lease))
        # Builds this node ran before a coordinator restart or a reconnect still hold its slots
        # until its first heartbeat says whether they are still running.
        for active in self._active.values():
            if active.record.node == link.node and active.record.state == build_pb2.BUILD_STATE_RUNNING:
                node.holders.add(active.record.id)
                self._scheduler.started(active.request, link.node)
        self._scheduler.node_joined(node, self._registry.all())
        self._store.append_node_event(self._node_event(node, "joined"))
        self._schedule()

    def _node_event(self, node: NodeRecord, event: str) -> NodeEvent:
        info = node.info
        return NodeEvent(
            t=self._clock.now(),
            node=node.name,
            event=event,
            zone=info.zone,
            slots=info.slots,
            disk_bytes=info.disk_capacity_bytes,
        )

    def detach(self, link: AgentLink) -> None:
        if self._links.get(link.node) is link:
            del self._links[link.node]
        self._registry.detach(link.node, link.session_id)

    def heartbeat(self, node_name: str, session_id: str, hb: agent_pb2.Heartbeat) -> None:
        node = self._registry.find(node_name)
        if node is None or node.session_id != session_id:
            return
        node.disk_used_bytes = hb.disk_used_bytes
        node.disk_free_bytes = hb.disk_free_bytes
        node.evicted_bytes_total = hb.evicted_bytes_total
        node.draining = hb.draining
        node.set_images(convert.images(hb.images))
        reported = {(r.build_id, r.attempt) for r in hb.running}
        link = self._links.get(node_name)
        for build_id, attempt in reported:
            active = self._active.get(build_id)
            stale = (
                active is None
                or active.record.attempt != attempt
                or active.record.node != node_name
                or active.finished
            )
            if stale and link is not None:
                link.send(
                    agent_pb2.CoordinatorCommand(
                        cancel_build=agent_pb2.CancelBuildCommand(
                            build_id=build_id,
                            attempt=attempt,
                            reason="superseded: the coordinator no longer expects this attempt on this node",
                        )
                    )
                )
        if not node.reconciled:
            node.reconciled = True
            for active in list(self._active.values()):
                rec = active.record
                if (
                    rec.node == node_name
                    and rec.state == build_pb2.BUILD_STATE_RUNNING
                    and active.dispatch_session != session_id
                    and (rec.id, rec.attempt) not in reported
                ):
                    self._requeue(active, f"node {node_name} came back without attempt {rec.attempt}")
            self._schedule()

    def build_update(self, node_name: str, update: agent_pb2.BuildUpdate) -> None:
        """Record what the node's agent says of a build's attempt. Returns having stored it, or having
        dropped it as stale or repeated (the agent numbers its events: ``agent_seq``): either way the agent
        may be told the event is done with (AckBuildEvents)."""
        active = self._active.get(update.build_id)
        if (
            active is None
            or active.finished
            or active.record.attempt != update.attempt
            or active.record.node != node_name
        ):
            return  # a stale attempt, or a build that has already ended: nothing to record
        if update.agent_seq:
            if update.agent_seq <= active.agent_seq:
                return  # sent again after a reconnection: stored already
            active.agent_seq = update.agent_seq
        event = build_pb2.BuildEvent()
        event.CopyFrom(update.event)
        event.agent_seq = update.agent_seq
        kind = event.WhichOneof("kind")
        if kind == "finished":
            fin = event.finished
            if fin.cache.restored_key:
                self._claims.vouch(
                    node_name, fin.cache.restored_key, fin.cache.bytes_restored, fin.cache.files_restored
                )
            if fin.cache.saved:
                self._claims.vouch(node_name, active.request.key)  # the build's key, in its own scope
            self._finish(active, fin.state, fin.exit_code, fin.message, fin=fin, node=node_name)
            return
        if kind == "restored":
            active.record.cache.CopyFrom(event.restored.cache)
            figures = event.restored.cache
            self._claims.vouch(
                node_name, figures.restored_key, figures.bytes_restored, figures.files_restored
            )
        if kind == "log" and not self._keep_log(active, event.log):
            return
        self._record(active, event)

    def _keep_log(self, active: ActiveBuild, line: build_pb2.LogLine) -> bool:
        """Whether a log line fits under builds.max_log_bytes; else count it and keep it in the tail."""
        size = len(line.text.encode()) + 1
        if active.dropped is None and active.log_bytes + size <= self._settings.max_log_bytes:
            active.log_bytes += size
            return True
        dropped = active.dropped = active.dropped or DroppedOutput()
        dropped.lines += 1
        dropped.bytes += size
        dropped.tail.append(line)
        dropped.tail_bytes += size
        while dropped.tail_bytes > self._settings.max_log_tail_bytes and len(dropped.tail) > 1:
            dropped.tail_bytes -= len(dropped.tail.popleft().text.encode()) + 1
        return False

    def _flush_dropped(self, active: ActiveBuild) -> str:
        """Send the note and the tail of the output past the bound; returns the note for the message."""
        dropped, active.dropped = active.dropped, None
        if dropped is None:
            return ""
        shown = len(dropped.tail)
        note = (
            f"output past {self._settings.max_log_bytes} bytes (builds.max_log_bytes) not kept: "
            f"{dropped.lines - shown} lines ({dropped.bytes - dropped.tail_bytes} bytes) dropped"
        )
        stoker = build_pb2.LogLine.STREAM_STOKER
        self._record(
            active,
            build_pb2.BuildEvent(
                log=build_pb2.LogLine(stream=stoker, text=f"stoker: {note}; its last {shown} lines follow")
            ),
        )
        for line in dropped.tail:
            self._record(active, build_pb2.BuildEvent(log=line))
        return note

    def nodes_lost(self, nodes: list[NodeRecord]) -> None:
        for node in nodes:
            log.warning(
                "node %s lost: no stream for %.0f s; requeueing its builds",
                node.name,
                self._registry.lease_ttl_s,
            )
            self._metrics.nodes_lost.inc()
            self._scheduler.node_lost(node.name, self._inventory.entries(node.name), self._registry.all())
            self._store.append_node_event(self._node_event(node, "lost"))
            self._claims.drop_node(node.name)
            for holder in list(node.holders):
                active = self._active.get(holder)
                if active is not None and not active.finished:
                    self._requeue(
                        active, f"node {node.name} lost (no stream for {self._registry.lease_ttl_s:.0f} s)"
                    )
                lease = self._leases.pop(holder, None)
                if lease is not None:
                    self._record_placement(lease, "node lost")
            node.holders.clear()
        if nodes:
            self._schedule()

    def forget_node(self, name: str) -> None:
        """An operator's ``stoker node forget``: a lost node leaves the registry (its builds were requeued
        and its inventory dropped when it was lost)."""
        self._registry.forget(name)
        self._update_node_gauges()
        log.info("node %s forgotten", name)

    # -- periodic ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Expire node leases and placement leases; requeue builds whose node never came back."""
        now = self._clock.now()
        self.nodes_lost(self._registry.expire())
        expired = [lease for lease in self._leases.values() if lease.expires <= now]
        for lease in expired:
            log.info("placement lease %s on %s expired", lease.lease_id, lease.node)
            self.release(lease.lease_id, "expired")
        if now - self._recovered_at >= self._registry.lease_ttl_s:
            for active in list(self._active.values()):
                rec = active.record
                if rec.state == build_pb2.BUILD_STATE_RUNNING and self._registry.find(rec.node) is None:
                    self._requeue(active, f"node {rec.node} did not come back after a coordinator restart")
        self._update_node_gauges()
        self._schedule()
        self._prune_history(now)

    def _prune_history(self, now: float) -> None:
        """Delete finished builds older than builds.history_days, a batch at a time, at most once a minute."""
        days = self._settings.history_days
        if days <= 0 or now - self._pruned_at < 60.0:
            return
        self._pruned_at = now
        removed = self._store.prune(now - days * 86400.0)
        if removed:
            log.info(
                "deleted %d finished builds and placements older than %g days (builds.history_days)",
                removed,
                days,
            )
        self._store.prune_node_events(now - days * 86400.0)

    def _ready_nodes(self) -> list[NodeRecord]:
        return [n for n in self._registry.all() if n.state is NodeState.READY]

    def _update_node_gauges(self) -> None:
        counts: dict[str, int] = {"ready": 0, "disconnected": 0, "lost": 0}
        for node in self._registry.all():
            counts[node.state.value] += 1
        for state, n in counts.items():
            self._metrics.nodes.labels(state).set(n)

    # -- internals -----------------------------------------------------------------------------
    def _schedule(self) -> None:
        """Ask the scheduler what to place now, then dispatch, grant, prewarm and evict accordingly."""
        if not self._queue:
            # Nothing to place, but prewarms and evictions asked since (a node lost or joined, a build
            # finished) go out now rather than with the next placement.
            self._send_commands(self._scheduler.plan([], self._registry.all()))
            self._metrics.queue_depth.set(0)
            return
        by_id = {item.request.id: item for item in self._queue}
        offered, held_back = self._within_shares(self._queue)
        started = time.perf_counter()
        plan = self._scheduler.plan([item.request for item in offered], self._registry.all())
        self._metrics.decision_seconds.observe((time.perf_counter() - started) / len(by_id))
        placed: set[str] = set()
        now = self._clock.now()
        for request, decision in plan.assignments:
            item = by_id[request.id]
            assert decision.node is not None  # an assignment always names its node
            node = self._registry.get(decision.node)
            placed.add(request.id)
            if isinstance(item, ActiveBuild):
                self._dispatch(item, node, decision)
            elif not self._grant(item, node, decision):
                continue  # its caller went away: nothing starts
            self._scheduler.started(request, node.name)
            self._metrics.placements.labels(decision.warmth.value).inc()
            self._metrics.queue_wait_seconds.observe(max(0.0, now - request.enqueued_at))
        for request_id, reason in [*plan.waiting.items(), *held_back.items()]:
            item = by_id[request_id]
            if isinstance(item, ActiveBuild) and reason != item.queued_reason:
                self._emit_queued(item, reason)
        self._send_commands(plan)
        if placed:
            self._queue = [q for q in self._queue if q.request.id not in placed]
        self._metrics.queue_depth.set(len(self._queue))

    def _within_shares(
        self, queue: list[ActiveBuild | PendingPlacement]
    ) -> tuple[list[ActiveBuild | PendingPlacement], dict[str, str]]:
        """The queued items the scheduler may place now: each capped principal's first ones (by priority,
        then arrival) up to its free share of slots; the rest wait, with the reason why."""
        if not self._slot_caps:
            return queue, {}
        held = collections.Counter(
            a.record.owner
            for a in self._active.values()
            if a.record.owner in self._slot_caps and a.record.state == build_pb2.BUILD_STATE_RUNNING
        )
        held.update(lease.owner for lease in self._leases.values() if lease.owner in self._slot_caps)
        free = {owner: cap - held[owner] for owner, cap in self._slot_caps.items()}
        held_back: dict[str, str] = {}
        for item in sorted(queue, key=lambda q: (-q.request.priority, q.request.enqueued_at)):
            owner = _owner(item)
            if owner not in free:
                continue
            if free[owner] > 0:
                free[owner] -= 1
            else:
                cap = self._slot_caps[owner]
                held_back[item.request.id] = (
                    f"its token's share of the fleet is in use ({held[owner]} of {cap} slots)"
                )
        return [q for q in queue if q.request.id not in held_back], held_back

    def prewarm(
        self, key: str, restore_keys: tuple[str, ...], replicas: int, zone: str
    ) -> tuple[list[str], list[str]]:
        """An operator's prewarm: (nodes holding ``key`` already, nodes asked to fetch it now) so that
        ``replicas`` ready nodes (in ``zone``) hold it: the least busy first, then the most free disk."""
        ready = [n for n in self._ready_nodes() if not zone or n.info.zone == zone]
        if not ready:
            where = f" in zone {zone}" if zone else ""
            raise FailedPrecondition(f"no ready node{where} to prewarm on")
        holding = set(self._inventory.holders(key))
        holders = sorted(n.name for n in ready if n.name in holding)
        others = sorted(
            (n for n in ready if n.name not in holding),
            key=lambda n: (len(n.holders) / max(1, n.info.slots), -n.disk_free_bytes, n.name),
        )
        asked = []
        for node in others[: max(0, replicas - len(holders))]:
            link = self._links.get(node.name)
            command = agent_pb2.CoordinatorCommand(
                prewarm=agent_pb2.PrewarmCommand(key=key, restore_keys=list(restore_keys))
            )
            if link is not None and link.send(command, advisory=True):
                self._metrics.cache_commands.labels("prewarm").inc()
                self._claims.expect(node.name, (key,), restore_keys)  # its report of the key then counts
                asked.append(node.name)
        log.info("operator prewarm of %s: held by %s, asked %s", key, holders or "none", asked or "none")
        return holders, asked

    def _send_commands(self, plan) -> None:
        """The plan's prewarms and evictions, each on its node's stream (logged at debug level: the touches
        that keep costly keys' replicas alive come with most placements; counted by kind in metrics)."""
        for node_name, key, restore_keys in plan.prewarms:
            link = self._links.get(node_name)
            if link is not None:
                log.debug("prewarming %s on %s", key, node_name)
                sent = link.send(
                    agent_pb2.CoordinatorCommand(
                        prewarm=agent_pb2.PrewarmCommand(key=key, restore_keys=list(restore_keys))
                    ),
                    advisory=True,
                )
                self._metrics.cache_commands.labels("prewarm" if sent else "dropped").inc()
                if sent:
                    self._claims.expect(node_name, (key,), restore_keys)
        for node_name, key in plan.evictions:
            link = self._links.get(node_name)
            if link is not None:
                log.debug("evicting superseded %s on %s", key, node_name)
                sent = link.send(
                    agent_pb2.CoordinatorCommand(evict=agent_pb2.EvictCommand(key=key)), advisory=True
                )
                self._metrics.cache_commands.labels("evict" if sent else "dropped").inc()

    def _dispatch(self, active: ActiveBuild, node: NodeRecord, decision) -> None:
        link = self._links.get(node.name)
        rec = active.record
        now = self._clock.now()
        rec.state = build_pb2.BUILD_STATE_RUNNING
        rec.node = node.name
        rec.placement_reason = decision.reason
        node.holders.add(rec.id)
        active.dispatch_session = node.session_id
        active.placed_at = now
        active.queued_reason = ""
        self._record(
            active,
            build_pb2.BuildEvent(
                placed=build_pb2.Placed(
                    node=node.name,
                    zone=node.info.zone,
                    reason=decision.reason,
                    expected_warmth=convert.WARMTH_TO_PB[decision.warmth],
                )
            ),
        )
        log.info("build %s attempt %d → %s (%s)", rec.id, rec.attempt, node.name, decision.reason)
        if link is not None:
            link.send(
                agent_pb2.CoordinatorCommand(
                    run_build=agent_pb2.RunBuildCommand(
                        build_id=rec.id, attempt=rec.attempt, spec=rec.spec, principal=rec.owner
                    )
                )
            )

    def _grant(self, pending: PendingPlacement, node: NodeRecord, decision) -> bool:
        """Give ``pending`` a lease on ``node``; False when its caller is gone."""
        if pending.future.done():
            return False
        lease_id = pending.request.id
        expires = self._clock.now() + pending.lease_s
        # Only the caller gets the secret; the coordinator keeps its digest, and so does the node's agent,
        # which serves the lease's restore and save to whoever shows the secret on its local socket.
        secret = secrets.token_urlsafe(32)
        lease = self._leases[lease_id] = Lease(
            lease_id=lease_id,
            node=node.name,
            expires=expires,
            owner=pending.owner,
            request=pending.request,
            spec=pending.spec,
            secret_sha256=hashlib.sha256(secret.encode()).digest(),
            created=pending.request.enqueued_at,
            granted=self._clock.now(),
            reason=decision.reason,
        )
        node.holders.add(lease_id)
        link = self._links.get(node.name)
        if link is not None:
            link.send(self._grant_command(lease))
        # The caller's runner restores and saves on the node: what it reports of the lease's keys counts.
        request = pending.request
        self._claims.expect(
            node.name, (request.key, *request.also_exact), request.restore_keys, pending.lease_s
        )
        pending.future.set_result(
            build_pb2.Placement(
                lease_id=lease_id,
                node=node.name,
                zone=node.info.zone,
                reason=decision.reason,
                expected_warmth=convert.WARMTH_TO_PB[decision.warmth],
                expires=convert.timestamp(expires),
                node_labels=node.info.labels,
                lease_secret=secret,
            )
        )
        log.info("placement %s → %s for %.0f s (%s)", lease_id, node.name, pending.lease_s, decision.reason)
        return True

    def _requeue(self, active: ActiveBuild, reason: str) -> None:
        rec = active.record
        node = self._registry.find(rec.node)
        if node is not None:
            node.holders.discard(rec.id)
        self._scheduler.finished(rec.id)
        if active.cancel_requested:
            self._finish(active, build_pb2.BUILD_STATE_CANCELLED, -1, "cancelled; " + reason)
            return
        if rec.attempt >= self._settings.max_attempts:
            self._finish(
                active, build_pb2.BUILD_STATE_ERROR, -1, f"{reason}; gave up after {rec.attempt} attempts"
            )
            return
        self._metrics.builds_requeued.inc()
        self._record(
            active,
            build_pb2.BuildEvent(retrying=build_pb2.Retrying(reason=reason, next_attempt=rec.attempt + 1)),
        )
        rec.attempt += 1
        active.agent_seq = 0
        rec.state = build_pb2.BUILD_STATE_QUEUED
        rec.node = ""
        active.dispatch_session = ""
        active.request = self._request(rec.id, rec.spec, active.request.enqueued_at)
        self._store.put_build(rec)
        self._queue.append(active)
        log.warning("build %s requeued as attempt %d: %s", rec.id, rec.attempt, reason)

    def _emit_queued(self, active: ActiveBuild, reason: str = "") -> None:
        reason = reason or active.queued_reason or "waiting to be placed"
        active.queued_reason = reason
        position = next((i for i, q in enumerate(self._queue) if q is active), 0)
        self._record(active, build_pb2.BuildEvent(queued=build_pb2.Queued(position=position, reason=reason)))

    def _finish(
        self,
        active: ActiveBuild,
        state: build_pb2.BuildState,
        exit_code: int,
        message: str,
        *,
        fin: build_pb2.Finished | None = None,
        node: str = "",
    ) -> None:
        rec = active.record
        note = self._flush_dropped(active)
        if note:
            message = f"{message}; {note}" if message else note
        now = self._clock.now()
        rec.state = state
        rec.exit_code = exit_code
        rec.message = message
        rec.finished.CopyFrom(convert.timestamp(now))
        if fin is not None:
            rec.timings.CopyFrom(fin.timings)
            rec.cache.CopyFrom(fin.cache)
        created = convert.seconds(rec.created)
        rec.timings.total_s = now - created
        if not rec.timings.queued_s:
            rec.timings.queued_s = (active.placed_at - created) if active.placed_at else now - created
        holder = self._registry.find(rec.node)
        if holder is not None:
            holder.holders.discard(rec.id)
        self._scheduler.finished(
            rec.id,
            key=active.request.key,  # as nodes store it (in the build's cache scope), as the scheduler asks
            workspace=rec.spec.workspace,
            run_s=rec.timings.run_s if fin is not None else 0.0,
            bytes_fetched=rec.cache.bytes_fetched,
            bytes_restored=rec.cache.bytes_restored,
            restore_s=rec.timings.restore_s if fin is not None else 0.0,
        )
        event = build_pb2.BuildEvent(
            finished=build_pb2.Finished(
                state=state,
                exit_code=exit_code,
                message=message,
                timings=rec.timings,
                cache=rec.cache,
                node=node or rec.node,
            )
        )
        self._record(active, event)
        self._store.put_build(rec)
        self._active.pop(rec.id, None)
        self._remove_from_queue(active)
        self._metrics.builds_finished.labels(_EXPECTED_TO_STATE.get(state, "error")).inc()
        if fin is not None and rec.cache.warmth:
            warmth = convert.WARMTH_FROM_PB[rec.cache.warmth]
            self.hit_counts[warmth] += 1
            self.hit_bytes[warmth] += rec.cache.bytes_restored
            self._metrics.cache_hits.labels(warmth.value).inc()
            ready_s = rec.timings.queued_s + rec.timings.pull_s + rec.timings.restore_s
            self._metrics.time_to_ready_seconds.labels(warmth.value).observe(ready_s)
            self._metrics.restore_seconds.labels(warmth.value).observe(rec.timings.restore_s)
            self._metrics.run_seconds.labels(warmth.value).observe(rec.timings.run_s)
            local = max(0, rec.cache.bytes_restored - rec.cache.bytes_fetched)
            self.bytes_local += local
            self.bytes_fetched += rec.cache.bytes_fetched
            self._metrics.cache_bytes.labels("local").inc(local)
            self._metrics.cache_bytes.labels("fetched").inc(rec.cache.bytes_fetched)
        log.info(
            "build %s finished: %s (exit %d) %s",
            rec.id,
            _EXPECTED_TO_STATE.get(state, state),
            exit_code,
            message,
        )
        self._schedule()

    def _record(self, active: ActiveBuild, event: build_pb2.BuildEvent) -> None:
        """Number the event, write it to the store, then wake the build's watchers."""
        rec = active.record
        rec.last_seq += 1
        event.build_id = rec.id
        event.seq = rec.last_seq
        event.attempt = rec.attempt
        if not event.HasField("time"):
            event.time.CopyFrom(convert.timestamp(self._clock.now()))
        self._store.append_event(event)
        if event.WhichOneof("kind") in ("placed", "restored", "retrying", "queued"):
            self._store.put_build(rec)
        active.events.append(event)
        waiters, active.waiters = active.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    def _remove_from_queue(self, item) -> None:
        self._queue = [q for q in self._queue if q is not item]
        self._metrics.queue_depth.set(len(self._queue))

    # -- introspection -------------------------------------------------------------------------
    def queue_length(self) -> int:
        return len(self._queue)

    def links(self) -> dict[str, AgentLink]:
        return self._links


_LIST_SCAN = 5000
"""The most history rows one ListBuilds call reads, whatever its filters match."""


def _token(position: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps([position[0], position[1]]).encode()).decode()


def _position(page_token: str) -> tuple[float, str] | None:
    if not page_token:
        return None
    try:
        created, build_id = json.loads(base64.urlsafe_b64decode(page_token.encode()))
        return float(created), str(build_id)
    except (ValueError, TypeError):
        raise InvalidArgument(
            "page_token: not one this coordinator gave (pass next_page_token as it came)"
        ) from None


def _lease_may_read(request: PlacementRequest, key: str) -> bool:
    """Whether a lease's restore may have brought ``key``: its own key, its key in a scope it reads, or an
    entry under one of its restore prefixes (in those scopes)."""
    return key in (request.key, *request.also_exact) or any(key.startswith(p) for p in request.restore_keys)


def _shutting_down(seq: int) -> Unavailable:
    return Unavailable(
        f"the coordinator is shutting down; reattach with WatchBuild after_seq={seq} (the build goes on)"
    )


def _owner(item: ActiveBuild | PendingPlacement) -> str:
    return item.record.owner if isinstance(item, ActiveBuild) else item.owner


def _check_maxima(constraints: Constraints, nodes: list[NodeInfo]) -> None:
    """Raise InvalidArgument naming the first limit above what every node that could run the build allows
    (a node with no maximum of a kind allows any value of it). Nodes the build cannot use anyway (an
    unsandboxed one for a build that needs a sandbox) do not count."""
    asked = constraints.limits
    capable = [n for n in nodes if n.sandboxed or not constraints.sandbox]
    if asked == NO_LIMITS or not capable:
        return
    for name in RESOURCE_FIELDS:
        value, maxima = getattr(asked, name), [getattr(n.maxima, name) for n in capable]
        if value and all(most and value > most for most in maxima):
            raise InvalidArgument(
                f"spec.limits.{name}: {number(value)} is more than any registered node allows "
                f"(the largest maximum is {number(max(maxima))})"
            )


def _short(text: str, limit: int = 80) -> str:
    """A caller's value fit for an error message (a 100 KB id must not come back whole)."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _scoped_request_id(owner: str, request_id: str) -> str:
    """The key a request_id is stored under: the principal's name, then the id (a NUL between them, which
    neither may hold), so that one principal can neither find nor pre-claim another's ids."""
    return f"{owner}\x00{request_id}" if request_id else ""


def _differing_fields(a: common_pb2.BuildSpec, b: common_pb2.BuildSpec) -> list[str]:
    """The spec's top-level fields whose values differ (their names only: the first spec may hold env)."""
    names = [f.name for f in common_pb2.BuildSpec.DESCRIPTOR.fields]
    return [f"spec.{n}" for n in names if getattr(a, n) != getattr(b, n)] or ["spec"]


def _with_timeout(spec: common_pb2.BuildSpec, timeout_s: float) -> common_pb2.BuildSpec:
    out = common_pb2.BuildSpec()
    out.CopyFrom(spec)
    out.timeout_s = timeout_s
    return out
