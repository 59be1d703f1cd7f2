"""The coordinator's build history as a simulator trace and a fleet spec (``stoker history export`` and
``stoker history fleet``), from plain records: the CLI fills them from ``ExportHistory``.

What a trace record says, and where each figure comes from:

* ``t``: seconds from the first build's submission; ``workspace``, ``tenant``, ``priority`` as the build
  ran (no ``image``: the history keeps no image sizes); ``key`` and ``restore_keys`` with the build's
  cache scope in front (tenants' keys never meet, as in the fleet).
* ``bytes``: the entry's size as stored (what a cold restore fetches): the largest size any restore of the
  key materialized (else the build that saved it: what it restored, or what it uploaded when it restored
  nothing), times the fleet's measured compression (bytes fetched / bytes materialized by cold restores).
  ``files``: the most files a restore of it materialized.
* ``changed_fraction``: measured, not assumed: what partial restores of the key fetched over its stored size
  (their median), else what the build that saved it uploaded (only content the store lacked) after
  restoring an older entry; a key with neither takes the median of the others; 0 for a workspace's first key.
* ``duration_s``: how long the build held its slot beyond its pull and restore: from its placement to its
  end (the node's set-up, the command, the cache save: its entry reaches the node's inventory and the blob
  store only when the save ends), less the pull and restore the simulator works out itself. It includes
  whatever the build installed because its cache lacked it, so the fleet spec's ``install_bps`` is set so
  high that the simulator adds nothing.
* ``observed``: what the fleet really did (warmth, bytes fetched, node, time to ready); the simulator ignores
  it, ``stoker plan`` and the accuracy benchmark compare with it.

A build without a cache key still held a slot: it becomes a record of key ``<workspace>/~no-cache`` and 0
bytes. Builds that never ran (refused, cancelled while queued) are left out.

Node joins and losses: the nodes alive when the first build arrived are the fleet spec's ``nodes``, under
their own names and zones (``node_names``, ``node_zones``: the replay breaks ties between nodes as the
coordinator did); later joins become ``node_add`` and losses ``node_fail``, under the nodes' own names too
(a node that comes back after it was lost joins as ``name~1``, ``name~2``: a new node, its cache gone).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from stoker.coordinator.planning.trace import Build, Fleet, FleetEvent

NO_CACHE = "~no-cache"
UNLIMITED_INSTALL_BPS = 1e15
"""The trace's run times already include installing what a cache lacked (see the module's docstring)."""
_MIN_BYTES = 64 * 1024  # restores that moved less in all say little about a rate


@dataclass(frozen=True)
class RunRecord:
    """One finished build as ``ExportHistory`` reports it (times in Unix seconds and seconds)."""

    id: str
    created: float
    workspace: str
    tenant: str
    key: str
    restore_keys: tuple[str, ...] = ()
    priority: int = 0
    image: str = ""
    ran: bool = True
    """Whether it was placed on a node at all."""
    node: str = ""
    zone: str = ""
    warmth: str = ""
    """``warm``, ``partial``, ``cold`` or ``""`` (no cache)."""
    restored_key: str = ""
    bytes_fetched: int = 0
    bytes_restored: int = 0
    files_restored: int = 0
    bytes_uploaded: int = 0
    saved: bool = False
    queued_s: float = 0.0
    pull_s: float = 0.0
    restore_s: float = 0.0
    run_s: float = 0.0
    save_s: float = 0.0
    total_s: float = 0.0
    """Submission to the end (``Timings.total_s``)."""
    placed_after_s: float = -1.0
    started_after_s: float = -1.0
    first_line_after_s: float = -1.0


@dataclass(frozen=True)
class NodeChange:
    """A node joined (``joined``) or was lost (``lost``)."""

    t: float
    node: str
    event: str
    zone: str = ""
    slots: int = 0
    disk_bytes: int = 0


@dataclass(frozen=True)
class Measured:
    """The rates a fleet spec was measured from, and from how many restores."""

    compression: float = 1.0
    fetch_extract_bps: float = 0.0
    materialize_bps: float = 0.0
    cold_restores: int = 0
    warm_restores: int = 0


@dataclass(frozen=True)
class History:
    """A history as a trace (builds and fleet events in time order) and the fleet it ran on."""

    records: list[Build | FleetEvent]
    fleet: Fleet
    measured: Measured
    start: float
    """Unix time of ``t`` = 0."""


def from_history(
    runs: Iterable[RunRecord], changes: Iterable[NodeChange], scheduler_rates: dict | None = None
) -> History:
    """The trace and fleet spec of a history; ``scheduler_rates`` the coordinator's scheduler's estimates
    (``ExportHistory``), which the fleet spec keeps so a replay's scheduler decides as that one did."""
    ran = sorted((r for r in runs if r.ran), key=lambda r: r.created)
    changes = sorted(changes, key=lambda c: c.t)
    start = ran[0].created if ran else (changes[0].t if changes else 0.0)
    measured = measure(ran)
    sizes, files, changed = _entries(ran, measured.compression)
    initial, events, _ = _fleet_timeline(changes, start)
    fleet = replace(_fleet(initial, measured), scheduler_rates=dict(scheduler_rates or {}))
    first_key_of: dict[str, str] = {}
    builds: list[Build] = []
    for r in ran:
        key = r.key or f"{r.workspace}/{NO_CACHE}"
        first_key_of.setdefault(r.workspace, key)
        build = Build(
            t=round(r.created - start, 3),
            workspace=r.workspace,
            key=key,
            restore_keys=r.restore_keys,
            bytes=sizes.get(key, 0),
            files=files.get(key, 0),
            changed_fraction=0.0 if first_key_of[r.workspace] == key else changed.get(key, 0.0),
            duration_s=round(_holds_slot_s(r), 3),
            tenant=r.tenant or r.workspace,
            priority=r.priority,
            observed={
                "warmth": r.warmth or "cold",
                "bytes_fetched": r.bytes_fetched,
                "node": r.node,
                "ready_s": round(r.queued_s + r.pull_s + r.restore_s, 3),
            },
        )
        builds.append(build)
    # Fleet events before builds at the same instant (a sorted trace; the engine orders by time only).
    records: list[Build | FleetEvent] = [*events, *builds]
    records.sort(key=lambda r: (r.t, isinstance(r, Build)))
    return History(records=records, fleet=fleet, measured=measured, start=start)


