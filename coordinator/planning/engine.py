"""A discrete-event simulator of a build fleet: the engine behind ``stoker plan`` and bench/simulate.py.

The ``stoker`` policy is the coordinator's own scheduler (``stoker.coordinator.placement.scheduler``), driven
through the same calls the coordinator makes — ``plan()``, ``started()``, ``finished()``,
``node_lost()``, ``node_joined()`` — with the node registry and inventory index the coordinator uses,
on a clock that is the simulation's. ``least_loaded`` is the cache-blind baseline; the benchmark's other
peers (what a user would otherwise pick) live in bench/simkit/engine.py and subclass ``Policy``.

The model, per build: it waits in a queue until its policy places it on a node with a free slot; it
restores its cache (nothing to fetch when the node holds the exact key; only the changed share when
the node holds an older entry of the workspace; everything otherwise), then fills in whatever the
restored cache lacked from a package registry (``install_bps``), then runs for its duration. A node
keeps entries under its disk budget, least recently used first out. Saved entries go to the shared
blob store. Sizes are bytes as stored (the same compression for every policy).

What stoker's scheduler is told is what agents report: each entry's size, age and a bottom-k MinHash
sketch of its content digests (here each workspace's content is modelled as ``CONTENT_UNITS`` digests of
which every new key replaces its ``changed_fraction``). A prewarm behaves like the agent's: it touches
an entry the node already holds and otherwise fetches only what the node's newest older entry of the
workspace lacks.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass, field

from stoker.common.sketch import pack as pack_sketch
from stoker.coordinator.placement.domain import (
    EntryRecord,
    ImageRecord,
    NodeInfo,
    NodeState,
    PlacementRequest,
)
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.placement.scheduler import Scheduler, SchedulerSettings
from stoker.coordinator.planning.trace import Build, Fleet, FleetEvent

PACK_BYTES = 8 * 1024 * 1024  # one ranged GET / one PUT moves about this much
CONTENT_UNITS = 2048  # content digests per simulated entry (for the sketches agents report)
SKETCH_K = 64  # as the agent's content_sketch


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


@dataclass
class Job:
    id: int
    build: Build
    arrival: float
    attempt: int = 1
    node: str = ""
    placed: float = 0.0
    ready: float = 0.0
    finish: float = 0.0
    warmth: str = ""
    fetched: float = 0.0
    restored: float = 0.0
    missing: float = 0.0
    pulled: float = 0.0
    """Bytes of the build's image its node pulled first (0: the node held it)."""

    @property
    def request_id(self) -> str:
        return f"j{self.id}-a{self.attempt}"


@dataclass
class SimNode:
    name: str
    zone: str
    slots: int
    disk: float
    born: float
    alive: bool = True
    died: float = math.inf
    running: dict[int, Job] = field(default_factory=dict)
    cache: collections.OrderedDict = field(default_factory=collections.OrderedDict)  # key → bytes
    images: collections.OrderedDict = field(
        default_factory=collections.OrderedDict
    )  # image → bytes, LRU first
    busy_area: float = 0.0
    last_change: float = 0.0

    def account(self, now: float) -> None:
        self.busy_area += len(self.running) * (now - self.last_change)
        self.last_change = now

    @property
    def free(self) -> int:
        return self.slots - len(self.running)


