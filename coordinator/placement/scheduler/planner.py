"""The ``Scheduler``: what happened (builds started and finished, nodes joined and lost) and ``plan``, one
pass over the waiting requests that places each through the stages of ``stages.decide``."""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from stoker.coordinator.core.clock import Clock
from stoker.coordinator.placement.domain import (
    BYTES,
    CREATED,
    KEY,
    Decision,
    Entry,
    NodeState,
    PlacementRequest,
)
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRecord
from stoker.coordinator.placement.scheduler.costly import guard_costly_keys
from stoker.coordinator.placement.scheduler.demand import Demand
from stoker.coordinator.placement.scheduler.estimates import Estimator
from stoker.coordinator.placement.scheduler.fairness import TenantShares, fair_order
from stoker.coordinator.placement.scheduler.fleet import FleetView, RunningBuild
from stoker.coordinator.placement.scheduler.heat import LoadHistory
from stoker.coordinator.placement.scheduler.prewarm import Prewarm, Prewarmer
from stoker.coordinator.placement.scheduler.rendezvous import Rendezvous
from stoker.coordinator.placement.scheduler.settings import SchedulerSettings
from stoker.coordinator.placement.scheduler.stages import admit, decide


@dataclass
class Plan:
    assignments: list[tuple[PlacementRequest, Decision]] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    """request id → why it waits."""
    prewarms: list[Prewarm] = field(default_factory=list)
    """(node, key, restore prefixes) to fetch ahead of need."""
    evictions: list[tuple[str, str]] = field(default_factory=list)
    """(node, key): entries a node holds a newer entry of (under the same restore prefix) for."""


