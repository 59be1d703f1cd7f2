"""A decision, as a chain of small named stages (``decide``): admit the nodes the request's constraints allow;
find the warm candidates (holders of its exact key), the partial ones (holders of older entries under its
restore prefixes) and the cold ones (free nodes in the key's rendezvous order); rank them and explain the
choice. Each stage reads one ``Placing`` — the request, the fleet as the pass sees it, and the candidates
found so far — and can be run and tested on its own.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from stoker.coordinator.placement.domain import BYTES, SKETCH, Constraints, Decision, PlacementRequest, Warmth
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRecord
from stoker.coordinator.placement.scheduler.estimates import fetch_after
from stoker.coordinator.placement.scheduler.fleet import FleetView
from stoker.coordinator.placement.scheduler.rendezvous import Rendezvous, h64

SortKey = tuple[float, float, int, float, float, int]


@dataclass(frozen=True)
class Candidate:
    """A node a request could go to, with the estimates it is ranked by."""

    node: str
    warmth: Warmth
    matched_key: str
    fetch_bytes: float
    wait_s: float
    ready_s: float
    """Estimated seconds until the build can start working there: ``wait_s`` plus the restore."""
    weight: int
    """The node's rendezvous weight for the key: the last tie-break, higher first."""
    cost: float = 0.0
    """Expected seconds that taking this node adds to other keys' builds (cold candidates only)."""
    load: int = 0
    """Builds the node runs: of equally ready nodes, the least loaded goes first."""
    tie_cost: float = 0.0
    """What taking this node costs costly keys, weighed only between otherwise equally ready nodes (warm and
    partial candidates: a build never leaves a node where it is ready sooner for another key's sake)."""

    heat: float = 1.0
    """The node's mean load since it joined over the fleet's mean per node in that time: of equally good
    nodes, the one that has run the least relative to the fleet goes first."""
    pull_bytes: float = 0.0
    """Bytes of the build's image the node would pull first (0: it holds it, or its size is unknown)."""

    def sort_key(self, tie_s: float = 0.25) -> SortKey:
        """Soonest ready first (free nodes in the same ``tie_s`` slice count as equally ready; a wait is an
        estimate too rough to blur further); of equally ready nodes, the one whose taking costs costly keys
        least, then the least loaded, then the least hot, then the sooner, then the key's rendezvous order."""
        ready = self.ready_s + self.cost
        first = round(ready, 6) if self.wait_s > 0 else math.floor(ready / tie_s) * tie_s
        return (first, round(self.tie_cost, 6), self.load, round(self.heat, 2), round(ready, 6), -self.weight)

    def describe(self) -> str:
        wait = f", waits {self.wait_s:.0f} s" if self.wait_s > 0 else ""
        pull = f", pulls image ~{self.pull_bytes / 1e6:.0f} MB" if self.pull_bytes else ""
        return f"{self.node} {self.warmth.value} ~{self.ready_s:.1f} s{wait}{pull}"


