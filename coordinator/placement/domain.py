"""Plain data the coordinator's pure core works on: nodes, cache entries, placement requests.

Nothing here knows about gRPC, protobuf or SQLite; ``convert.py`` translates at the boundary.
"""

from __future__ import annotations

import builtins
import enum
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeAlias


class Warmth(str, enum.Enum):
    WARM = "warm"
    PARTIAL = "partial"
    COLD = "cold"


class NodeState(str, enum.Enum):
    READY = "ready"
    DISCONNECTED = "disconnected"
    LOST = "lost"


SANDBOXING_EXECUTORS = frozenset({"podman"})
"""Executors that run each build isolated, in its own image and under cgroup limits. Any other (``process``,
or none reported by an older agent) runs builds as plain processes of the agent."""

RESOURCE_FIELDS = ("cpus", "memory_bytes", "pids", "output_bytes", "disk_bytes")
SANDBOX_ONLY_FIELDS = ("cpus", "memory_bytes", "pids")
"""Limits only a sandboxing executor keeps (cgroups); output and workspace bytes every executor keeps."""

PROCESS_NODES = ("never", "when_asked", "always")
"""Which builds may go to a node that runs builds without a sandbox (the coordinator's setting
builds.process_nodes): none; those whose spec sets allow_unsandboxed; any."""


@dataclass(frozen=True)
class Resources:
    """What one build asks for, or the most a node lets one build ask for. 0 in a field: nothing asked
    (a build), no maximum (a node)."""

    cpus: float = 0.0
    memory_bytes: int = 0
    pids: int = 0
    output_bytes: int = 0
    disk_bytes: int = 0

    def first_over(self, maxima: Resources) -> str:
        """The first field asked for above ``maxima`` ("" when none is)."""
        for name in RESOURCE_FIELDS:
            most = getattr(maxima, name)
            if most and getattr(self, name) > most:
                return name
        return ""

    def describe(self) -> str:
        return ", ".join(
            f"{name}={number(getattr(self, name))}" for name in RESOURCE_FIELDS if getattr(self, name)
        )


def number(value: float) -> str:
    """A limit as a person reads it: bytes and counts whole (17179869184, not 1.71799e+10), CPUs as given."""
    return str(value) if isinstance(value, int) else f"{value:g}"


NO_LIMITS: Final = Resources()


def needs_sandbox(*, image: str, limits: Resources, network_none: bool, allowed: bool, policy: str) -> bool:
    """Whether a build must run on a sandboxing executor: it names an image or a limit only a sandbox keeps,
    or ``policy`` (builds.process_nodes) keeps it off unsandboxed nodes (``allowed``: its spec asks to be
    let onto them)."""
    if image or network_none or any(getattr(limits, name) for name in SANDBOX_ONLY_FIELDS):
        return True
    if policy == "always":
        return False
    return not (policy == "when_asked" and allowed)


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
    executor: str = ""
    """What runs builds there: ``podman`` (each in its own container) or ``process`` (not isolated); ""
    from an agent too old to say, which runs builds as processes."""
    oci_runtime: str = ""
    maxima: Resources = NO_LIMITS
    """The most one build may ask for there."""

    @property
    def sandboxed(self) -> bool:
        return self.executor in SANDBOXING_EXECUTORS


class EntryRecord(NamedTuple):
    """One cache entry a node reports holding, with its fields named: the form to build one by hand.

    The inventory holds entries as *exact* tuples of these fields, in this order (``convert.entry`` builds
    them from the wire; ``Entry`` is their type), and code that reads them indexes with the ``Final``
    positions below (``entry[BYTES]``), which mypy reads as literals: it types ``entry[BYTES]`` as ``int``,
    ``entry[KEY]`` as ``str``, and so on. The reason is the cyclic garbage collector. CPython stops
    tracking an exact tuple of untracked values (str, int, float, bytes) at the first collection it
    survives, but tracks every instance of a tuple subclass, this one included, for as long as it lives.
    At 1,000 nodes x 1,000 keys named tuples were a million objects that every full collection walked: a
    ~1 s pause of the coordinator (bench/load.py).
    An ``EntryRecord`` is a tuple too, so one passed in (tests, simulations) is read the same way; it is
    merely tracked. Keys are interned (``convert.entry``).
    """

    key: str
    bytes: int
    files: int
    created: float
    last_used: float
    sketch: builtins.bytes = b""  # ``bytes`` is the field above inside this class body
    """Bottom-k MinHash of the entry's content digests, packed as on the wire (``stoker.common.sketch``;
    empty: unknown)."""


Entry: TypeAlias = tuple[str, int, int, float, float, bytes]
"""An entry as the inventory holds it: ``EntryRecord``'s fields, in its order, in an exact tuple (an
``EntryRecord`` is one too, for mypy and at run time)."""

# Positions of an ``Entry``'s fields. ``Final`` makes each a literal for mypy, so ``entry[SKETCH]`` is typed
# ``bytes``; at run time they are the plain ints they always were (no accessor call on the hot paths).
KEY: Final = 0
BYTES: Final = 1
FILES: Final = 2
CREATED: Final = 3
LAST_USED: Final = 4
SKETCH: Final = 5


@dataclass(frozen=True)
class ImageRecord:
    """An OCI image a node reports holding: its digest, the names it is known by, its size, its last use."""

    digest: str
    references: tuple[str, ...]
    bytes: int
    last_used: float = 0.0
    """When a build last ran in it (0: none has since the agent started)."""


@dataclass(frozen=True)
class Constraints:
    """Where a build may run: every condition must hold."""

    zone: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    sandbox: bool = False
    """Only nodes whose executor sandboxes builds (see ``needs_sandbox``)."""
    limits: Resources = NO_LIMITS
    """Only nodes whose maxima allow these limits."""

    def restricts(self) -> bool:
        return bool(self.zone or self.labels or self.sandbox or self.limits != NO_LIMITS)

    def admits(self, node: NodeInfo) -> bool:
        if self.zone and node.zone != self.zone:
            return False
        if self.sandbox and not node.sandboxed:
            return False
        if self.limits != NO_LIMITS and self.limits.first_over(node.maxima):
            return False
        return all(node.labels.get(k) == v for k, v in self.labels.items())

    def describe(self) -> str:
        parts = [f"zone={self.zone}"] if self.zone else []
        parts += [f"{k}={v}" for k, v in sorted(self.labels.items())]
        if self.sandbox:
            parts.append("a sandboxing executor (podman)")
        if self.limits != NO_LIMITS:
            parts.append(f"maxima admitting {self.limits.describe()}")
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
    also_exact: tuple[str, ...] = ()
    """Keys that serve the build as well as its own, in order: its key in the cache scopes it may read
    (a pull request's build is warm on a node holding the default branch's entry of its key)."""
    image: str = ""
    """The OCI image the build runs in, as the build names it (empty: the node's default image, whose size
    the scheduler does not know, so it counts no pull)."""


@dataclass(frozen=True)
class Decision:
    """Where a request goes, and why. ``node`` is None when it must wait."""

    node: str | None
    warmth: Warmth
    reason: str
    matched_key: str = ""
    candidates: tuple[tuple[str, str, float], ...] = ()
    """The top candidates considered: (node, warmth, score)."""