def _holds_slot_s(r: RunRecord) -> float:
    """How long the build held its node's slot beyond its pull and restore (which the simulator works out
    itself): from its placement to its end, when both are known; else its run and save."""
    if r.total_s > 0 and r.placed_after_s >= 0:
        held = r.total_s - r.placed_after_s - max(0.0, r.pull_s) - max(0.0, r.restore_s)
        if held > 0:
            return held
    return max(0.0, r.run_s) + max(0.0, r.save_s)


def measure(runs: list[RunRecord]) -> Measured:
    """The fleet's compression and restore rates, from what its restores moved and how long they took."""
    cold = [r for r in runs if r.warmth == "cold" and r.bytes_fetched > 0 and r.bytes_restored > 0]
    fetched = sum(r.bytes_fetched for r in cold)
    materialized = sum(r.bytes_restored for r in cold)
    compression = min(1.0, fetched / materialized) if fetched and materialized else 1.0
    fetching = [
        r for r in runs if r.warmth in ("cold", "partial") and r.bytes_fetched > 0 and r.restore_s > 0
    ]
    moved = sum(r.bytes_fetched for r in fetching)
    fetch_extract = moved / sum(r.restore_s for r in fetching) if moved >= _MIN_BYTES else 0.0
    warm = [r for r in runs if r.warmth == "warm" and r.bytes_restored > 0 and r.restore_s > 0]
    local = sum(r.bytes_restored for r in warm) * compression
    materialize = local / sum(r.restore_s for r in warm) if local >= _MIN_BYTES else 0.0
    return Measured(
        compression=round(compression, 4),
        fetch_extract_bps=fetch_extract,
        materialize_bps=materialize,
        cold_restores=len(fetching),
        warm_restores=len(warm),
    )


