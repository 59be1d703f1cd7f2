"""What one pass of the scheduler sees of the fleet: the ready nodes, the builds each runs, the load bound,
and when each node's slots are expected to be free (reservations made in the pass included)."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from stoker.coordinator.placement.registry import NodeRecord
from stoker.coordinator.placement.scheduler.costly import Guard
from stoker.coordinator.placement.scheduler.estimates import Estimator
from stoker.coordinator.placement.scheduler.heat import LoadHistory
from stoker.coordinator.placement.scheduler.settings import SchedulerSettings


@dataclass
class RunningBuild:
    """A build the scheduler placed and has not heard the end of."""

    node: str
    tenant: str
    key: str
    ends: float
    """When it is expected to end (its start plus its estimated build time)."""
    restore_keys: tuple[str, ...] = ()


@dataclass
class FleetView:
    """The fleet during one pass: what every stage of a decision reads, and what placing a request changes."""

    live: dict[str, NodeRecord]
    """The ready nodes that are not draining, by name."""
    load: dict[str, int]
    """node → builds it runs, counting those placed in this pass."""
    bound: int
    """The most builds one node may run at once (⌈c·(L+1)/N⌉), as of the request being placed."""
    now: float
    settings: SchedulerSettings
    estimator: Estimator
    running: Mapping[str, RunningBuild]
    history: LoadHistory
    guard: Guard = field(default_factory=Guard)
    free_at: dict[str, list[float]] = field(default_factory=dict)
    """node → when each of its usable slots is expected to be free, as a heap: only for the nodes a
    decision had to wait for (whose slots were all taken) or that a waiting request reserved."""

    def capacity(self, node: NodeRecord) -> int:
        """The builds ``node`` may run now: its slots, or fewer under the load bound."""
        return min(node.info.slots, self.bound)

    def is_free(self, name: str) -> bool:
        """Whether the node has a slot under the bound that no waiting request reserved."""
        return self.load[name] < self.capacity(self.live[name]) and name not in self.free_at

    def fresh(self, node: NodeRecord) -> bool:
        """Whether the node's inventory reports still count as warmth (heard from within ``warmth_ttl_s``)."""
        return self.now - node.last_seen <= self.settings.warmth_ttl_s

    def slots_free_at(self, node: NodeRecord) -> list[float]:
        """When each of the node's usable slots is expected to be free, as a heap; reservations made in this
        pass push entries later."""
        slots = self.free_at.get(node.name)
        if slots is None:
            now, build_s = self.now, self.estimator.fleet_build_s
            ends = []
            for holder in node.holders:
                running = self.running.get(holder)
                if running is None:
                    ends.append(now + 0.5 * build_s)
                else:
                    # An overrunning build is expected to need a little longer, not to be done now.
                    ends.append(max(running.ends, now + 0.1 * build_s))
            ends.sort()
            capacity = max(1, self.capacity(node))
            if len(ends) >= capacity:
                # With more running than the capacity, a slot frees only when enough of them end.
                slots = ends[len(ends) - capacity :]
            else:
                slots = [now] * (capacity - len(ends)) + ends
            heapq.heapify(slots)
            self.free_at[node.name] = slots
        return slots

    def reserve(self, node: NodeRecord, build_s: float) -> None:
        """A request waits for ``node``: it takes the node's next free slot for ``build_s``, so the next
        request that would wait there sees a longer wait."""
        slots = self.slots_free_at(node)
        first = heapq.heappop(slots)
        heapq.heappush(slots, max(first, self.now) + build_s)

    def place(self, name: str) -> None:
        """A build was placed on ``name``: one more running there; at its bound it is no free holder."""
        self.load[name] += 1
        if self.load[name] >= self.capacity(self.live[name]):
            self.guard.taken(name)
