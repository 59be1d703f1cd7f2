"""What was in demand lately: each key's recent build starts (hot keys), each workspace's arrival rate, and
the most recently used costly keys. Each map is bounded (``recent.trim``)."""

from __future__ import annotations

import collections
import math

from stoker.coordinator.core.clock import Clock
from stoker.coordinator.placement.domain import PlacementRequest
from stoker.coordinator.placement.scheduler.recent import trim
from stoker.coordinator.placement.scheduler.settings import SchedulerSettings


class Demand:
    """Recent demand per key and per workspace, ordered least recently touched first and trimmed as it is
    updated, so that a fleet whose keys never stop changing does not grow it forever."""

    def __init__(self, settings: SchedulerSettings, clock: Clock) -> None:
        self._s = settings
        self._clock = clock
        self._starts: collections.OrderedDict[str, tuple[float, ...]] = collections.OrderedDict()
        """key → when its latest ``hot_builds`` builds started, oldest first (kept while within
        ``hot_window_s``; a tuple, not a deque, whose every instance allocates 64 slots)."""
        self._rate: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        """workspace → (arrival rate, when last updated): a decaying count of builds started (dropped once
        decayed to nothing)."""
        self.costly: collections.OrderedDict[str, str] = collections.OrderedDict()
        """The most recently used costly keys (key → workspace), oldest first."""

    def started(self, request: PlacementRequest, now: float) -> None:
        """A build of ``request`` started at ``now``."""
        s = self._s
        if request.key:
            seen = self._starts.pop(request.key, ())
            self._starts[request.key] = (*seen[len(seen) + 1 - s.hot_builds :], now)
            horizon = now - s.hot_window_s
            trim(self._starts, lambda times: times[-1] < horizon, s.max_tracked_keys)
        window = s.demand_window_s
        rate, last = self._rate.pop(request.workspace, (0.0, now))
        self._rate[request.workspace] = (rate * math.exp(-(now - last) / window) + 1.0 / window, now)
        trim(self._rate, lambda rate_at: now - rate_at[1] > 20 * window, s.max_tracked_keys)

    def costly_used(self, key: str, workspace: str) -> list[str]:
        """A costly key was used: it goes to the recent end; returns the keys that fell out (past
        ``guarded_keys``)."""
        self.costly[key] = workspace
        self.costly.move_to_end(key)
        dropped = []
        while len(self.costly) > self._s.guarded_keys:
            dropped.append(self.costly.popitem(last=False)[0])
        return dropped

    def is_hot(self, key: str) -> bool:
        """Whether ``key`` had ``hot_builds`` builds start within ``hot_window_s``."""
        seen = self._starts.get(key)
        if not seen:
            return False
        s = self._s
        return len(seen) >= s.hot_builds and seen[0] >= self._clock.now() - s.hot_window_s

    def hot_keys(self) -> list[str]:
        return [k for k in self._starts if self.is_hot(k)]

    def arrival_rate(self, workspace: str, now: float) -> float:
        """Builds per second of ``workspace`` lately (decaying with ``demand_window_s``)."""
        rate, last = self._rate.get(workspace, (0.0, now))
        return rate * math.exp(-(now - last) / self._s.demand_window_s)

    def tracked(self) -> dict[str, int]:
        return {"demand": len(self._starts), "rates": len(self._rate)}
