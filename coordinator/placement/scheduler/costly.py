"""Costly keys — those whose cold restore is long — keep a free holder: what taking a node costs them (the
``Guard`` of one pass), built from the recently used costly keys and their holders."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from stoker.coordinator.placement.domain import BYTES, PlacementRequest
from stoker.coordinator.placement.inventory import InventoryIndex

if TYPE_CHECKING:  # fleet.py imports this module: the view is only a type here
    from stoker.coordinator.placement.scheduler.fleet import FleetView


class Guard:
    """The free holders of costly keys in demand, for one pass: taking one of a key's last free holders
    for another build makes the key's next build more likely to start cold."""

    _SECOND = 0.25
    """Weight of taking one of the last two free holders (against 1 for the last one)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[float, float, list[str]]] = {}
        """key → (arrival rate, seconds a warm start saves, its free holders)."""
        self.by_node: dict[str, list[str]] = {}

    def add(self, key: str, rate: float, gain: float, free: list[str]) -> None:
        self.keys[key] = (rate, gain, free)
        for name in free:
            self.by_node.setdefault(name, []).append(key)

    def cost(self, node: str, request: PlacementRequest, duration_s: float) -> float:
        """Expected seconds that running ``request`` (for ``duration_s``) on ``node`` adds to other keys,
        when it takes the node's last slot under the bound (else the node stays a free holder: 0)."""
        total = 0.0
        for key in self.by_node.get(node, ()):
            if key == request.key:
                continue
            rate, gain, free = self.keys[key]
            weight = 1.0 if len(free) == 1 else self._SECOND if len(free) == 2 else 0.0
            if weight:
                total += weight * gain * (1.0 - math.exp(-rate * duration_s))
        return total

    def taken(self, node: str) -> None:
        """``node`` reached its bound: it is no longer a free holder of anything."""
        for key in self.by_node.pop(node, ()):
            free = self.keys[key][2]
            if node in free:
                free.remove(node)


def guard_costly_keys(
    view: FleetView,
    costly: Mapping[str, str],
    inventory: InventoryIndex,
    arrival_rate: Callable[[str, float], float],
) -> Guard:
    """The free holders of the recently used costly keys (``costly``: key → workspace, at most
    ``guarded_keys`` of them) whose last one or two free holders taking a node could use up."""
    guard = Guard()
    settings, estimator = view.settings, view.estimator
    limit = settings.max_warm_candidates
    live, load = view.live, view.load
    for key, workspace in costly.items():
        holders = inventory.holders(key)
        if not holders or len(holders) > 4 * limit:
            continue  # none, or so many that one more busy holder hardly matters
        size = next(iter(holders.values()))[BYTES]
        gain = estimator.restore_s(size, 0) - size / settings.materialize_bps
        free = []
        for name in holders:
            node = live.get(name)
            if node is not None and load[name] < view.capacity(node) and view.fresh(node):
                free.append(name)
                if len(free) > 2:
                    break  # more than two free holders: taking one costs nothing worth weighing
        if 0 < len(free) <= 2:
            guard.add(key, arrival_rate(workspace, view.now), gain, free)
    return guard
