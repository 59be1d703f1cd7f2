"""Plain data the coordinator's pure core works on: nodes, cache entries, placement requests.

Nothing here knows about gRPC, protobuf or SQLite; ``convert.py`` translates at the boundary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


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
    """One cache entry a node reports holding, with its fields named: the form to build one by hand.

    The inventory holds entries as *exact* tuples of these fields, in this order (``convert.entry`` builds
    them from the wire), and code that reads them indexes with the positions below (``entry[BYTES]``). The
    reason is the cyclic garbage collector. CPython stops tracking an exact tuple of untracked values (str,
    int, float, bytes) at the first collection it survives, but tracks every instance of a tuple
    subclass, this one included, for as long as it lives. At 1,000 nodes x 1,000 keys named tuples were a
    million objects that every full collection walked: a ~1 s pause of the coordinator (bench/load.py).
    An ``EntryRecord`` is a tuple too, so one passed in (tests, simulations) is read the same way; it is
    merely tracked. Keys are interned (``convert.entry``).
    """

    key: str
    bytes: int
    files: int
    created: float
    last_used: float
    sketch: bytes = b""
    """Bottom-k MinHash of the entry's content digests, packed as on the wire (``stoker.common.sketch``;
    empty: unknown)."""


Entry = tuple[str, int, int, float, float, bytes]
"""An entry as the inventory holds it: ``EntryRecord``'s fields, in its order, in an exact tuple."""

KEY, BYTES, FILES, CREATED, LAST_USED, SKETCH = range(6)
"""Positions of an ``Entry``'s fields."""


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