@dataclass
class Placing:
    """One request's decision under way: what its stages read, and the candidates they found (at most one
    per node, the best of what was found for it)."""

    request: PlacementRequest
    view: FleetView
    admitted: dict[str, NodeRecord]
    """The nodes of ``view.live`` that the request's constraints allow."""
    inventory: InventoryIndex
    rendezvous: Rendezvous
    key_hash: int
    weight: Callable[[str], int]
    """A node's rendezvous weight for the request's key (higher first)."""
    target_bytes: int
    """Size of the request's exact entry, when some node reports it (else 0)."""
    target_sketch: bytes
    duration_s: float
    """How long the request's build is expected to run."""
    guarded: bool
    """Whether any costly key has only one or two free holders (else taking a node costs them nothing)."""
    image_holders: frozenset[str] = frozenset()
    """The admitted nodes that report holding the request's image."""
    image_bytes: int = 0
    """Size of the request's image, as the nodes holding it report it (0: no node does, so none is nearer)."""
    candidates: dict[str, Candidate] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        request: PlacementRequest,
        view: FleetView,
        admitted: dict[str, NodeRecord],
        inventory: InventoryIndex,
        rendezvous: Rendezvous,
    ) -> Placing:
        key_hash = h64(request.key or request.workspace)
        # What the build restores: its key, or else its key in a scope it reads (a pull request's build gets
        # the default branch's entry): sized from whichever some node holds first. Sized from its own key
        # alone, a pull request's target was empty, so an older entry's holder "fetched nothing" and tied
        # with the nodes that hold the entry itself (found by bench/load.py --scoped).
        target_bytes, target_sketch = 0, b""
        for key in (request.key, *request.also_exact):
            target_bytes, target_sketch = target_entry(inventory, key)
            if target_bytes:
                break
        holders, image_bytes = image_holders(request.image, admitted)
        return cls(
            request,
            view,
            admitted,
            inventory,
            rendezvous,
            key_hash,
            rendezvous.weigher(key_hash),
            target_bytes,
            target_sketch,
            view.estimator.build_s(request),
            bool(view.guard.by_node),
            holders,
            image_bytes,
        )

    def usable(self, names: Iterable[str]) -> list[str]:
        """The holders worth estimating: admitted, fresh, and at most ``max_warm_candidates`` of them, free
        ones first, then in rendezvous order."""
        # On the hot path of a decision (every holder of up to ``max_prefix_keys`` keys): ``view.fresh`` and
        # ``view.capacity`` inlined.
        admitted, view = self.admitted, self.view
        now, ttl = view.now, view.settings.warmth_ttl_s
        usable = [n for n in names if n in admitted and now - admitted[n].last_seen <= ttl]
        limit = view.settings.max_warm_candidates
        if len(usable) > limit:
            load, weight, bound = view.load, self.weight, view.bound
            usable = heapq.nlargest(
                limit, usable, key=lambda n: (load[n] < min(admitted[n].info.slots, bound), weight(n))
            )
        return usable

    def consider(
        self, node: NodeRecord, warmth: Warmth, matched: str, fetch: float, local: float, cost: float = 0.0
    ) -> None:
        """Estimate ``node`` as a candidate: its wait for a slot (0 when free), plus the restore of ``fetch``
        bytes from the blob store and ``local`` bytes it holds."""
        view, name = self.view, node.name
        cap = view.capacity(node)
        running = view.load[name]
        tie = 0.0
        if running < cap and name not in view.free_at:
            wait = 0.0
            if self.guarded and warmth is not Warmth.COLD and running + 1 >= cap:
                tie = view.guard.cost(name, self.request, self.duration_s)
        else:
            wait = max(0.0, view.slots_free_at(node)[0] - view.now)
        tie_s = view.settings.ready_tie_s
        pull = 0 if name in self.image_holders else self.image_bytes
        c = Candidate(
            name,
            warmth,
            matched,
            fetch,
            wait,
            wait + view.estimator.restore_s(fetch, local) + view.estimator.pull_s(pull),
            self.weight(name),
            cost,
            running,
            tie,
            view.history.heat(name, view.now),
            pull,
        )
        old = self.candidates.get(name)
        if old is None or c.sort_key(tie_s) < old.sort_key(tie_s):
            self.candidates[name] = c


def image_holders(image: str, admitted: dict[str, NodeRecord]) -> tuple[frozenset[str], int]:
    """The admitted nodes holding ``image`` and its size as they report it (the largest report; none and 0
    when the request names no image or no node holds it). One dict lookup per admitted node, only for
    requests that name an image."""
    if not image:
        return frozenset(), 0
    sizes = {name: node.images[image] for name, node in admitted.items() if image in node.images}
    return frozenset(sizes), max(sizes.values(), default=0)