class Sim:
    def __init__(self, fleet: Fleet, records: list, policy: Policy, seed: int = 1) -> None:
        self.fleet = fleet
        self.records = records
        self.policy = policy
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.blob: dict[str, float] = {}
        self.version: dict[str, tuple[str, int]] = {}  # key → (workspace, index)
        self.changed: dict[str, list[float]] = collections.defaultdict(list)  # workspace → fraction per index
        self.keys_of: dict[str, list[str]] = collections.defaultdict(list)  # workspace → keys by index
        # Each entry's content as CONTENT_UNITS digests: a new key of a workspace replaces the changed share
        # of the previous key's; its sketch (what an agent reports) is the bottom-k MinHash of them.
        self._content: dict[str, list[int]] = {}
        self.sketch: dict[str, tuple[int, ...]] = {}
        self._tick_pending = False
        self.queue: list[Job] = []
        self.jobs: list[Job] = []
        self._events: list = []
        self._seq = itertools.count()
        self.idle_while_queued = 0.0
        self.gets = self.puts = 0
        self.put_bytes = 0.0
        self.prewarm_bytes = 0.0
        self.placements: list[tuple[float, bool]] = []
        self.failures: list[float] = []
        self.decision_s: list[float] = []
        self._node_counter = itertools.count(fleet.nodes)
        for i in range(fleet.nodes):
            named = i < len(fleet.node_names)
            zone = fleet.node_zones[i] if i < len(fleet.node_zones) else fleet.zones[i % len(fleet.zones)]
            self._add_node(fleet.node_names[i] if named else f"node-{i:03d}", zone)

    # -- nodes and their caches ------------------------------------------------------------------------
    def _add_node(self, name: str, zone: str) -> SimNode:
        node = SimNode(
            name, zone, self.fleet.slots, self.fleet.disk_bytes, born=self.now, last_change=self.now
        )
        self.nodes[name] = node
        self.policy.node_added(self, node)
        return node

    def cache_put(self, node: SimNode, key: str, size: float) -> None:
        upserted = [key]
        node.cache[key] = size
        node.cache.move_to_end(key)
        removed = []
        while sum(node.cache.values()) > node.disk and len(node.cache) > 1:
            victim, _ = node.cache.popitem(last=False)
            if victim == key:
                node.cache[key] = size
                continue
            removed.append(victim)
        self.policy.cache_changed(self, node, upserted, removed)

    def cache_touch(self, node: SimNode, key: str) -> None:
        node.cache.move_to_end(key)
        self.policy.cache_changed(self, node, [key], [])

    def diff(self, old_key: str, new_key: str) -> float:
        """Share of the new entry's bytes that differ from the old one (same workspace)."""
        ws, new_i = self.version[new_key]
        _, old_i = self.version[old_key]
        if old_i >= new_i:
            return 0.0 if old_i == new_i else 1.0
        same = 1.0
        for i in range(old_i + 1, new_i + 1):
            same *= 1.0 - self.changed[ws][i]
        return 1.0 - same

    def _local_prefix_entry(self, node: SimNode, build: Build) -> str | None:
        best = None
        for key in node.cache:
            if any(key.startswith(p) for p in build.restore_keys) and key in self.version:
                if best is None or self.version[key][1] > self.version[best][1]:
                    best = key
        return best

    def _local_older_entry(self, node: SimNode, key: str) -> str | None:
        """The newest entry of ``key``'s workspace that ``node`` holds, older than ``key``."""
        ws, index = self.version[key]
        best = None
        for held in node.cache:
            version = self.version.get(held)
            if version is not None and version[0] == ws and version[1] < index:
                if best is None or version[1] > self.version[best][1]:
                    best = held
        return best

    def _blob_prefix_entry(self, build: Build) -> str | None:
        """The newest older version of the workspace's entry in the blob store."""
        ws, index = self.version[build.key]
        for key in reversed(self.keys_of[ws][:index]):
            if key in self.blob:
                return key
        return None

    # -- events ------------------------------------------------------------------------------------------
    def _push(self, t: float, kind: str, payload) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, payload))

    def run(self) -> Sim:
        for r in self.records:
            self._push(r.t, "arrival" if isinstance(r, Build) else "fleet", r)
        job_ids = itertools.count()
        while self._events:
            t, _, kind, payload = heapq.heappop(self._events)
            self._advance(t)
            if kind == "arrival":
                self._register_version(payload)
                job = Job(next(job_ids), payload, arrival=t)
                self.jobs.append(job)
                self.queue.append(job)
            elif kind == "finish":
                self._finish(*payload)
            elif kind == "ready":
                self._ready(*payload)
            elif kind == "prewarmed":
                node_name, key = payload
                node = self.nodes.get(node_name)
                if node is not None and node.alive and key in self.blob:
                    self.cache_put(node, key, self.blob[key])
            elif kind == "fleet":
                self._fleet_event(payload)
            elif kind == "tick":
                self._tick_pending = False
            if self._events and self._events[0][0] == t:
                continue  # handle everything at this instant before placing
            self._dispatch()
            if self.queue and not self._tick_pending:
                # Waiting builds are looked at again now and then (aging, a wait that ran long).
                self._tick_pending = True
                self._push(self.now + 15.0, "tick", None)
        for node in self.nodes.values():
            node.account(self.now)
        return self

    def _advance(self, t: float) -> None:
        dt = t - self.now
        if dt > 0 and self.queue:
            self.idle_while_queued += dt * sum(1 for n in self.nodes.values() if n.alive and n.free > 0)
        self.now = t
        self.policy.clock.t = t

    def _register_version(self, build: Build) -> None:
        if build.key in self.version:
            return
        ws = build.workspace
        index = len(self.changed[ws])
        self.changed[ws].append(build.changed_fraction if index else 0.0)
        self.keys_of[ws].append(build.key)
        self.version[build.key] = (ws, index)
        content = self._content.get(ws)
        rng = random.Random(f"{ws}/{index}")
        if content is None:
            content = [rng.getrandbits(64) for _ in range(CONTENT_UNITS)]
        else:
            content = list(content)
            for i in rng.sample(range(CONTENT_UNITS), round(build.changed_fraction * CONTENT_UNITS)):
                content[i] = rng.getrandbits(64)
        self._content[ws] = content
        self.sketch[build.key] = tuple(heapq.nsmallest(SKETCH_K, set(content)))

    def _dispatch(self) -> None:
        if not self.queue:
            return
        started = time.perf_counter()
        placements, prewarms = self.policy.place(self)
        self.decision_s.append((time.perf_counter() - started) / len(self.queue))
        placed = set()
        for job, node_name in placements:
            self._start(job, self.nodes[node_name])
            placed.add(job.id)
        if placed:
            self.queue = [j for j in self.queue if j.id not in placed]
        for node_name, key in self.policy.evictions():
            node = self.nodes.get(node_name)
            if node is not None and node.alive and key in node.cache:
                del node.cache[key]  # the agent's evict command
                self.policy.cache_changed(self, node, [], [key])
        for node_name, key in prewarms:
            node = self.nodes.get(node_name)
            if node is None or not node.alive or key not in self.blob:
                continue
            if key in node.cache:
                self.cache_touch(node, key)  # the agent touches an entry it already holds
                continue
            # Like a restore, a prewarm fetches only what the node's newest older entry lacks.
            size = self.blob[key]
            older = self._local_older_entry(node, key)
            fetch = size if older is None else self.diff(older, key) * size
            self.prewarm_bytes += fetch
            if fetch:
                self.gets += max(1, math.ceil(fetch / PACK_BYTES))
            self._push(
                self.now + fetch / self.fleet.fetch_bps + fetch / self.fleet.extract_bps,
                "prewarmed",
                (node_name, key),
            )

    def _start(self, job: Job, node: SimNode) -> None:
        f = self.fleet
        b = job.build
        node.account(self.now)
        node.running[job.id] = job
        job.node, job.placed = node.name, self.now
        fetch = missing = 0.0
        if self.policy.all_warm:
            job.warmth, restore = "warm", b.bytes / f.materialize_bps
        elif b.key in node.cache:
            job.warmth, restore = "warm", b.bytes / f.materialize_bps
            self.cache_touch(node, b.key)
        else:
            local = self._local_prefix_entry(node, b)
            if local is not None:
                job.warmth = "partial"
                self.cache_touch(node, local)
                if b.key in self.blob:
                    fetch = self.diff(local, b.key) * b.bytes
                else:
                    missing = self.diff(local, b.key) * b.bytes
            else:
                job.warmth = "cold"
                if b.key in self.blob:
                    fetch = self.blob[b.key]
                else:
                    older = self._blob_prefix_entry(b)
                    if older is not None:
                        fetch = self.blob[older]
                        missing = self.diff(older, b.key) * b.bytes
                    else:
                        missing = b.bytes
            restore = fetch / f.fetch_bps + fetch / f.extract_bps
            if job.warmth == "partial":
                restore += b.bytes / f.materialize_bps
        if fetch:
            self.gets += max(1, math.ceil(fetch / PACK_BYTES))
        job.fetched, job.missing = fetch, missing
        job.restored = b.bytes - missing
        job.pulled = self._pull(node, b)
        job.ready = self.now + restore + job.pulled / f.pull_bps
        job.finish = job.ready + missing / f.install_bps + b.duration_s
        self.placements.append((self.now, job.warmth != "cold"))
        self.policy.started(self, job, node)
        self._push(job.ready, "ready", (job.id, job.attempt, node.name))
        self._push(job.finish, "finish", (job.id, job.attempt, node.name))

    def _pull(self, node: SimNode, b: Build) -> float:
        """Bytes of ``b``'s image ``node`` pulls before the build (0: it holds it, or the build names none);
        the node keeps it, least recently used images out first beyond the fleet's image budget (never one
        a running build uses)."""
        if not b.image:
            return 0.0
        if b.image in node.images:
            node.images.move_to_end(b.image)
            return 0.0
        node.images[b.image] = float(b.image_bytes)
        in_use = {j.build.image for j in node.running.values()}
        for image in list(node.images):
            if sum(node.images.values()) <= self.fleet.image_budget_bytes:
                break
            if image not in in_use:
                del node.images[image]
        self.policy.images_changed(self, node)
        return float(b.image_bytes)

    def _ready(self, job_id: int, attempt: int, node_name: str) -> None:
        node = self.nodes[node_name]
        job = node.running.get(job_id)
        if job is None or job.attempt != attempt or not node.alive:
            return
        if job.build.key in self.blob and job.build.key not in node.cache and not self.policy.all_warm:
            self.cache_put(node, job.build.key, self.blob[job.build.key])

    def _finish(self, job_id: int, attempt: int, node_name: str) -> None:
        node = self.nodes[node_name]
        job = node.running.get(job_id)
        if job is None or job.attempt != attempt:
            return
        node.account(self.now)
        del node.running[job_id]
        b = job.build
        first_save = b.key not in self.blob
        if first_save:
            self.blob[b.key] = float(b.bytes)
            changed = job.missing or b.bytes
            self.puts += max(1, math.ceil(changed / PACK_BYTES))
            self.put_bytes += changed
        keeps = first_save or b.key in node.cache or self.fleet.keep_duplicate_saves
        if not self.policy.all_warm and keeps:
            self.cache_put(node, b.key, float(b.bytes))
        self.policy.finished(self, job, node)

    def _fleet_event(self, event: FleetEvent) -> None:
        if event.event == "node_add":
            zone = event.zone or self.fleet.zones[0]
            if event.node and event.count == 1 and event.node not in self.nodes:
                self._add_node(event.node, zone)  # a named node (a fleet's history names its joiners)
                return
            for _ in range(event.count):
                self._add_node(f"node-{next(self._node_counter):03d}", zone)
            return
        node = self.nodes.get(event.node)
        if node is None or not node.alive:
            return
        node.account(self.now)
        node.alive, node.died = False, self.now
        self.failures.append(self.now)
        lost = list(node.running.values())
        node.running.clear()
        self.policy.node_failed(self, node)
        node.cache.clear()
        node.images.clear()
        for job in lost:  # requeued: it starts over
            job.attempt += 1
            job.node = ""
            self.queue.append(job)


