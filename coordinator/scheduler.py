"""Where each build goes: the node where it will be ready soonest, usually the warmest.

Pure code with an injected clock. The coordinator's build queue and the trace-driven simulator in
``bench/simulate.py`` both drive this module through the same calls:

* ``plan(queue, nodes)`` — given the waiting requests and the nodes, which requests go where now,
  which keep waiting (and why), and which entries to prewarm on which nodes;
* ``started(request, node)`` / ``finished(request_id, ...)`` — what happened, so the scheduler can
  estimate how long the running builds still take and learn fetch, extraction and build rates;
* ``node_joined`` / ``node_lost`` — to replicate hot keys onto a new node or away from a lost one.

For each request and each candidate node it estimates the **time until the build can start doing
useful work**: the wait for a slot on that node, plus the bytes the node must fetch divided by the
fetch bandwidth, plus the time to extract them. Warmth comes from what agents *report* holding
(reports from a node not heard from within ``warmth_ttl_s`` do not count), and partial warmth
counts: a node holding an older entry under a restore prefix fetches only the difference, estimated
from the entries' content sketches when both are known.

Then:

* **Bounded load.** No node takes more than ⌈c·(L+1)/N⌉ builds at once (L running across the N
  schedulable nodes), so a popular key cannot pile every build on one node.
* **Delay rule.** A request waits for a busy warm node only when that node's expected wait plus its
  restore beats the best free node's restore. Each waiting request reserves the node's next free
  slot, so a second request for the same busy node sees a longer wait and goes elsewhere instead of
  queueing behind it while capable nodes sit idle.
* **Stable overflow.** Ties go to the rendezvous-hash order of the key, so the spill-over for one
  key lands on the same next nodes, which then warm up.
* **Hot keys replicate.** When requests queue for a key whose warm nodes are all busy, the key is
  prewarmed onto its next rendezvous node; also after a node holding hot keys is lost, and onto a
  new node that ranks high for hot keys.
* **Fairness.** Requests age (one priority level per ``aging_s`` waited); within a level, the tenant
  with the fewest running builds goes first, and while others wait no tenant holds more than
  ``tenant_share`` of the slots.

Every decision carries its reason and the estimated ready time of the top candidates.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stoker.coordinator.domain import Clock, Decision, EntryRecord, PlacementRequest, Warmth
from stoker.coordinator.inventory import InventoryIndex
from stoker.coordinator.registry import NodeRecord

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class SchedulerSettings:
    load_factor: float = 1.25
    """c in the bound ⌈c·(L+1)/N⌉ on the builds one node runs at once."""
    aging_s: float = 120.0
    """A queued request gains one priority level for every this many seconds it waits."""
    tenant_share: float = 0.5
    """While other tenants wait, one tenant holds at most this share of the fleet's slots (at least 1)."""
    warmth_ttl_s: float = 60.0
    """Inventory reports from a node not heard from for this long stop counting as warmth."""
    fetch_bps: float = 100e6
    """Blob-store fetch bandwidth per node until learned from agents' reports (bytes/s)."""
    extract_bps: float = 300e6
    """Decompress-and-write rate until learned (bytes/s)."""
    materialize_bps: float = 2e9
    """Rate of materializing a locally present entry into a workspace (bytes/s)."""
    build_s: float = 300.0
    """Build duration assumed until learned (per key, then per workspace, then fleet-wide)."""
    default_similarity: float = 0.9
    """Share of an entry assumed unchanged from the older entry under its restore prefix, when the
    entries' sketches cannot tell."""
    ewma_alpha: float = 0.2
    """Weight of each new observation in the learned rates."""
    prewarm_replicas: int = 1
    """How many extra nodes a hot key is prewarmed onto at a time."""

    hot_window_s: float = 900.0
    """Demand for a key counts as recent for this long."""
    hot_builds: int = 3
    """Builds of one key within the window that make it hot."""
    prewarm_cooldown_s: float = 120.0
    """Do not ask the same node to prewarm the same key again within this time."""
    explain_candidates: int = 3
    """How many candidates each decision lists with their estimates."""


