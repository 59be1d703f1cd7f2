"""The node registry: who is registered, whose stream is open, and whose lease ran out.

Pure code with an injected clock. A node registers (getting a new session), attaches its stream,
and detaches when the stream ends. A node detached for longer than the lease TTL is *lost*: the
caller requeues its builds. Registering again (after a crash or a coordinator restart) replaces the
old session; a stream that names a superseded session is refused.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from stoker.coordinator.core.clock import Clock
from stoker.coordinator.core.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from stoker.coordinator.placement.domain import ImageRecord, NodeInfo, NodeState


@dataclass
class NodeRecord:
    info: NodeInfo
    """What the node registered with, its slots bounded by the coordinator's ``nodes.max_slots``."""
    session_id: str
    state: NodeState = NodeState.DISCONNECTED
    attached: bool = False
    detached_at: float = 0.0
    last_seen: float = 0.0
    registered_at: float = 0.0
    holders: set[str] = field(default_factory=set)
    """Build ids and lease ids holding one of the node's slots."""
    disk_used_bytes: int = 0
    disk_free_bytes: int = 0
    evicted_bytes_total: int = 0
    image_records: tuple[ImageRecord, ...] = ()
    """The images the node's executor holds, as of its last heartbeat."""
    images: dict[str, int] = field(default_factory=dict)
    """Image reference (each name and ``name@digest`` it is known by, and the bare digest) → its size in
    bytes: ``image_records`` indexed for the scheduler (``set_images``)."""
    generation: int = 0
    draining: bool = False
    """The node said it is shutting down: nothing new goes to it."""
    reconciled: bool = False
    """Whether the first heartbeat of the current session has been reconciled."""
    registered_slots: int = 0
    """The slots the node registered with, before ``nodes.max_slots`` bounded them (more than
    ``info.slots``: the node claimed more than the coordinator lets a node run, and is flagged)."""

    @property
    def name(self) -> str:
        return self.info.name

    def set_images(self, records: tuple[ImageRecord, ...]) -> None:
        """Replace what the node holds of images with its latest report."""
        self.image_records = records
        self.images = {ref: r.bytes for r in records for ref in (r.digest, *r.references) if ref}

    @property
    def slots_flagged(self) -> bool:
        """Whether the node registered with more slots than the coordinator lets a node run."""
        return self.registered_slots > self.info.slots

    @property
    def free_slots(self) -> int:
        return self.info.slots - len(self.holders)

    @property
    def schedulable(self) -> bool:
        return self.state is NodeState.READY and not self.draining


class NodeRegistry:
    def __init__(self, clock: Clock, lease_ttl_s: float, max_slots: int = 0) -> None:
        self._clock = clock
        self.lease_ttl_s = lease_ttl_s
        self.max_slots = max_slots
        """The most slots a node counts with, whatever it registers with (0: no bound)."""
        self._nodes: dict[str, NodeRecord] = {}

    def register(self, info: NodeInfo) -> NodeRecord:
        if not info.name:
            raise InvalidArgument("node: must not be empty")
        if info.slots <= 0:
            raise InvalidArgument(f"slots: must be positive, got {info.slots}")
        registered = info.slots
        if self.max_slots and info.slots > self.max_slots:
            info = dataclasses.replace(info, slots=self.max_slots)
        now = self._clock.now()
        previous = self._nodes.get(info.name)
        record = NodeRecord(
            info=info,
            session_id=uuid.uuid4().hex,
            registered_at=now,
            last_seen=now,
            detached_at=now,
            registered_slots=registered,
        )
        if previous is not None and previous.state is not NodeState.LOST:
            # Slots held before a re-registration stay held until reconciled or the lease expires.
            record.holders = previous.holders
        self._nodes[info.name] = record
        return record

    def attach(self, name: str, session_id: str) -> NodeRecord:
        record = self.get(name)
        if record.session_id != session_id:
            raise Aborted(f"session {session_id} of node {name} was superseded by a newer registration")
        record.attached = True
        record.state = NodeState.READY
        record.last_seen = self._clock.now()
        record.reconciled = False
        return record

    def detach(self, name: str, session_id: str) -> None:
        record = self._nodes.get(name)
        if record is None or record.session_id != session_id:
            return
        record.attached = False
        record.detached_at = self._clock.now()
        if record.state is NodeState.READY:
            record.state = NodeState.DISCONNECTED

    def seen(self, name: str) -> None:
        record = self._nodes.get(name)
        if record is not None:
            record.last_seen = self._clock.now()

    def expire(self) -> list[NodeRecord]:
        """Mark nodes detached longer than the TTL as lost; return the newly lost ones."""
        now = self._clock.now()
        lost = []
        for record in self._nodes.values():
            if record.state is NodeState.DISCONNECTED and now - record.detached_at >= self.lease_ttl_s:
                record.state = NodeState.LOST
                lost.append(record)
        return lost

    def forget(self, name: str) -> None:
        """Remove a lost node for good (an operator's word: it was decommissioned)."""
        record = self.get(name)
        if record.state is NodeState.READY:
            raise FailedPrecondition(
                f"node {name} is connected: stop its agent first, then forget it once lost"
            )
        if record.state is NodeState.DISCONNECTED:
            left = self.lease_ttl_s - (self._clock.now() - record.detached_at)
            raise FailedPrecondition(
                f"node {name} is disconnected, not lost: it is lost when its lease runs out "
                f"(in {left:.0f} s), and can be forgotten then"
            )
        del self._nodes[name]

    def get(self, name: str) -> NodeRecord:
        try:
            return self._nodes[name]
        except KeyError:
            raise NotFound(f"node {name} is not registered") from None

    def find(self, name: str) -> NodeRecord | None:
        return self._nodes.get(name)

    def all(self) -> list[NodeRecord]:
        return list(self._nodes.values())

    def live_nodes(self) -> _LiveView:
        """Nodes not lost, lazily (``any()`` over it stops at the first match)."""
        return _LiveView(self._nodes)

    def live(self) -> list[NodeRecord]:
        """Nodes not lost (ready, or disconnected within their lease)."""
        return [r for r in self._nodes.values() if r.state is not NodeState.LOST]

    def ready(self) -> list[NodeRecord]:
        return [r for r in self._nodes.values() if r.state is NodeState.READY]


class _LiveView:
    """Iterable over the registry's nodes that are not lost; truthy when there is at least one."""

    def __init__(self, nodes: dict[str, NodeRecord]) -> None:
        self._nodes = nodes

    def __iter__(self) -> Iterator[NodeRecord]:
        return (r for r in self._nodes.values() if r.state is not NodeState.LOST)

    def __bool__(self) -> bool:
        return any(True for _ in self)