def target_entry(inventory: InventoryIndex, key: str) -> tuple[int, bytes]:
    """Size and sketch of the entry ``key``, when some node reports it (else 0 and no sketch)."""
    if not key:
        return 0, b""
    holders = inventory.holders(key)
    if not holders:
        return 0, b""
    entry = next(iter(holders.values()))
    return entry[BYTES], entry[SKETCH]


# -- the stages ------------------------------------------------------------------------------------
def admit(constraints: Constraints, live: dict[str, NodeRecord]) -> dict[str, NodeRecord]:
    """Stage 1: the live nodes that satisfy the request's constraints: zone, labels, a sandboxing executor
    when the build needs one (it names an image, say: a ``process`` node would run it outside any image,
    unsandboxed), maxima that admit its limits."""
    if constraints.restricts():
        return {name: n for name, n in live.items() if constraints.admits(n.info)}
    return live


def warm_candidates(p: Placing) -> None:
    """Stage 2: the usable holders of the request's exact key, then of the keys that serve it as well
    (``also_exact``: its key in a cache scope it may read); each restores from what it holds."""
    for key in (p.request.key, *p.request.also_exact):
        if not key:
            continue
        holders = p.inventory.holders(key)
        for name in p.usable(holders):
            if name not in p.candidates:
                p.consider(p.admitted[name], Warmth.WARM, key, 0.0, holders[name][BYTES])


def partial_candidates(p: Placing) -> None:
    """Stage 3: holders of older entries under the request's restore prefixes, newest entries first (a node
    holding a newer one has less to fetch); each fetches the difference its entry's sketch suggests.

    At most ``max_warm_candidates`` are estimated; past them, only free holders of older entries are looked
    at, until ``older_free_candidates`` free ones are found."""
    request, settings, view = p.request, p.view.settings, p.view
    limit, older_free = settings.max_warm_candidates, settings.older_free_candidates
    for prefix in request.restore_keys:
        found = found_free = 0
        for key in p.inventory.newest_keys_under(prefix, count=settings.max_prefix_keys):
            if key == request.key:
                continue
            if found >= limit and found_free >= older_free:
                break
            holders = p.inventory.holders(key)
            names = p.usable(n for n in holders if n not in p.candidates)
            if found >= limit:
                # The holders of the newest entries are often the nodes running the workspace's builds,
                # all busy under a low bound: past the first ``limit``, only free holders of older
                # entries are looked at, until ``older_free_candidates`` free ones are found.
                names = [n for n in names if view.is_free(n)][: older_free - found_free]
            for name in names:
                entry = holders[name]
                fetch = fetch_after(
                    p.target_bytes, p.target_sketch, entry[SKETCH], settings.default_similarity
                )
                p.consider(p.admitted[name], Warmth.PARTIAL, key, fetch, entry[BYTES])
                found += 1
                found_free += view.is_free(name)


def cold_candidates(p: Placing) -> None:
    """Stage 4: the first free nodes in the key's rendezvous order not found warm or partial, each fetching
    the whole entry (or the newest under its first restore prefix): ``explain_candidates`` of them, or
    ``cold_candidates`` when costly keys are guarded, so that the one whose taking costs them least wins.
    When the request's image is one some nodes hold, as many free holders of it (the first in the key's
    rendezvous weight) are looked at first: there the build skips the pull."""
    view, settings = p.view, p.view.settings
    cold_fetch = float(p.target_bytes or prefix_bytes(p.inventory, p.request.restore_keys))
    wanted = settings.cold_candidates if p.guarded else settings.explain_candidates
    if p.image_holders:
        holders = heapq.nlargest(wanted, (n for n in p.image_holders if view.is_free(n)), key=p.weight)
        _consider_cold(p, holders, cold_fetch, wanted)
    _consider_cold(p, p.rendezvous.nodes(p.key_hash, p.weight, view.live, p.admitted), cold_fetch, wanted)


