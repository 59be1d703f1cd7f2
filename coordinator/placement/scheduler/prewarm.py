"""Prewarming: asking nodes to fetch entries ahead of need — a hot key onto its next rendezvous node, a costly
key where it keeps a free holder — each (node, key) at most once per ``prewarm_cooldown_s``."""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Sequence

from stoker.coordinator.core.clock import Clock
from stoker.coordinator.placement.domain import BYTES, SKETCH, PlacementRequest
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRecord
from stoker.coordinator.placement.scheduler.demand import Demand
from stoker.coordinator.placement.scheduler.estimates import Estimator, fetch_after
from stoker.coordinator.placement.scheduler.fleet import FleetView
from stoker.coordinator.placement.scheduler.recent import trim
from stoker.coordinator.placement.scheduler.rendezvous import Rendezvous, h64, mix
from stoker.coordinator.placement.scheduler.settings import SchedulerSettings

Prewarm = tuple[str, str, tuple[str, ...]]
"""(node, key, restore prefixes) to fetch ahead of need."""


class Prewarmer:
    """The prewarms asked since the last plan, and what was asked when (for the cooldown, and for the costly
    keys' replicas under way)."""

    def __init__(
        self,
        inventory: InventoryIndex,
        clock: Clock,
        settings: SchedulerSettings,
        estimator: Estimator,
        rendezvous: Rendezvous,
        demand: Demand,
    ) -> None:
        self._inventory = inventory
        self._clock = clock
        self._s = settings
        self._estimator = estimator
        self._rendezvous = rendezvous
        self._demand = demand
        self.pending: list[Prewarm] = []
        """Asked and not yet handed out by ``drain``."""
        self._asked: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        """(node, key) → when a prewarm was last asked (kept for ``prewarm_cooldown_s``)."""
        self.replicating: dict[str, dict[str, float]] = {}
        """key → node → when a prewarm to keep a free holder was asked (until the node reports it)."""

    def drain(self) -> list[Prewarm]:
        pending, self.pending = self.pending, []
        return pending

    def queue(self, node: str, key: str, restore_keys: tuple[str, ...]) -> None:
        """Ask ``node`` to prewarm ``key``, unless it was asked within the cooldown."""
        now = self._clock.now()
        cooldown = self._s.prewarm_cooldown_s
        last = self._asked.get((node, key))
        if last is not None and now - last < cooldown:
            return
        self._asked.pop((node, key), None)  # re-inserted at the end: the map stays in time order
        self._asked[(node, key)] = now
        trim(self._asked, lambda at: now - at >= cooldown, self._s.max_tracked_keys)
        self.pending.append((node, key, restore_keys))

    def next_nodes(
        self,
        key: str,
        restore_keys: tuple[str, ...],
        live: Sequence[NodeRecord],
        reason_node: str = "",
        count: int = 0,
    ) -> None:
        """Prewarm ``key`` onto the next nodes in its rendezvous order that do not hold it."""
        holders = self._inventory.holders(key)
        count = count or self._s.prewarm_replicas
        by_name = {n.name: n for n in live}
        targets = (
            name
            for name in self._rendezvous.order(key, by_name)
            if name not in holders and name != reason_node
        )
        for name in itertools.islice(targets, count):
            self.queue(name, key, restore_keys)

    def keep_free_holder(self, request: PlacementRequest, view: FleetView) -> None:
        """After placing a build of a costly key: touch its replicas, and prewarm it where it is needed so
        that it keeps a holder below the load bound (two while its builds overlap often)."""
        s = self._s
        key = request.key
        holders = self._inventory.holders(key)
        if not holders:
            return
        target = next(iter(holders.values()))
        restore_s = self._estimator.restore_s(target[BYTES], 0)
        if restore_s < s.costly_restore_s:
            return
        live, now = view.live, view.now
        key_hash = h64(key)

        def rank(name: str) -> int:
            return mix(key_hash ^ self._rendezvous.node_h(name))

        # Keep the replicas alive: prewarming an entry a node holds touches it in the node's LRU order.
        for name in heapq.nlargest(s.touch_replicas, (n for n in holders if n in live), key=rank):
            self.queue(name, key, request.restore_keys)
        busy = self._demand.arrival_rate(request.workspace, now) * self._estimator.build_s(request)
        want = s.spare_holders if busy >= s.spare_busy else 1
        free = 0
        for name in holders:
            node = live.get(name)
            if node is not None and view.load[name] < view.capacity(node):
                free += 1
                if free >= want:
                    return
        asked = self.replicating.setdefault(key, {})
        for name, at in list(asked.items()):
            if name in holders or now - at > 2 * restore_s + 30:
                del asked[name]
        need = want - free - len(asked)
        if need <= 0:
            return
        # Where it costs least to fetch: a node holding an older entry of the workspace fetches only the
        # difference; else the next nodes in the key's rendezvous order.
        options: dict[str, float] = {}
        for prefix in request.restore_keys:
            for older in self._inventory.newest_keys_under(prefix, count=4):
                if older == key:
                    continue
                for name, entry in self._inventory.holders(older).items():
                    if name in holders or name in asked or name not in live:
                        continue
                    fetch = fetch_after(target[BYTES], target[SKETCH], entry[SKETCH], s.default_similarity)
                    options[name] = min(options.get(name, fetch), fetch)
        for name in self._rendezvous.order(key, live):
            if name not in holders and name not in asked:
                options.setdefault(name, float(target[BYTES]))
                break
        for name in sorted(options, key=lambda n: (options[n], -rank(n)))[:need]:
            asked[name] = now
            self.queue(name, key, request.restore_keys)
        if not asked:
            del self.replicating[key]

    def tracked(self) -> dict[str, int]:
        return {"prewarms": len(self._asked), "replicating": len(self.replicating)}
