"""Where each build goes.

Pure code: it sees the nodes (as :class:`NodeRecord`), the fleet inventory and the request, and
returns a :class:`Decision`. This first policy prefers, among ready nodes that admit the build and
have a free slot: a node holding the exact key (warm), then one holding an entry under a restore
prefix (partial), then any (cold); ties go to the node with more free slots, then to the
rendezvous-hash order of the key so that spill-over for one key lands on the same next nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from stoker.coordinator.domain import Decision, PlacementRequest, Warmth
from stoker.coordinator.inventory import InventoryIndex
from stoker.coordinator.registry import NodeRecord

_RANK = {Warmth.WARM: 0, Warmth.PARTIAL: 1, Warmth.COLD: 2}


def rendezvous_weight(key: str, node: str) -> int:
    """Highest-random-weight hash of (key, node): a stable per-key order over nodes."""
    digest = hashlib.blake2b(f"{key}\x00{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def capable(request: PlacementRequest, nodes: Sequence[NodeRecord]) -> list[NodeRecord]:
    """Nodes that could ever run the request (ignoring their current load)."""
    return [n for n in nodes if request.constraints.admits(n.info)]


class Scheduler:
    def __init__(self, inventory: InventoryIndex) -> None:
        self._inventory = inventory

    def warmth_on(self, request: PlacementRequest, node: str) -> tuple[Warmth, str]:
        """What ``node`` holds for ``request``: (warmth, the key it would restore)."""
        if request.key and node in self._inventory.holders(request.key):
            return Warmth.WARM, request.key
        for prefix in request.restore_keys:
            newest = self._inventory.newest_under(prefix).get(node)
            if newest is not None:
                return Warmth.PARTIAL, newest.key
        return Warmth.COLD, ""

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeRecord]) -> Decision:
        admitted = [n for n in nodes if n.schedulable and request.constraints.admits(n.info)]
        free = [n for n in admitted if n.free_slots > 0]
        if not free:
            busy = len(admitted)
            return Decision(node=None, warmth=Warmth.COLD,
                            reason=f"waiting for a free slot: {busy} capable node(s), all busy")
        warm = self._inventory.holders(request.key) if request.key else {}
        partial: dict[str, str] = {}
        for prefix in request.restore_keys:
            for node, entry in self._inventory.newest_under(prefix).items():
                partial.setdefault(node, entry.key)
        hash_key = request.key or request.workspace

        def rank(n: NodeRecord) -> tuple[int, int, int]:
            if n.name in warm:
                w = Warmth.WARM
            elif n.name in partial:
                w = Warmth.PARTIAL
            else:
                w = Warmth.COLD
            return (_RANK[w], -n.free_slots, -rendezvous_weight(hash_key, n.name))

        ordered = sorted(free, key=rank)
        best = ordered[0]
        warmth, matched = self.warmth_on(request, best.name)
        candidates = tuple(
            (n.name, self.warmth_on(request, n.name)[0].value, float(rank(n)[0])) for n in ordered[:3]
        )
        if warmth is Warmth.WARM:
            entry = warm[best.name]
            reason = f"warm: holds {matched} ({_mb(entry.bytes)})"
        elif warmth is Warmth.PARTIAL:
            reason = f"partial: holds {matched}, an older entry under a restore key"
        else:
            reason = f"cold: no node with a free slot holds {request.key or 'the cache'}; least loaded"
        return Decision(node=best.name, warmth=warmth, reason=reason, matched_key=matched,
                        candidates=candidates)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