# -- estimates learned from what agents report -----------------------------------------------------
class Estimator:
    """Exponentially weighted rates: fetch bandwidth, extraction, build durations (per key, per
    workspace, fleet-wide)."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self._s = settings
        self.fetch_bps = settings.fetch_bps
        self.extract_bps = settings.extract_bps
        self.fleet_build_s = settings.build_s
        self._by_key: dict[str, float] = {}
        self._by_workspace: dict[str, float] = {}

    def _ewma(self, old: float, new: float) -> float:
        return old + self._s.ewma_alpha * (new - old)

    def observe_restore(self, bytes_fetched: int, bytes_restored: int, seconds: float) -> None:
        if seconds <= 0:
            return
        if bytes_fetched >= 1_000_000:
            self.fetch_bps = self._ewma(self.fetch_bps, bytes_fetched / seconds)
        elif bytes_restored >= 1_000_000:
            self.extract_bps = self._ewma(self.extract_bps, bytes_restored / seconds)

    def observe_build(self, key: str, workspace: str, run_s: float) -> None:
        if run_s <= 0:
            return
        self.fleet_build_s = self._ewma(self.fleet_build_s, run_s)
        if key:
            self._by_key[key] = self._ewma(self._by_key.get(key, run_s), run_s)
        self._by_workspace[workspace] = self._ewma(self._by_workspace.get(workspace, run_s), run_s)

    def build_s(self, request: PlacementRequest) -> float:
        if request.key in self._by_key:
            return self._by_key[request.key]
        return self._by_workspace.get(request.workspace, self.fleet_build_s)

    def restore_s(self, fetch_bytes: float, local_bytes: float) -> float:
        return (fetch_bytes / self.fetch_bps + fetch_bytes / self.extract_bps
                + local_bytes / self._s.materialize_bps)


# -- sketches ----------------------------------------------------------------------------------------
def similarity(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Estimated share of content two entries have in common, from bottom-k MinHash sketches of their
    content digests (None when either sketch is missing)."""
    if not a or not b:
        return None
    k = min(len(a), len(b))
    union = heapq.nsmallest(k, set(a) | set(b))
    both = set(a) & set(b)
    return sum(1 for h in union if h in both) / len(union)


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    x = (x * 0x9E3779B97F4A7C15) & _MASK
    return x ^ (x >> 29)


def rendezvous_weight(key: str, node: str) -> int:
    """Highest-random-weight hash of (key, node): a stable per-key order over nodes."""
    return _mix(_h64(key) ^ _h64(node))


# -- decisions -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    node: str
    warmth: Warmth
    matched_key: str
    fetch_bytes: float
    wait_s: float
    ready_s: float
    weight: int

    def sort_key(self) -> tuple[float, int]:
        return (round(self.ready_s, 6), -self.weight)

    def describe(self) -> str:
        wait = f", waits {self.wait_s:.0f} s" if self.wait_s > 0 else ""
        return f"{self.node} {self.warmth.value} ~{self.ready_s:.1f} s{wait}"


@dataclass
class Plan:
    assignments: list[tuple[PlacementRequest, Decision]] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    """request id → why it waits."""
    prewarms: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    """(node, key, restore prefixes) to fetch ahead of need."""


@dataclass
class _Running:
    node: str
    tenant: str
    key: str
    ends: float