@dataclass(frozen=True)
class Usage:
    """What a replay's fleet was and cost: node-hours alive and busy, bytes fetched from the blob store
    (restores and prewarms), and the cost of all of it at the fleet's prices."""

    node_hours: float
    busy_hours: float
    fetched: float
    cost: float


def usage(sim: Sim, fleet: Fleet) -> Usage:
    """``sim``'s usage, priced at ``fleet``'s prices."""
    horizon = sim.now
    node_hours = sum(min(node.died, horizon) - node.born for node in sim.nodes.values()) / 3600
    busy_hours = sum(node.busy_area / node.slots for node in sim.nodes.values()) / 3600
    fetched = sum(j.fetched for j in sim.jobs) + sim.prewarm_bytes
    prices = fleet.prices
    cost = (
        node_hours * prices.get("node_hour", 0)
        + sim.gets * prices.get("get_request", 0)
        + sim.puts * prices.get("put_request", 0)
        + (fetched / 1e9) * prices.get("gb_transfer", 0)
    )
    return Usage(node_hours, busy_hours, fetched, cost)


# -- policies ------------------------------------------------------------------------------------------------
class Policy:
    name = "policy"
    all_warm = False

    def __init__(self) -> None:
        self.clock = SimClock()

    def node_added(self, sim: Sim, node: SimNode) -> None:
        pass

    def node_failed(self, sim: Sim, node: SimNode) -> None:
        pass

    def cache_changed(self, sim: Sim, node: SimNode, upserted: list[str], removed: list[str]) -> None:
        pass

    def images_changed(self, sim: Sim, node: SimNode) -> None:
        pass

    def started(self, sim: Sim, job: Job, node: SimNode) -> None:
        pass

    def finished(self, sim: Sim, job: Job, node: SimNode) -> None:
        pass

    def place(self, sim: Sim) -> tuple[list[tuple[Job, str]], list[tuple[str, str]]]:
        """Place queued jobs in arrival order; a job the policy cannot place now keeps waiting."""
        free = {n.name: n.free for n in sim.nodes.values() if n.alive}
        out = []
        for job in sorted(sim.queue, key=lambda j: (-j.build.priority, j.arrival)):
            choice = self.choose(sim, job, free)
            if choice is not None and free.get(choice, 0) > 0:
                free[choice] -= 1
                out.append((job, choice))
        return out, []

    def evictions(self) -> list[tuple[str, str]]:
        """(node, key) entries the policy asks nodes to evict (after its last ``place()``)."""
        return []

    def choose(self, sim: Sim, job: Job, free: dict[str, int]) -> str | None:
        raise TypeError(f"{type(self).__name__} must implement choose()")


