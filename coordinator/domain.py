"""Plain data the coordinator's pure core works on: nodes, cache entries, placement requests.

Nothing here knows about gRPC, protobuf or SQLite; ``convert.py`` translates at the boundary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""


class SystemClock:
    def now(self) -> float:
        import time

        return time.time()


class Warmth(str, enum.Enum):
    WARM = "warm"
    PARTIAL = "partial"
    COLD = "cold"


class NodeState(str, enum.Enum):
    READY = "ready"
    DISCONNECTED = "disconnected"
    LOST = "lost"


@dataclass(frozen=True)
class NodeInfo:
    """What a node says about itself when it registers."""

    name: str
    zone: str = ""
    slots: int = 1
    disk_capacity_bytes: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    agent_version: str = ""
    instance_type: str = ""
    cpus: int = 0
    memory_bytes: int = 0
    taints: tuple[str, ...] = ()


class EntryRecord(NamedTuple):
    """One cache entry a node reports holding.

    A named tuple of plain values rather than a dataclass: a large fleet reports millions of them, and a
    tuple is smaller and quicker to build. The collector still tracks them (it untracks only exact tuples),
    so a full collection walks every one: the coordinator keeps them out of its young collections by
    freezing what survives (``GcPolicy`` in server.py). Keys are interned (``convert.entry``).
    """

    key: str
    bytes: int
    files: int
    created: float
    last_used: float
    sketch: tuple[int, ...] = ()  # bottom-k MinHash of the entry's content digests (empty: unknown)


@dataclass(frozen=True)
class Constraints:
    zone: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def admits(self, node: NodeInfo) -> bool:
        if self.zone and node.zone != self.zone:
            return False
        return all(node.labels.get(k) == v for k, v in self.labels.items())

    def describe(self) -> str:
        parts = [f"zone={self.zone}"] if self.zone else []
        parts += [f"{k}={v}" for k, v in sorted(self.labels.items())]
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class PlacementRequest:
    """What the scheduler needs to know about a build (or a placement-only lease)."""

    id: str
    workspace: str
    key: str = ""
    restore_keys: tuple[str, ...] = ()
    constraints: Constraints = field(default_factory=Constraints)
    tenant: str = ""
    priority: int = 0
    enqueued_at: float = 0.0


@dataclass(frozen=True)
class Decision:
    """Where a request goes, and why. ``node`` is None when it must wait."""

    node: str | None
    warmth: Warmth
    reason: str
    matched_key: str = ""
    candidates: tuple[tuple[str, str, float], ...] = ()
    """The top candidates considered: (node, warmth, score)."""