class Scheduler:
    def __init__(self, inventory: InventoryIndex, clock: Clock, settings: SchedulerSettings | None = None,
                 estimator: Estimator | None = None) -> None:
        self._inventory = inventory
        self._clock = clock
        self.settings = settings or SchedulerSettings()
        self.estimator = estimator or Estimator(self.settings)
        self._running: dict[str, _Running] = {}
        self._node_hash: dict[str, int] = {}
        self._demand: dict[str, collections.deque[float]] = {}
        self._prewarmed: dict[tuple[str, str], float] = {}
        self._pending_prewarms: list[tuple[str, str, tuple[str, ...]]] = []

    # -- what happened -------------------------------------------------------------------------
    def started(self, request: PlacementRequest, node: str) -> None:
        now = self._clock.now()
        self._running[request.id] = _Running(node, request.tenant, request.key,
                                             now + self.estimator.build_s(request))
        if request.key:
            seen = self._demand.setdefault(request.key, collections.deque(maxlen=64))
            seen.append(now)

    def finished(self, request_id: str, *, key: str = "", workspace: str = "", run_s: float = 0.0,
                 bytes_fetched: int = 0, bytes_restored: int = 0, restore_s: float = 0.0) -> None:
        self._running.pop(request_id, None)
        if run_s:
            self.estimator.observe_build(key, workspace, run_s)
        if restore_s:
            self.estimator.observe_restore(bytes_fetched, bytes_restored, restore_s)

    def node_lost(self, node: str, held: Iterable[EntryRecord], nodes: Sequence[NodeRecord]) -> None:
        """Replicate the hot keys the lost node held onto their next rendezvous node."""
        for running_id in [rid for rid, r in self._running.items() if r.node == node]:
            self.finished(running_id)
        live = [n for n in nodes if n.schedulable and n.name != node]
        for entry in held:
            if self._is_hot(entry.key):
                self._prewarm_next(entry.key, (), live, reason_node=node)

    def node_joined(self, node: NodeRecord, nodes: Sequence[NodeRecord]) -> None:
        """Prewarm hot keys onto a new node that ranks among their first rendezvous nodes."""
        live = [n for n in nodes if n.schedulable]
        for key in [k for k in self._demand if self._is_hot(k)]:
            holders = self._inventory.holders(key)
            if node.name in holders:
                continue
            ranked = sorted(live, key=lambda n: -self._weight(key, n.name))
            top = [n.name for n in ranked[: len(holders) + self.settings.prewarm_replicas]]
            if node.name in top:
                self._queue_prewarm(node.name, key, ())

    # -- deciding ------------------------------------------------------------------------------
    def choose(self, request: PlacementRequest, nodes: Sequence[NodeRecord]) -> Decision:
        """The decision for one request, without changing any state (for explanations and benchmarks)."""
        live = [n for n in nodes if n.schedulable]
        load = {n.name: len(n.holders) for n in live}
        bound = self._bound(sum(load.values()), len(live))
        free_at: dict[str, list[float]] = {}
        return self._decide(request, live, load, bound, free_at, self._clock.now())

    def plan(self, queue: Sequence[PlacementRequest], nodes: Sequence[NodeRecord]) -> Plan:
        plan = Plan(prewarms=self._pending_prewarms)
        self._pending_prewarms = []
        now = self._clock.now()
        live = [n for n in nodes if n.schedulable]
        if not queue:
            return plan
        if not live:
            for r in queue:
                plan.waiting[r.id] = "waiting for a node: none is ready"
            return plan
        load = {n.name: len(n.holders) for n in live}
        total_slots = sum(n.info.slots for n in live)
        tenant_running = collections.Counter(r.tenant for r in self._running.values())
        free_at: dict[str, list[float]] = {}
        running_total = sum(load.values())
        waiting_on: collections.Counter[str] = collections.Counter()
        for request in self._fair_order(queue, tenant_running, now):
            tenants_waiting = {r.tenant for r in queue if r.id not in {a.id for a, _ in plan.assignments}}
            cap = max(1, math.floor(self.settings.tenant_share * total_slots))
            if len(tenants_waiting) > 1 and tenant_running[request.tenant] >= cap:
                plan.waiting[request.id] = (f"tenant {request.tenant} holds {tenant_running[request.tenant]} "
                                            f"of {total_slots} slots while others wait")
                continue
            bound = self._bound(running_total, len(live))
            decision = self._decide(request, live, load, bound, free_at, now)
            if decision.node is None:
                plan.waiting[request.id] = decision.reason
                continue
            node = next(n for n in live if n.name == decision.node)
            if load[node.name] < min(node.info.slots, bound):
                plan.assignments.append((request, decision))
                load[node.name] += 1
                running_total += 1
                tenant_running[request.tenant] += 1
            else:
                # Worth waiting for: reserve the node's next free slot.
                slots = self._free_at(node, free_at, now)
                first = heapq.heappop(slots)
                heapq.heappush(slots, max(first, now) + self.estimator.build_s(request))
                plan.waiting[request.id] = decision.reason
                if request.key:
                    waiting_on[request.key] += 1
        for key in waiting_on:
            request = next(r for r in queue if r.key == key)
            self._prewarm_next(key, request.restore_keys, live)
        plan.prewarms.extend(self._pending_prewarms)
        self._pending_prewarms = []
        return plan

    # -- internals -----------------------------------------------------------------------------
    def _bound(self, running: int, nodes: int) -> int:
        return max(1, math.ceil(self.settings.load_factor * (running + 1) / max(1, nodes)))

    def _fair_order(self, queue: Sequence[PlacementRequest], tenant_running: collections.Counter,
                    now: float) -> Iterable[PlacementRequest]:
        """Highest aged priority first; within a level, the tenant with the fewest running builds."""
        def level(r: PlacementRequest) -> int:
            return r.priority + int((now - r.enqueued_at) / self.settings.aging_s)

        by_tenant: dict[str, list[PlacementRequest]] = collections.defaultdict(list)
        for r in sorted(queue, key=lambda r: (-level(r), r.enqueued_at)):
            by_tenant[r.tenant].append(r)
        heads = {t: 0 for t in by_tenant}
        served: collections.Counter[str] = collections.Counter()
        while heads:
            tenant = min(heads, key=lambda t: (-level(by_tenant[t][heads[t]]), tenant_running[t] + served[t],
                                               by_tenant[t][heads[t]].enqueued_at))
            yield by_tenant[tenant][heads[tenant]]
            served[tenant] += 1
            heads[tenant] += 1
            if heads[tenant] >= len(by_tenant[tenant]):
                del heads[tenant]

    def _weight(self, hash_key: str, node: str) -> int:
        h = self._node_hash.get(node)
        if h is None:
            h = self._node_hash[node] = _h64(node)
        return _mix(_h64(hash_key) ^ h)

    def _free_at(self, node: NodeRecord, free_at: dict[str, list[float]], now: float) -> list[float]:
        """Times at which each of the node's slots is expected to be free (a heap)."""
        slots = free_at.get(node.name)
        if slots is None:
            ends = []
            for holder in node.holders:
                running = self._running.get(holder)
                if running is None:
                    ends.append(now + 0.5 * self.estimator.fleet_build_s)
                else:
                    # An overrunning build is expected to need a little longer, not to be done now.
                    ends.append(max(running.ends, now + 0.1 * self.estimator.fleet_build_s))
            ends += [now] * max(0, node.info.slots - len(ends))
            slots = sorted(ends)[: max(node.info.slots, 1)]
            heapq.heapify(slots)
            free_at[node.name] = slots
        return slots

    def _fresh(self, node: NodeRecord, now: float) -> bool:
        return now - node.last_seen <= self.settings.warmth_ttl_s

    def _decide(self, request: PlacementRequest, live: Sequence[NodeRecord], load: dict[str, int], bound: int,
                free_at: dict[str, list[float]], now: float) -> Decision:
        admitted = {n.name: n for n in live if request.constraints.admits(n.info)}
        if not admitted:
            return Decision(node=None, warmth=Warmth.COLD,
                            reason=f"waiting: no ready node satisfies the constraints "
                                   f"({request.constraints.describe()})")
        hash_key = request.key or request.workspace
        est = self.estimator
        target_bytes, target_sketch = self._target(request)
        candidates: dict[str, Candidate] = {}

        def consider(node: NodeRecord, warmth: Warmth, matched: str, fetch: float, local: float) -> None:
            slots = self._free_at(node, free_at, now) if (
                load[node.name] >= min(node.info.slots, bound) or node.name in free_at) else None
            wait = max(0.0, slots[0] - now) if slots else 0.0
            if slots is not None and load[node.name] < min(node.info.slots, bound) and wait == 0.0:
                wait = 0.0
            elif slots is not None and load[node.name] >= bound and load[node.name] < node.info.slots:
                wait = max(wait, 0.5 * est.fleet_build_s / max(1, node.info.slots))
            ready = wait + est.restore_s(fetch, local)
            c = Candidate(node.name, warmth, matched, fetch, wait, ready, self._weight(hash_key, node.name))
            old = candidates.get(node.name)
            if old is None or c.sort_key() < old.sort_key():
                candidates[node.name] = c

        if request.key:
            for name, entry in self._inventory.holders(request.key).items():
                node = admitted.get(name)
                if node is not None and self._fresh(node, now):
                    consider(node, Warmth.WARM, entry.key, 0.0, entry.bytes)
        for prefix in request.restore_keys:
            for name, entry in self._inventory.newest_under(prefix, limit=256).items():
                node = admitted.get(name)
                if node is None or name in candidates or not self._fresh(node, now):
                    continue
                if target_bytes:
                    sim = similarity(target_sketch, entry.sketch)
                    share = self.settings.default_similarity if sim is None else sim
                    fetch = target_bytes * (1.0 - share)
                else:
                    fetch = 0.0  # nothing newer exists: the older entry is the best there is
                consider(node, Warmth.PARTIAL, entry.key, fetch, entry.bytes)
        # Cold candidates: the first free nodes in the key's rendezvous order.
        free = [n for name, n in admitted.items() if name not in candidates
                and load[name] < min(n.info.slots, bound)]
        cold_fetch = float(target_bytes or self._prefix_bytes(request))
        for node in heapq.nlargest(self.settings.explain_candidates, free,
                                   key=lambda n: self._weight(hash_key, n.name)):
            consider(node, Warmth.COLD, "", cold_fetch, 0.0)
        if not candidates:
            return Decision(node=None, warmth=Warmth.COLD,
                            reason=f"waiting for a free slot: {len(admitted)} capable node(s), all busy")
        ranked = sorted(candidates.values(), key=Candidate.sort_key)
        best = ranked[0]
        top = tuple((c.node, c.warmth.value, round(c.ready_s, 3)) for c in ranked[: self.settings.explain_candidates])
        alternatives = "; ".join(c.describe() for c in ranked[1: self.settings.explain_candidates])
        if best.warmth is Warmth.WARM:
            why = f"warm: holds {best.matched_key}"
        elif best.warmth is Warmth.PARTIAL:
            why = f"partial: holds {best.matched_key}, fetches ~{best.fetch_bytes / 1e6:.1f} MB"
        else:
            why = f"cold: fetches ~{best.fetch_bytes / 1e6:.1f} MB; first free node in the key's rendezvous order"
        reason = f"{why}; ready in ~{best.ready_s:.1f} s"
        if alternatives:
            reason += f" (next: {alternatives})"
        if best.wait_s > 0 or load[best.node] >= min(admitted[best.node].info.slots, bound):
            reason = f"waiting for {best.node} ({why}): expected wait {best.wait_s:.0f} s beats the best free " \
                     f"node"
        return Decision(node=best.node, warmth=best.warmth, reason=reason, matched_key=best.matched_key,
                        candidates=top)

    def _target(self, request: PlacementRequest) -> tuple[int, tuple[int, ...]]:
        """Size and sketch of the exact entry, when some node reports it."""
        if not request.key:
            return 0, ()
        holders = self._inventory.holders(request.key)
        if not holders:
            return 0, ()
        entry = max(holders.values(), key=lambda e: len(e.sketch))
        return entry.bytes, entry.sketch

    def _prefix_bytes(self, request: PlacementRequest) -> int:
        for prefix in request.restore_keys:
            newest = self._inventory.newest_under(prefix, limit=256)
            if newest:
                return max(newest.values(), key=lambda e: e.created).bytes
        return 0

    def _is_hot(self, key: str) -> bool:
        seen = self._demand.get(key)
        if not seen:
            return False
        horizon = self._clock.now() - self.settings.hot_window_s
        return sum(1 for t in seen if t >= horizon) >= self.settings.hot_builds

    def _prewarm_next(self, key: str, restore_keys: tuple[str, ...], live: Sequence[NodeRecord],
                      reason_node: str = "", count: int = 0) -> None:
        """Prewarm ``key`` onto the next nodes in its rendezvous order that do not hold it."""
        holders = self._inventory.holders(key)
        count = count or self.settings.prewarm_replicas
        candidates = (n for n in live if n.name not in holders and n.name != reason_node)
        for node in heapq.nlargest(count, candidates, key=lambda n: self._weight(key, n.name)):
            self._queue_prewarm(node.name, key, restore_keys)

    def _queue_prewarm(self, node: str, key: str, restore_keys: tuple[str, ...]) -> None:
        now = self._clock.now()
        last = self._prewarmed.get((node, key))
        if last is not None and now - last < self.settings.prewarm_cooldown_s:
            return
        self._prewarmed[(node, key)] = now
        self._pending_prewarms.append((node, key, restore_keys))
