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
* **Costly keys keep a free holder.** A key whose cold restore is long (``costly_restore_s``) and
  that is in demand keeps at least one holder that is not at the load bound (two when its builds
  overlap often): when placing one of its builds leaves fewer, it is prewarmed onto the node holding
  its closest older entry (only the difference is fetched), else onto its next rendezvous node. Its
  replicas are touched as it is used, so the nodes' LRU eviction keeps them. And a build that must
  start cold goes to the free node whose taking costs such keys least (of ``cold_candidates``): not
  the last free holder of a costly key when another free node will do. Only taking a node's last slot
  under the bound costs anything (below it the node stays a free holder), and of equally good cold
  nodes the least loaded goes first, so the weighing does not pile cold builds onto the nodes that hold
  nothing worth keeping (new ones, typically).
* **Ties.** Free candidates whose estimated ready times fall in the same ``ready_tie_s`` slice count as
  equally ready. Between them, the one whose taking costs costly keys least goes first (for warm and
  partial nodes too: a build never leaves a node where it is clearly ready sooner for another key's sake),
  then the least loaded, then the least *hot* (its mean load since it joined over the fleet's mean per
  node in that time — so that a node that joined at the busy hours and holds a hot workspace does not run
  at its bound all afternoon while the rest of the fleet does not), then the key's rendezvous order.
* **Superseded entries go.** When a build finishes on a node, the node is asked to evict its older
  entries under the build's restore prefixes: a restore takes the newest, and on small disks the older
  ones would push other workspaces' only copies out of the LRU order.
* **Fairness.** Requests age (one priority level per ``aging_s`` waited); within a level, the tenant
  with the fewest running builds goes first, and while others wait no tenant holds more than
  ``tenant_share`` of the slots.

Every decision carries its reason and the estimated ready time of the top candidates.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from stoker.common import sketch
from stoker.coordinator.core.clock import Clock
from stoker.coordinator.placement.domain import (
    BYTES,
    CREATED,
    KEY,
    SKETCH,
    Decision,
    Entry,
    NodeState,
    PlacementRequest,
    Warmth,
)
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRecord

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
    costly_restore_s: float = 8.0
    """A key whose cold restore (fetch and extract) is estimated at least this long is *costly*: it keeps
    a free holder, its replicas are touched as it is used, and cold builds avoid its last free holders."""
    spare_holders: int = 2
    """Free holders a costly key keeps while its builds overlap often (see ``spare_busy``); one otherwise."""
    spare_busy: float = 0.2
    """Expected concurrent builds of a workspace (arrival rate × build time) from which its costly key keeps
    ``spare_holders`` free holders."""
    touch_replicas: int = 8
    """How many of a costly key's holders (first in its rendezvous order) are touched when it is used."""
    cold_candidates: int = 8
    """How many free nodes in the key's rendezvous order a cold build chooses among (by what taking each
    costs costly keys)."""
    guarded_keys: int = 32
    """At most this many costly keys (the most recently used) are looked at when weighing that cost."""
    demand_window_s: float = 900.0
    """Time constant of each workspace's learned arrival rate."""
    max_tracked_keys: int = 100_000
    """At most this many keys' learned build times and recent demand are remembered (least recently
    seen forgotten first); a forgotten key falls back to its workspace's and the fleet's figures."""
    max_warm_candidates: int = 16
    """At most this many holders of one key are estimated per decision (free ones first), so a
    decision never scans a large fleet's whole inventory."""
    two_level_from: int = 256
    """From this many ready nodes on, the rendezvous order has two levels (√N buckets, then nodes) so a
    decision costs about √N hashes instead of N."""
    max_prefix_keys: int = 32
    """At most this many of the newest keys under a restore prefix are looked at per decision."""
    older_free_candidates: int = 3
    """When the first ``max_warm_candidates`` holders of entries under a restore prefix include fewer than
    this many free ones, the holders of older entries under it (of the ``max_prefix_keys`` newest) are looked
    at further, for free ones only, until this many are found."""
    ready_tie_s: float = 0.25
    """Free candidates whose estimated ready times fall in the same slice of this many seconds count as
    equally ready; between them, what taking each costs costly keys, its load and its heat decide. (Waiting
    candidates are compared by their estimates as they are.)"""
    evict_superseded: bool = True
    """When a build of a key finishes on a node, ask the node to evict its older entries under the key's
    restore prefixes: they are superseded there, and under a small disk budget they would otherwise push
    other workspaces' only copies out of the node's LRU order."""


# -- estimates learned from what agents report -----------------------------------------------------
class Estimator:
    """Exponentially weighted rates: fetch bandwidth, extraction, build durations (per key, per
    workspace, fleet-wide)."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self._s = settings
        self.fetch_bps = settings.fetch_bps
        self.extract_bps = settings.extract_bps
        self.fleet_build_s = settings.build_s
        self._by_key: collections.OrderedDict[str, float] = collections.OrderedDict()
        """key → learned build seconds, least recently built first (at most ``max_tracked_keys``)."""
        self._by_workspace: collections.OrderedDict[str, float] = collections.OrderedDict()

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
        cap = self._s.max_tracked_keys
        for learned, name in ((self._by_key, key), (self._by_workspace, workspace)):
            if name:
                learned[name] = self._ewma(learned.get(name, run_s), run_s)
                learned.move_to_end(name)
                _trim(learned, lambda _: False, cap)

    def tracked(self) -> int:
        """Keys and workspaces whose build times are remembered."""
        return len(self._by_key) + len(self._by_workspace)

    def build_s(self, request: PlacementRequest) -> float:
        if request.key in self._by_key:
            return self._by_key[request.key]
        return self._by_workspace.get(request.workspace, self.fleet_build_s)

    def restore_s(self, fetch_bytes: float, local_bytes: float) -> float:
        return (fetch_bytes / self.fetch_bps + fetch_bytes / self.extract_bps
                + local_bytes / self._s.materialize_bps)


# -- sketches ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)
def similarity(a: bytes, b: bytes) -> float | None:
    """Estimated share of one entry's content that the other holds too, from bottom-k MinHash sketches
    of their content digests, packed (``stoker.common.sketch``; None when either sketch is missing).

    The sketches estimate the Jaccard index J = |A∩B| / |A∪B|; for entries of about the same size the
    share of A found in B is |A∩B| / |A| = 2J / (1 + J).

    Remembered for the last 1,024 pairs (~30 µs each otherwise): a decision asks about every holder of an
    older entry, and replicas of an entry share one sketch object (``InventoryIndex``), so most of its
    questions are repeats. The cache keeps at most 2,048 sketches alive (~1.1 MB)."""
    if not a or not b:
        return None
    a, b = set(sketch.unpack(a)), set(sketch.unpack(b))
    k = min(len(a), len(b))
    union = sorted(a | b)[:k]
    both = a & b
    jaccard = sum(1 for h in union if h in both) / len(union)
    return 2 * jaccard / (1 + jaccard)


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    x = (x * 0x9E3779B97F4A7C15) & _MASK
    return x ^ (x >> 29)


def _trim(recent: collections.OrderedDict, stale: Callable[[object], bool], cap: int) -> None:
    """Drop entries from the least recently touched end of ``recent`` while they are ``stale`` or there
    are more than ``cap`` (O(1) per dropped entry, so callers can trim on every update)."""
    while recent:
        first = next(iter(recent.values()))
        if len(recent) <= cap and not stale(first):
            return
        recent.popitem(last=False)


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
    cost: float = 0.0
    """Expected seconds that taking this node adds to other keys' builds (cold candidates only)."""
    load: int = 0
    """Builds the node runs (cold candidates only: of equally good cold nodes, the least loaded goes first)."""
    tie_cost: float = 0.0
    """What taking this node costs costly keys, weighed only between otherwise equally ready nodes (warm and
    partial candidates: a build never leaves a node where it is ready sooner for another key's sake)."""

    heat: float = 1.0
    """The node's mean load since it joined over the fleet's mean per node in that time: of equally good
    nodes, the one that has run the least relative to the fleet goes first."""

    def sort_key(self, tie_s: float = 0.25) -> tuple:
        """Soonest ready first (free nodes in the same ``tie_s`` slice count as equally ready; a wait is an
        estimate too rough to blur further); of equally ready nodes, the one whose taking costs costly keys
        least, then the least loaded, then the least hot, then the sooner, then the key's rendezvous order."""
        ready = self.ready_s + self.cost
        first = round(ready, 6) if self.wait_s > 0 else math.floor(ready / tie_s) * tie_s
        return (first, round(self.tie_cost, 6), self.load, round(self.heat, 2), round(ready, 6), -self.weight)

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
    evictions: list[tuple[str, str]] = field(default_factory=list)
    """(node, key): entries a node holds a newer entry of (under the same restore prefix) for."""


class _Guard:
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


class _LoadHistory:
    """Each node's running builds integrated over time since it was first seen, and the fleet's over the same
    time, so that a node's *heat* (its mean load over the fleet's mean per node while it lived) costs O(1)."""

    MIN_AGE_S = 1800.0
    """Younger nodes count as neither hot nor cold."""

    def __init__(self) -> None:
        self._t: float | None = None
        self._area = 0.0  # running builds × seconds, fleet-wide
        self._node_s = 0.0  # nodes × seconds
        self._running = 0
        self._per: dict[str, list[float]] = {}
        """node → [area, last change, running, first seen, fleet area then, node-seconds then]"""

    def _advance(self, now: float) -> None:
        if self._t is not None and now > self._t:
            self._area += self._running * (now - self._t)
            self._node_s += len(self._per) * (now - self._t)
        self._t = now if self._t is None else max(self._t, now)

    def seen(self, names: dict, now: float) -> None:
        """The nodes that are live now (new ones start their history; gone ones are forgotten)."""
        self._advance(now)
        per = self._per
        for name in names:
            if name not in per:
                per[name] = [0.0, now, 0.0, now, self._area, self._node_s]
        if len(per) != len(names):
            for name in [n for n in per if n not in names]:
                self._running -= int(per.pop(name)[2])

    def change(self, node: str, delta: int, now: float) -> None:
        p = self._per.get(node)
        if p is None:
            return
        self._advance(now)
        p[0] += p[2] * (now - p[1])
        p[1] = now
        if p[2] + delta < 0:
            return  # a build started before the node was first seen: it was never counted
        p[2] += delta
        self._running += delta

    def heat(self, node: str, now: float) -> float:
        p = self._per.get(node)
        if p is None or now - p[3] < self.MIN_AGE_S or self._t is None:
            return 1.0
        own = (p[0] + p[2] * (now - p[1])) / (now - p[3])
        dt = now - self._t
        area = self._area + self._running * dt - p[4]
        node_s = self._node_s + len(self._per) * dt - p[5]
        return own / (area / node_s) if area > 0 and node_s > 0 else 1.0


@dataclass
class _Running:
    node: str
    tenant: str
    key: str
    ends: float
    restore_keys: tuple[str, ...] = ()


class Scheduler:
    def __init__(self, inventory: InventoryIndex, clock: Clock, settings: SchedulerSettings | None = None,
                 estimator: Estimator | None = None) -> None:
        self._inventory = inventory
        self._clock = clock
        self.settings = settings or SchedulerSettings()
        self.estimator = estimator or Estimator(self.settings)
        self._running: dict[str, _Running] = {}
        self._tenant_running: collections.Counter[str] = collections.Counter()
        self._node_hash: dict[str, int] = {}
        self._bucket_names: frozenset[str] = frozenset()
        self._bucket_source: dict | None = None
        self._bucket_map: dict[int, list[str]] = {}
        self._bucket_seed: list[int] = []
        self._bucket_seeds_for: dict[int, list[int]] = {}
        # Per-key and per-workspace memory of what happened, each ordered least recently touched first and
        # trimmed as it is updated, so that a fleet whose keys never stop changing does not grow it forever.
        self._demand: collections.OrderedDict[str, tuple[float, ...]] = collections.OrderedDict()
        """key → when its latest ``hot_builds`` builds started, oldest first (kept while within
        ``hot_window_s``; a tuple, not a deque, whose every instance allocates 64 slots)."""
        self._prewarmed: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        """(node, key) → when a prewarm was last asked (kept for ``prewarm_cooldown_s``)."""
        self._rate: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        """workspace → (arrival rate, when last updated): a decaying count of builds started (dropped once
        decayed to nothing)."""
        self._costly: collections.OrderedDict[str, str] = collections.OrderedDict()
        """The most recently used costly keys (key → workspace), oldest first."""
        self._replicating: dict[str, dict[str, float]] = {}
        """key → node → when a prewarm to keep a free holder was asked (until the node reports it)."""
        self._pending_prewarms: list[tuple[str, str, tuple[str, ...]]] = []
        self._pending_evictions: list[tuple[str, str]] = []
        self._history = _LoadHistory()

    # -- what happened -------------------------------------------------------------------------
    def started(self, request: PlacementRequest, node: str) -> None:
        now = self._clock.now()
        previous = self._running.get(request.id)
        if previous is not None:
            self._tenant_running[previous.tenant] -= 1
            self._history.change(previous.node, -1, now)
        self._history.change(node, +1, now)
        self._running[request.id] = _Running(node, request.tenant, request.key,
                                             now + self.estimator.build_s(request), request.restore_keys)
        self._tenant_running[request.tenant] += 1
        s = self.settings
        if request.key:
            seen = self._demand.pop(request.key, ())
            self._demand[request.key] = (*seen[len(seen) + 1 - s.hot_builds:], now)
            horizon = now - s.hot_window_s
            _trim(self._demand, lambda times: times[-1] < horizon, s.max_tracked_keys)
        window = s.demand_window_s
        rate, last = self._rate.pop(request.workspace, (0.0, now))
        self._rate[request.workspace] = (rate * math.exp(-(now - last) / window) + 1.0 / window, now)
        _trim(self._rate, lambda rate_at: now - rate_at[1] > 20 * window, s.max_tracked_keys)
        if request.key and self._restore_cost(request.key) >= s.costly_restore_s:
            self._costly[request.key] = request.workspace
            self._costly.move_to_end(request.key)
            while len(self._costly) > s.guarded_keys:
                dropped, _ = self._costly.popitem(last=False)
                self._replicating.pop(dropped, None)

    def finished(self, request_id: str, *, key: str = "", workspace: str = "", run_s: float = 0.0,
                 bytes_fetched: int = 0, bytes_restored: int = 0, restore_s: float = 0.0) -> None:
        running = self._running.pop(request_id, None)
        if running is not None:
            self._history.change(running.node, -1, self._clock.now())
            self._tenant_running[running.tenant] -= 1
            if self._tenant_running[running.tenant] <= 0:
                del self._tenant_running[running.tenant]
            if run_s and running.key and self.settings.evict_superseded:
                self._evict_superseded(running.node, running.key, running.restore_keys)
        if run_s:
            self.estimator.observe_build(key, workspace, run_s)
        if restore_s:
            self.estimator.observe_restore(bytes_fetched, bytes_restored, restore_s)

    def node_lost(self, node: str, held: Iterable[Entry], nodes: Sequence[NodeRecord]) -> None:
        """Replicate the hot keys the lost node held onto their next rendezvous node."""
        for running_id in [rid for rid, r in self._running.items() if r.node == node]:
            self.finished(running_id)
        live = [n for n in nodes if n.schedulable and n.name != node]
        for entry in held:
            if self._is_hot(entry[KEY]):
                self._prewarm_next(entry[KEY], (), live, reason_node=node)

    def node_joined(self, node: NodeRecord, nodes: Sequence[NodeRecord]) -> None:
        """Prewarm hot keys onto a new node that ranks among their first rendezvous nodes."""
        live = {n.name: n for n in nodes if n.schedulable}
        for key in [k for k in self._demand if self._is_hot(k)]:
            holders = self._inventory.holders(key)
            if node.name in holders:
                continue
            top = itertools.islice(self.order(key, live), len(holders) + self.settings.prewarm_replicas)
            if node.name in top:
                self._queue_prewarm(node.name, key, ())

    # -- deciding ------------------------------------------------------------------------------
    def choose(self, request: PlacementRequest, nodes: Sequence[NodeRecord]) -> Decision:
        """The decision for one request, without changing any state (for explanations and benchmarks)."""
        ready = NodeState.READY
        live = {n.info.name: n for n in nodes if n.state is ready and not n.draining}
        load = {name: len(n.holders) for name, n in live.items()}
        bound = self._bound(sum(load.values()), len(live))
        free_at: dict[str, list[float]] = {}
        now = self._clock.now()
        return self._decide(request, live, load, bound, free_at, now, self._guard(live, load, bound, now))

    def plan(self, queue: Sequence[PlacementRequest], nodes: Sequence[NodeRecord]) -> Plan:
        plan = Plan(prewarms=self._pending_prewarms, evictions=self._pending_evictions)
        self._pending_prewarms = []
        self._pending_evictions = []
        now = self._clock.now()
        if not queue:
            return plan
        # One pass over the nodes builds the whole view (this runs for every placement of a large fleet).
        ready = NodeState.READY
        live_by_name: dict[str, NodeRecord] = {}
        load: dict[str, int] = {}
        total_slots = running_total = 0
        for n in nodes:
            if n.state is ready and not n.draining:
                name, info, held = n.info.name, n.info, len(n.holders)
                live_by_name[name] = n
                load[name] = held
                total_slots += info.slots
                running_total += held
        live = list(live_by_name.values())
        self._history.seen(live_by_name, now)
        if not live:
            for r in queue:
                plan.waiting[r.id] = "waiting for a node: none is ready"
            return plan
        tenant_running = self._tenant_running.copy()
        free_at: dict[str, list[float]] = {}
        waiting_on: collections.Counter[str] = collections.Counter()
        waiting_per_tenant = collections.Counter(r.tenant for r in queue)
        cap = max(1, math.floor(self.settings.tenant_share * total_slots))
        guard = self._guard(live_by_name, load, self._bound(running_total, len(live)), now)
        for request in self._fair_order(queue, tenant_running, now):
            if len(waiting_per_tenant) > 1 and tenant_running[request.tenant] >= cap:
                plan.waiting[request.id] = (f"tenant {request.tenant} holds {tenant_running[request.tenant]} "
                                            f"of {total_slots} slots while others wait")
                continue
            bound = self._bound(running_total, len(live))
            decision = self._decide(request, live_by_name, load, bound, free_at, now, guard)
            if decision.node is None:
                plan.waiting[request.id] = decision.reason
                continue
            node = live_by_name[decision.node]
            if load[node.name] < min(node.info.slots, bound):
                plan.assignments.append((request, decision))
                waiting_per_tenant[request.tenant] -= 1
                if waiting_per_tenant[request.tenant] <= 0:
                    del waiting_per_tenant[request.tenant]
                load[node.name] += 1
                running_total += 1
                if load[node.name] >= min(node.info.slots, bound):
                    guard.taken(node.name)
                tenant_running[request.tenant] += 1
            else:
                # Worth waiting for: reserve the node's next free slot.
                slots = self._free_at(node, free_at, now, min(node.info.slots, bound))
                first = heapq.heappop(slots)
                heapq.heappush(slots, max(first, now) + self.estimator.build_s(request))
                plan.waiting[request.id] = decision.reason
                if request.key:
                    waiting_on[request.key] += 1
        for key in waiting_on:
            request = next(r for r in queue if r.key == key)
            self._prewarm_next(key, request.restore_keys, live)
        bound = self._bound(running_total, len(live))
        kept: set[str] = set()
        for request, _ in plan.assignments:
            if request.key and request.key not in kept:
                kept.add(request.key)
                self._keep_free_holder(request, live_by_name, load, bound, now)
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

    def order(self, key: str, live: dict[str, NodeRecord]):
        """The nodes of ``live`` in ``key``'s rendezvous order (lazily): where its spill-over goes."""
        key_hash = _h64(key)
        return self._rendezvous(key_hash, lambda name: _mix(key_hash ^ self._node_h(name)), live, live)

    def _node_h(self, name: str) -> int:
        h = self._node_hash.get(name)
        if h is None:
            h = self._node_hash[name] = _h64(name)
        return h

    def _free_at(self, node: NodeRecord, free_at: dict[str, list[float]], now: float, capacity: int) -> list[float]:
        """When each of the node's usable slots (``capacity``: its slots, or fewer under the load bound)
        is expected to be free, as a heap; reservations made in this pass push entries later."""
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
            ends.sort()
            capacity = max(1, capacity)
            if len(ends) >= capacity:
                # With more running than the capacity, a slot frees only when enough of them end.
                slots = ends[len(ends) - capacity:]
            else:
                slots = [now] * (capacity - len(ends)) + ends
            heapq.heapify(slots)
            free_at[node.name] = slots
        return slots

    def _rendezvous(self, key_hash: int, weight, live: dict[str, NodeRecord], admitted: dict[str, NodeRecord]):
        """Nodes in the key's rendezvous (highest random weight) order, lazily.

        In a large fleet, two levels, so that finding the first few free nodes costs about √N weights
        rather than N:
        nodes fall into buckets by their own hash; buckets are visited in the key's rendezvous order
        over buckets, and within a bucket nodes in the key's rendezvous order over nodes. The order is
        stable for a key, and a node joining or leaving moves only the keys whose order it enters.
        """
        buckets = self._buckets(live)
        order = sorted(buckets, key=lambda b: _mix(key_hash ^ self._bucket_seed[b]), reverse=True)
        for b in order:
            members = [n for n in buckets[b] if n in admitted]
            yield from sorted(members, key=weight, reverse=True)

    def _buckets(self, live: dict[str, NodeRecord]) -> dict[int, list[str]]:
        if self._bucket_source is live:
            return self._bucket_map
        self._bucket_source = live
        names = frozenset(live)
        if names != self._bucket_names:
            # One level (exact rendezvous) for small fleets; √N buckets from 256 nodes on.
            count = 1 if len(names) < self.settings.two_level_from else math.isqrt(len(names))
            if count not in self._bucket_seeds_for:
                self._bucket_seeds_for[count] = [_h64(f"bucket-{count}-{i}") for i in range(count)]
            self._bucket_seed = self._bucket_seeds_for[count]
            buckets: dict[int, list[str]] = collections.defaultdict(list)
            for name in names:
                buckets[self._node_h(name) % count].append(name)
            self._bucket_map, self._bucket_names = dict(buckets), names
        return self._bucket_map

    def _fresh(self, node: NodeRecord, now: float) -> bool:
        return now - node.last_seen <= self.settings.warmth_ttl_s

    def _decide(self, request: PlacementRequest, live: dict[str, NodeRecord], load: dict[str, int], bound: int,
                free_at: dict[str, list[float]], now: float, guard: _Guard | None = None) -> Decision:
        constraints = request.constraints
        if constraints.zone or constraints.labels:
            admitted = {name: n for name, n in live.items() if constraints.admits(n.info)}
        else:
            admitted = live
        if not admitted:
            return Decision(node=None, warmth=Warmth.COLD,
                            reason=f"waiting: no ready node satisfies the constraints "
                                   f"({constraints.describe()})")
        est = self.estimator
        key_hash = _h64(request.key or request.workspace)
        node_hash = self._node_hash
        limit = self.settings.max_warm_candidates

        def weight(name: str) -> int:
            h = node_hash.get(name)
            if h is None:
                h = self._node_h(name)
            return _mix(key_hash ^ h)

        def capacity(node: NodeRecord) -> int:
            return min(node.info.slots, bound)

        def usable(names) -> list[str]:
            """The holders worth estimating: admitted, fresh, free ones first, then rendezvous order."""
            names = [n for n in names if n in admitted and self._fresh(admitted[n], now)]
            if len(names) > limit:
                names = heapq.nlargest(limit, names, key=lambda n: (load[n] < capacity(admitted[n]), weight(n)))
            return names

        target_bytes, target_sketch = self._target(request)
        candidates: dict[str, Candidate] = {}

        guarded = guard is not None and bool(guard.by_node)
        duration = est.build_s(request)
        tie_s = self.settings.ready_tie_s

        def consider(node: NodeRecord, warmth: Warmth, matched: str, fetch: float, local: float,
                     cost: float = 0.0, running: int = 0) -> None:
            name = node.name
            cap = capacity(node)
            tie = 0.0
            if load[name] < cap and name not in free_at:
                wait = 0.0
                if guarded and warmth is not Warmth.COLD and load[name] + 1 >= cap:
                    tie = guard.cost(name, request, duration)
            else:
                wait = max(0.0, self._free_at(node, free_at, now, cap)[0] - now)
            c = Candidate(name, warmth, matched, fetch, wait, wait + est.restore_s(fetch, local), weight(name),
                          cost, running, tie, self._history.heat(name, now))
            old = candidates.get(name)
            if old is None or c.sort_key(tie_s) < old.sort_key(tie_s):
                candidates[name] = c

        if request.key:
            holders = self._inventory.holders(request.key)
            for name in usable(holders):
                consider(admitted[name], Warmth.WARM, request.key, 0.0, holders[name][BYTES],
                         running=load[name])

        def free(name: str) -> bool:
            return load[name] < capacity(admitted[name]) and name not in free_at

        older_free = self.settings.older_free_candidates
        for prefix in request.restore_keys:
            found = found_free = 0
            # Newest entries first: a node holding a newer one has less to fetch.
            for key in self._inventory.newest_keys_under(prefix, count=self.settings.max_prefix_keys):
                if key == request.key:
                    continue
                if found >= limit and found_free >= older_free:
                    break
                holders = self._inventory.holders(key)
                names = usable(n for n in holders if n not in candidates)
                if found >= limit:
                    # The holders of the newest entries are often the nodes running the workspace's builds,
                    # all busy under a low bound: past the first ``limit``, only free holders of older
                    # entries are looked at, until ``older_free_candidates`` free ones are found.
                    names = [n for n in names if free(n)][:older_free - found_free]
                for name in names:
                    entry = holders[name]
                    if target_bytes:
                        sim = similarity(target_sketch, entry[SKETCH])
                        share = self.settings.default_similarity if sim is None else sim
                        fetch = target_bytes * (1.0 - share)
                    else:
                        fetch = 0.0  # nothing newer exists: the older entry is the best there is
                    consider(admitted[name], Warmth.PARTIAL, key, fetch, entry[BYTES], running=load[name])
                    found += 1
                    found_free += free(name)
        # Cold candidates: the first free nodes in the key's rendezvous order; of those, the one whose
        # taking costs costly keys least (ties: rendezvous order).
        cold_fetch = float(target_bytes or self._prefix_bytes(request))
        wanted = self.settings.cold_candidates if guarded else self.settings.explain_candidates
        for name in self._rendezvous(key_hash, weight, live, admitted):
            node = admitted[name]
            if name in candidates or load[name] >= capacity(node) or name in free_at:
                continue
            fills = load[name] + 1 >= capacity(node)
            consider(node, Warmth.COLD, "", cold_fetch, 0.0,
                     guard.cost(name, request, duration) if guarded and fills else 0.0,
                     load[name])
            wanted -= 1
            if wanted == 0:
                break
        if not candidates:
            return Decision(node=None, warmth=Warmth.COLD,
                            reason=f"waiting for a free slot: {len(admitted)} capable node(s), all busy")
        ranked = sorted(candidates.values(), key=lambda c: c.sort_key(tie_s))
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

    def _target(self, request: PlacementRequest) -> tuple[int, bytes]:
        """Size and sketch of the exact entry, when some node reports it."""
        if not request.key:
            return 0, b""
        holders = self._inventory.holders(request.key)
        if not holders:
            return 0, b""
        entry = next(iter(holders.values()))
        return entry[BYTES], entry[SKETCH]

    def _prefix_bytes(self, request: PlacementRequest) -> int:
        for prefix in request.restore_keys:
            for key in self._inventory.newest_keys_under(prefix, count=1):
                return next(iter(self._inventory.holders(key).values()))[BYTES]
        return 0

    def _restore_cost(self, key: str) -> float:
        """Seconds to fetch and extract ``key`` onto a node that holds nothing of it (0 when unknown)."""
        holders = self._inventory.holders(key)
        if not holders:
            return 0.0
        return self.estimator.restore_s(next(iter(holders.values()))[BYTES], 0)

    def _arrival_rate(self, workspace: str, now: float) -> float:
        rate, last = self._rate.get(workspace, (0.0, now))
        return rate * math.exp(-(now - last) / self.settings.demand_window_s)

    def _guard(self, live: dict[str, NodeRecord], load: dict[str, int], bound: int, now: float) -> _Guard:
        """The free holders of the recently used costly keys (at most ``guarded_keys`` keys)."""
        guard = _Guard()
        limit = self.settings.max_warm_candidates
        for key, workspace in self._costly.items():
            holders = self._inventory.holders(key)
            if not holders or len(holders) > 4 * limit:
                continue  # none, or so many that one more busy holder hardly matters
            size = next(iter(holders.values()))[BYTES]
            gain = self.estimator.restore_s(size, 0) - size / self.settings.materialize_bps
            free = []
            for name in holders:
                node = live.get(name)
                if node is not None and load[name] < min(node.info.slots, bound) and self._fresh(node, now):
                    free.append(name)
                    if len(free) > 2:
                        break  # more than two free holders: taking one costs nothing worth weighing
            if 0 < len(free) <= 2:
                guard.add(key, self._arrival_rate(workspace, now), gain, free)
        return guard

    def _keep_free_holder(self, request: PlacementRequest, live: dict[str, NodeRecord], load: dict[str, int],
                          bound: int, now: float) -> None:
        """After placing a build of a costly key: touch its replicas, and prewarm it where it is needed so
        that it keeps a holder below the load bound (two while its builds overlap often)."""
        s = self.settings
        key = request.key
        holders = self._inventory.holders(key)
        if not holders:
            return
        target = next(iter(holders.values()))
        restore_s = self.estimator.restore_s(target[BYTES], 0)
        if restore_s < s.costly_restore_s:
            return
        key_hash = _h64(key)
        rank = lambda name: _mix(key_hash ^ self._node_h(name))  # noqa: E731
        # Keep the replicas alive: prewarming an entry a node holds touches it in the node's LRU order.
        for name in heapq.nlargest(s.touch_replicas, (n for n in holders if n in live), key=rank):
            self._queue_prewarm(name, key, request.restore_keys)
        busy = self._arrival_rate(request.workspace, now) * self.estimator.build_s(request)
        want = s.spare_holders if busy >= s.spare_busy else 1
        free = 0
        for name in holders:
            node = live.get(name)
            if node is not None and load[name] < min(node.info.slots, bound):
                free += 1
                if free >= want:
                    return
        asked = self._replicating.setdefault(key, {})
        for name, at in list(asked.items()):
            if name in holders or now - at > 2 * restore_s + 30:
                del asked[name]
        need = want - free - len(asked)
        if need <= 0:
            return
        # Where it costs least to fetch: a node holding an older entry of the workspace fetches only the
        # difference; else the next nodes in the key's rendezvous order.
        options: dict[str, float] = {}
        for prefix in request.restore_keys:
            for older in self._inventory.newest_keys_under(prefix, count=4):
                if older == key:
                    continue
                for name, entry in self._inventory.holders(older).items():
                    if name in holders or name in asked or name not in live:
                        continue
                    share = similarity(target[SKETCH], entry[SKETCH])
                    fetch = target[BYTES] * (1.0 - (s.default_similarity if share is None else share))
                    options[name] = min(options.get(name, fetch), fetch)
        for name in self.order(key, live):
            if name not in holders and name not in asked:
                options.setdefault(name, float(target[BYTES]))
                break
        for name in sorted(options, key=lambda n: (options[n], -rank(n)))[:need]:
            asked[name] = now
            self._queue_prewarm(name, key, request.restore_keys)
        if not asked:
            del self._replicating[key]

    def _evict_superseded(self, node: str, key: str, restore_keys: tuple[str, ...]) -> None:
        """``node`` now holds ``key``: its older entries under the same restore prefixes are superseded
        (a restore from the prefix takes the newest, and the workspace's builds have moved on to ``key``),
        so ask the node to evict them rather than let them push other workspaces' entries out of its LRU."""
        entry = self._inventory.holders(key).get(node)
        if entry is None:
            return
        for prefix in restore_keys:
            if not key.startswith(prefix):
                continue
            for older in self._inventory.newest_keys_under(prefix, count=self.settings.max_prefix_keys):
                held = self._inventory.holders(older).get(node)
                if older != key and held is not None and held[CREATED] < entry[CREATED]:
                    self._pending_evictions.append((node, older))

    def _is_hot(self, key: str) -> bool:
        seen = self._demand.get(key)
        if not seen:
            return False
        s = self.settings
        return len(seen) >= s.hot_builds and seen[0] >= self._clock.now() - s.hot_window_s

    def _prewarm_next(self, key: str, restore_keys: tuple[str, ...], live: Sequence[NodeRecord],
                      reason_node: str = "", count: int = 0) -> None:
        """Prewarm ``key`` onto the next nodes in its rendezvous order that do not hold it."""
        holders = self._inventory.holders(key)
        count = count or self.settings.prewarm_replicas
        by_name = {n.name: n for n in live}
        targets = (name for name in self.order(key, by_name) if name not in holders and name != reason_node)
        for name in itertools.islice(targets, count):
            self._queue_prewarm(name, key, restore_keys)

    def _queue_prewarm(self, node: str, key: str, restore_keys: tuple[str, ...]) -> None:
        now = self._clock.now()
        cooldown = self.settings.prewarm_cooldown_s
        last = self._prewarmed.get((node, key))
        if last is not None and now - last < cooldown:
            return
        self._prewarmed.pop((node, key), None)  # re-inserted at the end: the map stays in time order
        self._prewarmed[(node, key)] = now
        _trim(self._prewarmed, lambda at: now - at >= cooldown, self.settings.max_tracked_keys)
        self._pending_prewarms.append((node, key, restore_keys))

    def tracked(self) -> dict[str, int]:
        """How much the scheduler remembers, by kind (exported as a metric; each is bounded)."""
        return {"running": len(self._running), "demand": len(self._demand), "rates": len(self._rate),
                "prewarms": len(self._prewarmed), "replicating": len(self._replicating),
                "build_times": self.estimator.tracked()}