def _entries(
    runs: list[RunRecord], compression: float
) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """Per key: its stored size, its files, and the share of it its saver uploaded."""
    materialized: dict[str, int] = {}
    files: dict[str, int] = {}
    for r in runs:
        if r.restored_key and r.bytes_restored:
            materialized[r.restored_key] = max(materialized.get(r.restored_key, 0), r.bytes_restored)
            files[r.restored_key] = max(files.get(r.restored_key, 0), r.files_restored)
    savers: dict[str, RunRecord] = {}
    for r in runs:
        if r.key and r.saved and r.key not in savers:
            savers[r.key] = r
    for key, r in savers.items():
        if key not in materialized:
            uploaded = int(r.bytes_uploaded / compression) if compression else r.bytes_uploaded
            materialized[key] = max(r.bytes_restored, uploaded) if r.restored_key else uploaded
            files.setdefault(key, r.files_restored or 1)
    sizes = {k: int(v * compression) for k, v in materialized.items()}
    # The changed share of a key, best measure first: what partial restores of it fetched (the key itself
    # restored onto a node holding an older entry: only the difference moved), else what its saver uploaded
    # after restoring an older entry; else (its saver restored nothing: it ran before any older entry was
    # saved) the median of the other keys' measured shares.
    fetched_share: dict[str, list[float]] = {}
    for r in runs:
        if r.warmth == "partial" and r.key and r.restored_key == r.key and sizes.get(r.key):
            fetched_share.setdefault(r.key, []).append(min(1.0, r.bytes_fetched / sizes[r.key]))
    changed: dict[str, float] = {}
    for key, shares in fetched_share.items():
        changed[key] = round(statistics.median(shares), 4)
    for key, r in savers.items():
        if key not in changed and r.restored_key and r.restored_key != key and sizes.get(key):
            changed[key] = round(min(1.0, r.bytes_uploaded / sizes[key]), 4)
    typical = round(statistics.median(changed.values()), 4) if changed else 1.0
    for key in sizes:
        changed.setdefault(key, typical)
    return sizes, files, changed


def _fleet_timeline(
    changes: list[NodeChange], start: float
) -> tuple[list[NodeChange], list[FleetEvent], dict[str, str]]:
    """The nodes alive at ``start``, the later joins and losses as trace events, and the simulator's name
    for each real node."""
    alive: dict[str, NodeChange] = {}
    for c in changes:
        if c.t > start:
            break
        if c.event == "joined":
            alive[c.node] = c
        elif c.event == "lost":
            alive.pop(c.node, None)
    initial = sorted(alive.values(), key=lambda c: c.node)
    names = {c.node: c.node for c in initial}  # the fleet spec names them (node_names)
    events: list[FleetEvent] = []
    rejoined: Counter[str] = Counter()
    for c in changes:
        if c.t <= start:
            continue
        if c.event == "joined" and c.node not in alive:
            alive[c.node] = c
            # A node that comes back after it was lost joins the replay as a new node (its cache was cleared).
            if c.node in names:
                rejoined[c.node] += 1
                names[c.node] = f"{c.node}~{rejoined[c.node]}"
            else:
                names[c.node] = c.node
            events.append(
                FleetEvent(
                    t=round(c.t - start, 3), event="node_add", node=names[c.node], zone=c.zone or "zone-a"
                )
            )
        elif c.event == "lost" and c.node in alive:
            del alive[c.node]
            events.append(FleetEvent(t=round(c.t - start, 3), event="node_fail", node=names[c.node]))
    return initial, events, names


def _fleet(initial: list[NodeChange], measured: Measured) -> Fleet:
    base = Fleet()
    zones = tuple(sorted({c.zone or "zone-a" for c in initial})) or base.zones
    slots = Counter(c.slots for c in initial if c.slots > 0).most_common(1)
    disks = [c.disk_bytes for c in initial if c.disk_bytes > 0]
    fleet = replace(
        base,
        nodes=len(initial) or base.nodes,
        zones=zones,
        slots=slots[0][0] if slots else base.slots,
        disk_bytes=float(statistics.median(disks)) if disks else base.disk_bytes,
        install_bps=UNLIMITED_INSTALL_BPS,
        keep_duplicate_saves=False,  # as stoker's agent (trace.Fleet says why)
        node_names=tuple(c.node for c in initial),
        node_zones=tuple(c.zone or "zone-a" for c in initial),
    )
    if measured.fetch_extract_bps:
        # The agent times a restore's fetch and extraction together (they overlap): each gets half its time.
        fleet = replace(
            fleet, fetch_bps=2 * measured.fetch_extract_bps, extract_bps=2 * measured.fetch_extract_bps
        )
    if measured.materialize_bps:
        fleet = replace(fleet, materialize_bps=measured.materialize_bps)
    return fleet


def fleet_doc(fleet: Fleet) -> dict:
    """A fleet spec as ``load_fleet`` reads it."""
    doc = dict(fleet.__dict__)
    doc["zones"] = list(fleet.zones)
    return doc
