"""``ExportHistory``: the finished builds, the ended placement-only jobs (leases) and the nodes' joins and
losses, for capacity planning (``stoker history``, ``stoker plan``, ``stoker report dead-time``).

Only what planning needs leaves: keys, sizes, the phases' times and marks, the outcome. No command,
environment, input files or output. Operators only (``rpc/auth.py``): a build's keys and timings are its
tenant's business, and a ci token is refused before this servicer runs.
"""

from __future__ import annotations

import asyncio
import time

from stoker.coordinator.core.errors import InvalidArgument
from stoker.coordinator.core.state import NodeEvent, StateStore
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.placement.scheduler import Scheduler
from stoker.coordinator.rpc import convert
from stoker.coordinator.rpc.status import unary
from stoker.v1 import build_pb2, history_pb2, history_pb2_grpc

_OUTPUT = (build_pb2.LogLine.STREAM_STDOUT, build_pb2.LogLine.STREAM_STDERR)


class HistoryServicer(history_pb2_grpc.HistoryServicer):
    def __init__(self, store: StateStore, registry: NodeRegistry, scheduler: Scheduler) -> None:
        self._store = store
        self._registry = registry
        self._scheduler = scheduler

    @unary
    async def ExportHistory(self, request: history_pb2.ExportHistoryRequest, context):
        if request.since_s < 0:
            raise InvalidArgument(f"since_s: must not be negative, got {request.since_s}")
        # The registry and the scheduler are read here, on the event loop that changes them; reading every
        # build's events is many rows: off the loop (the store takes its own lock).
        zones = {r.name: r.info.zone for r in self._registry.all()}
        estimates = self._scheduler.estimator
        rates = history_pb2.SchedulerRates(
            fetch_bps=estimates.fetch_bps,
            extract_bps=estimates.extract_bps,
            materialize_bps=self._scheduler.settings.materialize_bps,
            pull_bps=estimates.pull_bps,
        )
        return await asyncio.to_thread(self._export, request.since_s, request.workspace, zones, rates)

    def _export(
        self, since_s: float, workspace: str, live_zones: dict[str, str], rates: history_pb2.SchedulerRates
    ) -> history_pb2.ExportHistoryResponse:
        now = time.time()
        after = now - since_s if since_s else 0.0
        builds = self._store.finished_since(after)
        placements = self._store.placements_since(after)
        node_events = self._store.node_events()
        zones = {e.node: e.zone for e in node_events} | live_zones
        out = history_pb2.ExportHistoryResponse(now=convert.timestamp(now), scheduler=rates)
        exported = [
            self._history_build(b, zones) for b in builds if not workspace or b.spec.workspace == workspace
        ]
        exported += [
            _history_placement(p, zones) for p in placements if not workspace or p.spec.workspace == workspace
        ]
        exported.sort(key=lambda b: b.created.ToNanoseconds())
        out.builds.extend(exported)
        out.node_events.extend(node_event_to_pb(e) for e in node_events)
        return out

    def _history_build(self, build: build_pb2.Build, zones: dict[str, str]) -> history_pb2.HistoryBuild:
        pb = _history_record(build, zones)
        pb.placed_after_s, pb.started_after_s, pb.first_line_after_s = _marks(
            build, self._store.events(build.id)
        )
        return pb


def _history_record(build: build_pb2.Build, zones: dict[str, str]) -> history_pb2.HistoryBuild:
    spec = build.spec
    scope = spec.cache.scope
    return history_pb2.HistoryBuild(
        id=build.id,
        workspace=spec.workspace,
        tenant=spec.tenant or spec.workspace,
        priority=spec.priority,
        image=spec.image,
        key=scope + spec.cache.key if spec.cache.key else "",
        restore_keys=[scope + p for p in spec.cache.restore_keys],
        created=build.created,
        state=build.state,
        node=build.node,
        attempt=build.attempt,
        timings=build.timings,
        cache=build.cache,
        zone=zones.get(build.node, ""),
    )


def _history_placement(placement: build_pb2.Build, zones: dict[str, str]) -> history_pb2.HistoryBuild:
    """A placement-only job: granted after its queue wait; its runner's command is not seen."""
    pb = _history_record(placement, zones)
    pb.placement_only = True
    pb.placed_after_s = placement.timings.queued_s
    pb.started_after_s = pb.first_line_after_s = -1.0
    return pb


def _marks(build: build_pb2.Build, events: list[build_pb2.BuildEvent]) -> tuple[float, float, float]:
    """Seconds after submission at which the last attempt was placed, started, printed its first line."""
    created = build.created.ToNanoseconds() / 1e9
    placed = started = first_line = -1.0
    for event in events:
        if event.attempt != build.attempt:
            continue
        at = event.time.ToNanoseconds() / 1e9 - created
        kind = event.WhichOneof("kind")
        if kind == "placed":
            placed = at
        elif kind == "started" and started < 0:
            started = at
        elif kind == "log" and first_line < 0 and started >= 0 and event.log.stream in _OUTPUT:
            first_line = at
    return placed, started, first_line


def node_event_to_pb(e: NodeEvent) -> history_pb2.HistoryNodeEvent:
    return history_pb2.HistoryNodeEvent(
        time=convert.timestamp(e.t),
        node=e.node,
        event=e.event,
        zone=e.zone,
        slots=e.slots,
        disk_bytes=e.disk_bytes,
    )