def _consider_cold(p: Placing, names: Iterable[str], fetch: float, wanted: int) -> None:
    """Estimate the first ``wanted`` of ``names`` that are free and not candidates yet as cold candidates."""
    view = p.view
    load, free_at, guard = view.load, view.free_at, view.guard
    for name in names:
        node = p.admitted[name]
        if name in p.candidates or load[name] >= view.capacity(node) or name in free_at:
            continue
        fills = load[name] + 1 >= view.capacity(node)
        cost = guard.cost(name, p.request, p.duration_s) if p.guarded and fills else 0.0
        p.consider(node, Warmth.COLD, "", fetch, 0.0, cost)
        wanted -= 1
        if wanted == 0:
            break


def rank(p: Placing) -> list[Candidate]:
    """Stage 5: the candidates, best first (``Candidate.sort_key``)."""
    tie_s = p.view.settings.ready_tie_s
    return sorted(p.candidates.values(), key=lambda c: c.sort_key(tie_s))


def explain(p: Placing, ranked: list[Candidate]) -> Decision:
    """Stage 6: the decision for the best candidate, with why, the estimates of the next few, and whether the
    request is to wait for it (when it must wait for a slot or is at its bound)."""
    if not ranked:
        return Decision(
            node=None,
            warmth=Warmth.COLD,
            reason=f"waiting for a free slot: {len(p.admitted)} capable node(s), all busy",
        )
    shown = p.view.settings.explain_candidates
    best = ranked[0]
    top = tuple((c.node, c.warmth.value, round(c.ready_s, 3)) for c in ranked[:shown])
    alternatives = "; ".join(c.describe() for c in ranked[1:shown])
    if best.warmth is Warmth.WARM:
        why = f"warm: holds {best.matched_key}"
    elif best.warmth is Warmth.PARTIAL:
        why = f"partial: holds {best.matched_key}, fetches ~{best.fetch_bytes / 1e6:.1f} MB"
    else:
        why = f"cold: fetches ~{best.fetch_bytes / 1e6:.1f} MB; first free node in the key's rendezvous order"
    if best.pull_bytes:
        why += f"; pulls image ~{best.pull_bytes / 1e6:.0f} MB"
    elif p.image_holders:
        why += "; holds the image"
    reason = f"{why}; ready in ~{best.ready_s:.1f} s"
    if alternatives:
        reason += f" (next: {alternatives})"
    if best.wait_s > 0 or p.view.load[best.node] >= p.view.capacity(p.admitted[best.node]):
        reason = (
            f"waiting for {best.node} ({why}): expected wait {best.wait_s:.0f} s beats the best free node"
        )
    return Decision(
        node=best.node, warmth=best.warmth, reason=reason, matched_key=best.matched_key, candidates=top
    )


def prefix_bytes(inventory: InventoryIndex, restore_keys: tuple[str, ...]) -> int:
    """Size of the newest entry under the first restore prefix that has one (0: none)."""
    for prefix in restore_keys:
        for key in inventory.newest_keys_under(prefix, count=1):
            return next(iter(inventory.holders(key).values()))[BYTES]
    return 0


CANDIDATE_STAGES: tuple[Callable[[Placing], None], ...] = (
    warm_candidates,
    partial_candidates,
    cold_candidates,
)
"""The stages that find candidates, in order: each skips the nodes an earlier one found."""


def decide(
    request: PlacementRequest, view: FleetView, inventory: InventoryIndex, rendezvous: Rendezvous
) -> Decision:
    """Where ``request`` goes (or why it waits): admit → warm → partial → cold → rank → explain."""
    admitted = admit(request.constraints, view.live)
    if not admitted:
        return Decision(
            node=None,
            warmth=Warmth.COLD,
            reason=f"waiting: no ready node satisfies the constraints ({request.constraints.describe()})",
        )
    placing = Placing.start(request, view, admitted, inventory, rendezvous)
    for find in CANDIDATE_STAGES:
        find(placing)
    return explain(placing, rank(placing))
