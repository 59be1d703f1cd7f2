"""The placement policies the benchmark compares with stoker's scheduler: what a user would otherwise pick.

The engine, the ``stoker`` policy and the least-loaded baseline are the product's
(``stoker.coordinator.planning.engine``), shared with ``stoker plan``; the peers here subclass its ``Policy``.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random

from stoker.coordinator.placement.scheduler import SchedulerSettings
from stoker.coordinator.planning.engine import (  # noqa: F401  (re-exported for the harness and its tests)
    Job,
    LeastLoadedPolicy,
    Policy,
    Sim,
    SimClock,
    SimNode,
    StokerPolicy,
    _load,
    usage,
)
from stoker.coordinator.planning.trace import Fleet


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, seed: int = 3) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def choose(self, sim, job, free):
        options = [n for n, f in free.items() if f > 0]
        return self.rng.choice(options) if options else None


class RoundRobinPolicy(Policy):
    name = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self.next = 0

    def choose(self, sim, job, free):
        names = sorted(free)
        for i in range(len(names)):
            name = names[(self.next + i) % len(names)]
            if free[name] > 0:
                self.next = (self.next + i + 1) % len(names)
                return name
        return None


class PowerOfTwoPolicy(Policy):
    name = "power_of_two"

    def __init__(self, seed: int = 5) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def choose(self, sim, job, free):
        names = list(free)
        a, b = self.rng.sample(names, 2) if len(names) >= 2 else (names[0], names[0])
        pick = min((a, b), key=lambda n: (_load(sim, n, free), n))
        return pick if free[pick] > 0 else None


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _Ring:
    def __init__(self, names: list[str], vnodes: int = 64) -> None:
        self.points = sorted((_h(f"{n}#{i}"), n) for n in names for i in range(vnodes))
        self.hashes = [p for p, _ in self.points]

    def walk(self, key: str):
        start = bisect.bisect(self.hashes, _h(key))
        seen = set()
        for i in range(len(self.points)):
            name = self.points[(start + i) % len(self.points)][1]
            if name not in seen:
                seen.add(name)
                yield name


class ConsistentHashPolicy(Policy):
    """Each workspace always goes to the node owning it on the ring; it waits for that node."""

    name = "consistent_hash"

    def __init__(self) -> None:
        super().__init__()
        self._ring: _Ring | None = None
        self._names: tuple[str, ...] = ()
        self._owner: dict[str, str] = {}
        self._owner_names: tuple[str, ...] = ()

    def ring(self, free) -> _Ring:
        names = tuple(sorted(free))
        if names != self._names:
            self._ring, self._names = _Ring(list(names)), names
        return self._ring

    def choose(self, sim, job, free):
        ring = self.ring(free)
        owner = self._owner.get(job.build.workspace) if self._owner_names == self._names else None
        if owner is None:
            if self._owner_names != self._names:
                self._owner, self._owner_names = {}, self._names
            owner = self._owner[job.build.workspace] = next(ring.walk(job.build.workspace))
        return owner


class BoundedHashPolicy(ConsistentHashPolicy):
    """Consistent hashing with bounded loads (c = 1.25): walk the ring to the first node under the bound."""

    name = "bounded_hash"

    def __init__(self, c: float = 1.25) -> None:
        super().__init__()
        self.c = c

    def choose(self, sim, job, free):
        total = sum(_load(sim, n, free) for n in free)
        bound = max(1, math.ceil(self.c * (total + 1) / len(free)))
        for name in self.ring(free).walk(job.build.workspace):
            if free[name] > 0 and _load(sim, name, free) < bound:
                return name
        return None


class HistoryPolicy(Policy):
    """The last node that built the key, if it has a free slot (as BuildBuddy's affinity); else least
    loaded."""

    name = "history"

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, str] = {}

    def choose(self, sim, job, free):
        name = self.last.get(job.build.key) or self.last.get(job.build.workspace)
        if name in free and free[name] > 0:
            return name
        return LeastLoadedPolicy.choose(self, sim, job, free)

    def started(self, sim, job, node):
        self.last[job.build.key] = node.name
        self.last[job.build.workspace] = node.name


class OraclePolicy(LeastLoadedPolicy):
    """Least loaded, and every build finds its cache present: the lower bound."""

    name = "oracle"
    all_warm = True


PEERS = {
    "random": RandomPolicy,
    "round_robin": RoundRobinPolicy,
    "least_loaded": LeastLoadedPolicy,
    "power_of_two": PowerOfTwoPolicy,
    "consistent_hash": ConsistentHashPolicy,
    "bounded_hash": BoundedHashPolicy,
    "history": HistoryPolicy,
    "oracle": OraclePolicy,
}
POLICY_NAMES = ["stoker", *PEERS]


def make_policy(name: str, fleet: Fleet, settings: SchedulerSettings | None = None) -> Policy:
    if name == "stoker":
        return StokerPolicy(fleet, settings)
    if name not in PEERS:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")
    return PEERS[name]()