class Scheduler:
    def __init__(
        self,
        inventory: InventoryIndex,
        clock: Clock,
        settings: SchedulerSettings | None = None,
        estimator: Estimator | None = None,
    ) -> None:
        self._inventory = inventory
        self._clock = clock
        self.settings = settings or SchedulerSettings()
        self.estimator = estimator or Estimator(self.settings)
        self._running: dict[str, RunningBuild] = {}
        self._tenant_running: collections.Counter[str] = collections.Counter()
        self._rendezvous = Rendezvous(self.settings.two_level_from)
        self.demand = Demand(self.settings, clock)
        self.prewarms = Prewarmer(
            inventory, clock, self.settings, self.estimator, self._rendezvous, self.demand
        )
        self._pending_evictions: list[tuple[str, str]] = []
        self._history = LoadHistory()

    # -- what happened -------------------------------------------------------------------------
    def started(self, request: PlacementRequest, node: str) -> None:
        now = self._clock.now()
        previous = self._running.get(request.id)
        if previous is not None:
            self._tenant_running[previous.tenant] -= 1
            self._history.change(previous.node, -1, now)
        self._history.change(node, +1, now)
        self._running[request.id] = RunningBuild(
            node, request.tenant, request.key, now + self.estimator.build_s(request), request.restore_keys
        )
        self._tenant_running[request.tenant] += 1
        self.demand.started(request, now)
        if request.key and self._restore_cost(request.key) >= self.settings.costly_restore_s:
            for dropped in self.demand.costly_used(request.key, request.workspace):
                self.prewarms.replicating.pop(dropped, None)

    def finished(
        self,
        request_id: str,
        *,
        key: str = "",
        workspace: str = "",
        run_s: float = 0.0,
        bytes_fetched: int = 0,
        bytes_restored: int = 0,
        restore_s: float = 0.0,
    ) -> None:
        running = self._running.pop(request_id, None)
        if running is not None:
            self._history.change(running.node, -1, self._clock.now())
            self._tenant_running[running.tenant] -= 1
            if self._tenant_running[running.tenant] <= 0:
                del self._tenant_running[running.tenant]
            if run_s and running.key and self.settings.evict_superseded:
                self._evict_superseded(running.node, running.key, running.restore_keys)
        if run_s:
            self.estimator.observe_build(key, workspace, run_s)
        if restore_s:
            self.estimator.observe_restore(bytes_fetched, bytes_restored, restore_s)

    def node_lost(self, node: str, held: Iterable[Entry], nodes: Sequence[NodeRecord]) -> None:
        """Replicate the hot keys the lost node held onto their next rendezvous node."""
        for running_id in [rid for rid, r in self._running.items() if r.node == node]:
            self.finished(running_id)
        live = [n for n in nodes if n.schedulable and n.name != node]
        for entry in held:
            if self.demand.is_hot(entry[KEY]):
                self.prewarms.next_nodes(entry[KEY], (), live, reason_node=node)

    def node_joined(self, node: NodeRecord, nodes: Sequence[NodeRecord]) -> None:
        """Prewarm hot keys onto a new node that ranks among their first rendezvous nodes."""
        live = {n.name: n for n in nodes if n.schedulable}
        for key in self.demand.hot_keys():
            holders = self._inventory.holders(key)
            if node.name in holders:
                continue
            top = itertools.islice(self.order(key, live), len(holders) + self.settings.prewarm_replicas)
            if node.name in top:
                self.prewarms.queue(node.name, key, ())

    # -- deciding ------------------------------------------------------------------------------
    def choose(self, request: PlacementRequest, nodes: Sequence[NodeRecord]) -> Decision:
        """The decision for one request, without changing any state (for explanations and benchmarks)."""
        ready = NodeState.READY
        live = {n.info.name: n for n in nodes if n.state is ready and not n.draining}
        load = {name: len(n.holders) for name, n in live.items()}
        view = self._view(live, load, sum(load.values()), self._clock.now())
        return decide(request, view, self._inventory, self._rendezvous)

    def plan(self, queue: Sequence[PlacementRequest], nodes: Sequence[NodeRecord]) -> Plan:
        """Which of the waiting requests go where now, which keep waiting (and why), and which entries to
        prewarm on which nodes and to evict from them."""
        plan = Plan(prewarms=self.prewarms.drain(), evictions=self._pending_evictions)
        self._pending_evictions = []
        if not queue:
            return plan
        # One pass over the nodes builds the whole view (this runs for every placement of a large fleet).
        ready = NodeState.READY
        live: dict[str, NodeRecord] = {}
        load: dict[str, int] = {}
        total_slots = running_total = 0
        for n in nodes:
            if n.state is ready and not n.draining:
                name, info, held = n.info.name, n.info, len(n.holders)
                live[name] = n
                load[name] = held
                total_slots += info.slots
                running_total += held
        now = self._clock.now()
        self._history.seen(live, now)
        if not live:
            for r in queue:
                plan.waiting[r.id] = "waiting for a node: none is ready"
            return plan
        view = self._view(live, load, running_total, now)
        tenants = TenantShares(self._tenant_running, queue, total_slots, self.settings.tenant_share)
        waiting_on: collections.Counter[str] = collections.Counter()
        for request in fair_order(queue, tenants.running, now, self.settings.aging_s):
            over = tenants.over_share(request)
            if over is not None:
                plan.waiting[request.id] = over
                continue
            view.bound = self._bound_for(request, live, load, running_total)
            decision = decide(request, view, self._inventory, self._rendezvous)
            if decision.node is None:
                plan.waiting[request.id] = decision.reason
                continue
            node = live[decision.node]
            if load[node.name] < view.capacity(node):
                plan.assignments.append((request, decision))
                tenants.placed(request)
                view.place(node.name)
                running_total += 1
            else:
                # Worth waiting for: reserve the node's next free slot.
                view.reserve(node, self.estimator.build_s(request))
                plan.waiting[request.id] = decision.reason
                if request.key:
                    waiting_on[request.key] += 1
        self._after_pass(plan, queue, waiting_on, view, running_total)
        return plan

    def _after_pass(
        self,
        plan: Plan,
        queue: Sequence[PlacementRequest],
        waiting_on: Mapping[str, int],
        view: FleetView,
        running_total: int,
    ) -> None:
        """Prewarm the keys that requests wait for onto their next nodes, keep free holders of the costly keys
        just placed, and hand the prewarms asked to the plan."""
        live = list(view.live.values())
        for key in waiting_on:
            request = next(r for r in queue if r.key == key)
            self.prewarms.next_nodes(key, request.restore_keys, live)
        view.bound = self._bound(running_total, len(live))
        kept: set[str] = set()
        for request, _ in plan.assignments:
            if request.key and request.key not in kept:
                kept.add(request.key)
                self.prewarms.keep_free_holder(request, view)
        plan.prewarms.extend(self.prewarms.drain())

    # -- internals -----------------------------------------------------------------------------
    def _view(
        self, live: dict[str, NodeRecord], load: dict[str, int], running_total: int, now: float
    ) -> FleetView:
        """The fleet as a pass starts: the bound for ``running_total`` builds, and the costly keys' guard."""
        view = FleetView(
            live,
            load,
            self._bound(running_total, len(live)),
            now,
            self.settings,
            self.estimator,
            self._running,
            self._history,
        )
        view.guard = guard_costly_keys(view, self.demand.costly, self._inventory, self.demand.arrival_rate)
        return view

    def _bound_for(
        self, request: PlacementRequest, live: dict[str, NodeRecord], load: dict[str, int], running_total: int
    ) -> int:
        """The load bound for ``request``: over the whole fleet, or over only the nodes it may use when its
        constraints restrict it (else a build that only one node admits waits while that node has free
        slots, because the rest of the fleet is idle)."""
        if not request.constraints.restricts():
            return self._bound(running_total, len(live))
        admitted = admit(request.constraints, live)
        return self._bound(sum(load[n] for n in admitted), len(admitted))

    def _bound(self, running: int, nodes: int) -> int:
        return max(1, math.ceil(self.settings.load_factor * (running + 1) / max(1, nodes)))

    def order(self, key: str, live: Mapping[str, NodeRecord]) -> Iterator[str]:
        """The nodes of ``live`` in ``key``'s rendezvous order (lazily): where its spill-over goes."""
        return self._rendezvous.order(key, live)

    def _restore_cost(self, key: str) -> float:
        """Seconds to fetch and extract ``key`` onto a node that holds nothing of it (0 when unknown)."""
        holders = self._inventory.holders(key)
        if not holders:
            return 0.0
        return self.estimator.restore_s(next(iter(holders.values()))[BYTES], 0)

    def _evict_superseded(self, node: str, key: str, restore_keys: tuple[str, ...]) -> None:
        """``node`` now holds ``key``: its older entries under the same restore prefixes are superseded
        (a restore from the prefix takes the newest, and the workspace's builds have moved on to ``key``),
        so ask the node to evict them rather than let them push other workspaces' entries out of its LRU."""
        entry = self._inventory.holders(key).get(node)
        if entry is None:
            return
        for prefix in restore_keys:
            if not key.startswith(prefix):
                continue
            for older in self._inventory.newest_keys_under(prefix, count=self.settings.max_prefix_keys):
                held = self._inventory.holders(older).get(node)
                if older != key and held is not None and held[CREATED] < entry[CREATED]:
                    self._pending_evictions.append((node, older))

    def tracked(self) -> dict[str, int]:
        """How much the scheduler remembers, by kind (exported as a metric; each is bounded)."""
        return {
            "running": len(self._running),
            **self.demand.tracked(),
            **self.prewarms.tracked(),
            "build_times": self.estimator.tracked(),
        }