def _load(sim: Sim, name: str, free: dict[str, int]) -> int:
    return sim.nodes[name].slots - free[name]


class LeastLoadedPolicy(Policy):
    name = "least_loaded"

    def choose(self, sim, job, free):
        options = [n for n, f in free.items() if f > 0]
        return min(options, key=lambda n: (_load(sim, n, free), n)) if options else None


class StokerPolicy(Policy):
    """stoker's scheduler, driven through the coordinator's own calls and data structures."""

    name = "stoker"

    def __init__(self, fleet: Fleet, settings: SchedulerSettings | None = None) -> None:
        super().__init__()
        self.registry = NodeRegistry(self.clock, lease_ttl_s=15.0)
        self.inventory = InventoryIndex()
        base = settings or SchedulerSettings()
        # The agents' defaults before anything is learned: the fleet's nominal rates.
        self.scheduler = Scheduler(
            self.inventory,
            self.clock,
            SchedulerSettings(
                **{
                    **base.__dict__,
                    "fetch_bps": fleet.fetch_bps,
                    "extract_bps": fleet.extract_bps,
                    "materialize_bps": fleet.materialize_bps,
                    "pull_bps": fleet.pull_bps,
                    **fleet.scheduler_rates,  # as a real coordinator's were (an exported fleet spec)
                }
            ),
        )
        self._generation: dict[str, int] = {}
        self._requests: dict[int, PlacementRequest] = {}
        self._evictions: list[tuple[str, str]] = []

    def evictions(self):
        out, self._evictions = self._evictions, []
        return out

    def _request(self, job: Job) -> PlacementRequest:
        b = job.build
        return PlacementRequest(
            id=job.request_id,
            workspace=b.workspace,
            key=b.key,
            restore_keys=b.restore_keys,
            tenant=b.tenant,
            priority=b.priority,
            enqueued_at=job.arrival,
            image=b.image,
        )

    def node_added(self, sim, node):
        record = self.registry.register(
            NodeInfo(name=node.name, zone=node.zone, slots=node.slots, disk_capacity_bytes=int(node.disk))
        )
        self.registry.attach(node.name, record.session_id)
        self.inventory.apply_snapshot(node.name, 0, [])
        self._generation[node.name] = 0
        self.scheduler.node_joined(record, self.registry.all())

    def node_failed(self, sim, node):
        record = self.registry.get(node.name)
        record.state = NodeState.LOST  # the coordinator marks it lost once its lease runs out
        held = self.inventory.entries(node.name)
        for holder in list(record.holders):
            self.scheduler.finished(holder)
        record.holders.clear()
        self.scheduler.node_lost(node.name, held, self.registry.all())
        self.inventory.drop_node(node.name)

    def cache_changed(self, sim, node, upserted, removed):
        gen = self._generation[node.name] + 1
        self._generation[node.name] = gen
        entries = []
        for key in upserted:
            size = node.cache.get(key)
            if size is not None:
                entries.append(
                    EntryRecord(
                        key=key,
                        bytes=int(size),
                        files=0,
                        created=float(sim.version.get(key, ("", 0))[1]),
                        last_used=sim.now,
                        sketch=pack_sketch(sim.sketch.get(key, ())),
                    )
                )
        self.inventory.apply_delta(node.name, gen, entries, removed)

    def images_changed(self, sim, node):
        self.registry.get(node.name).set_images(
            tuple(ImageRecord(image, (image,), int(size), sim.now) for image, size in node.images.items())
        )

    def started(self, sim, job, node):
        request = self._request(job)
        self._requests[job.id] = request
        self.registry.get(node.name).holders.add(request.id)
        self.scheduler.started(request, node.name)

    def finished(self, sim, job, node):
        record = self.registry.find(node.name)
        if record is not None:
            record.holders.discard(job.request_id)
        restore_s = job.ready - job.placed
        self.scheduler.finished(
            job.request_id,
            key=job.build.key,
            workspace=job.build.workspace,
            run_s=job.finish - job.ready,
            bytes_fetched=int(job.fetched),
            bytes_restored=int(job.restored),
            restore_s=restore_s,
        )

    def place(self, sim):
        for record in self.registry.all():
            if record.state is NodeState.READY:
                record.last_seen = sim.now  # heartbeats
        by_id = {}
        requests = []
        for job in sim.queue:
            r = self._request(job)
            by_id[r.id] = job
            requests.append(r)
        plan = self.scheduler.plan(requests, self.registry.all())
        placements = [(by_id[r.id], d.node) for r, d in plan.assignments]
        self._evictions = plan.evictions
        return placements, [(node, key) for node, key, _ in plan.prewarms]


POLICIES = {"stoker": None, "least_loaded": LeastLoadedPolicy}
"""The policies the planner compares: stoker's scheduler, and a cache-blind least-loaded baseline (the
simulator's other peers live with the benchmark, in bench/simkit)."""


def make_policy(name: str, fleet: Fleet, settings: SchedulerSettings | None = None) -> Policy:
    if name == "stoker":
        return StokerPolicy(fleet, settings)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")
    return LeastLoadedPolicy()
