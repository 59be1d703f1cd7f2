"""``stoker plan``: replay a trace through the scheduler under fleet variants and say what each would give.

Each variant is the trace's fleet with some of nodes, disk, slots, zones and the placement policy changed;
every variant replays the same trace (its builds, and its real node joins and losses) in the simulator
(``engine.py``), which drives the coordinator's own scheduler. Per variant: time to ready (submission until
the build's cache and image are in place: queue wait + pull + restore) at p50/p95/p99, warm/partial/cold
shares, bytes fetched (restores and prewarms; ``restore_bytes_fetched`` the restores alone, which is what
an exported history's ``observed`` figures count), node-hours busy and idle, and cost at the fleet's prices.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from stoker.coordinator.planning.engine import POLICIES, Sim, make_policy, usage
from stoker.coordinator.planning.trace import Build, Fleet, FleetEvent, TraceError

ZONE_NAMES = tuple(f"zone-{c}" for c in "abcdefghijklmnopqrstuvwxyz")
WARMTHS = ("warm", "partial", "cold")


@dataclass(frozen=True)
class Variant:
    """One fleet to try: the base fleet with these changes (None: as in the base)."""

    nodes: int | None = None
    disk_bytes: float | None = None
    slots: int | None = None
    zones: int | None = None
    policy: str = "stoker"

    def fleet(self, base: Fleet) -> Fleet:
        zones = base.zones
        if self.zones is not None:
            own = tuple(dict.fromkeys(base.zones))
            zones = own[: self.zones] if self.zones <= len(own) else ZONE_NAMES[: self.zones]
        names, node_zones = base.node_names, base.node_zones
        if self.zones is not None:  # the nodes' own zones no longer apply
            node_zones = ()
        return replace(
            base,
            node_names=names,
            node_zones=node_zones,
            nodes=base.nodes if self.nodes is None else self.nodes,
            disk_bytes=base.disk_bytes if self.disk_bytes is None else self.disk_bytes,
            slots=base.slots if self.slots is None else self.slots,
            zones=zones,
        )

    def name(self, base: Fleet) -> str:
        f = self.fleet(base)
        return (
            f"{f.nodes} nodes × {f.slots} slots, {f.disk_bytes / 2**30:.3g} GiB disk, "
            f"{len(set(f.zones))} zones, {self.policy}"
        )


def variants(
    nodes: list[int] | None = None,
    disks: list[float] | None = None,
    slots: list[int] | None = None,
    zones: list[int] | None = None,
    policies: list[str] | None = None,
) -> list[Variant]:
    """Every combination of the values given (an option not given keeps the base fleet's value)."""
    for name in policies or []:
        if name not in POLICIES:
            raise TraceError(f"--policy: unknown policy {name!r} (known: {', '.join(POLICIES)})")
    for flag, values in (("--nodes", nodes), ("--slots", slots), ("--zones", zones)):
        if any(v < 1 for v in values or []):
            raise TraceError(f"{flag}: must be at least 1")
    if any(d <= 0 for d in disks or []):
        raise TraceError("--disk: must be positive")
    keep: list[None] = [None]  # an option not given: the base fleet's value
    combos = itertools.product(
        nodes or keep, disks or keep, slots or keep, zones or keep, policies or ["stoker"]
    )
    return [Variant(n, d, s, z, p) for n, d, s, z, p in combos]


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def replay(records: list[Build | FleetEvent], fleet: Fleet, policy: str = "stoker") -> Sim:
    return Sim(fleet, records, make_policy(policy, fleet)).run()


def bucket_s(records: list[Build | FleetEvent]) -> float:
    """The width of the hit-rate-over-time buckets: an hour, or for a trace shorter than a day a 24th of it
    (at least a second), so that a short history still draws a curve."""
    horizon = max((r.t for r in records), default=0.0)
    return 3600.0 if horizon >= 86400 else max(1.0, horizon / 24)


def _over_time(points: list[tuple[float, str]], width: float) -> list[dict]:
    buckets: dict[int, dict[str, int]] = {}
    for t, warmth in points:
        bucket = buckets.setdefault(int(t // width), {w: 0 for w in WARMTHS})
        bucket[warmth if warmth in bucket else "cold"] += 1
    return [{"hour": round(i * width / 3600, 6), **buckets[i]} for i in sorted(buckets)]


def summarize(sim: Sim, fleet: Fleet, width_s: float = 3600.0) -> dict:
    """What a replay gave (see the module's docstring); ``ready_quantiles`` are 101 points (0 %…100 %) of
    the time-to-ready distribution, ``hourly`` the warm/partial/cold counts of builds placed in each bucket
    of ``width_s`` seconds (``hour``: its start, in hours from the trace's start)."""
    jobs = [j for j in sim.jobs if j.finish and j.node]
    ready = [j.ready - j.arrival for j in jobs]
    counts = {w: sum(1 for j in jobs if j.warmth == w) for w in WARMTHS}
    n = len(jobs) or 1
    used = usage(sim, fleet)
    node_hours, busy_hours, fetched, cost = used.node_hours, used.busy_hours, used.fetched, used.cost
    return {
        "builds": len(jobs),
        "ready_p50_s": round(pct(ready, 0.5), 2),
        "ready_p95_s": round(pct(ready, 0.95), 2),
        "ready_p99_s": round(pct(ready, 0.99), 2),
        "warm": counts["warm"],
        "partial": counts["partial"],
        "cold": counts["cold"],
        "warm_share": round(counts["warm"] / n, 4),
        "partial_share": round(counts["partial"] / n, 4),
        "cold_share": round(counts["cold"] / n, 4),
        "bytes_fetched": int(fetched),
        "restore_bytes_fetched": int(fetched - sim.prewarm_bytes),
        "prewarm_bytes": int(sim.prewarm_bytes),
        "node_hours": round(node_hours, 3),
        "busy_node_hours": round(busy_hours, 3),
        "idle_node_hours": round(node_hours - busy_hours, 3),
        "cost": round(cost, 4),
        "ready_quantiles": [round(pct(ready, q / 100), 3) for q in range(101)],
        "hourly": _over_time([(j.placed, j.warmth) for j in jobs], width_s),
    }


def observed(records: list[Build | FleetEvent]) -> dict | None:
    """What the fleet really did, from an exported trace's ``observed`` fields (None: the trace has none)."""
    builds = [r for r in records if isinstance(r, Build) and r.observed is not None]
    if not builds:
        return None
    ready = [float(b.observed.get("ready_s", 0.0)) for b in builds if b.observed is not None]
    counts = {w: sum(1 for b in builds if b.observed and b.observed.get("warmth") == w) for w in WARMTHS}
    n = len(builds)
    return {
        "builds": n,
        "ready_p50_s": round(pct(ready, 0.5), 2),
        "ready_p95_s": round(pct(ready, 0.95), 2),
        "ready_p99_s": round(pct(ready, 0.99), 2),
        **counts,
        **{f"{w}_share": round(counts[w] / n, 4) for w in WARMTHS},
        "bytes_fetched": int(sum(int(b.observed.get("bytes_fetched", 0)) for b in builds if b.observed)),
        "ready_quantiles": [round(pct(ready, q / 100), 3) for q in range(101)],
        "hourly": _over_time(
            [(b.t, str(b.observed.get("warmth", "cold")) if b.observed else "cold") for b in builds],
            bucket_s(records),
        ),
    }


def plan(records: list[Build | FleetEvent], base: Fleet, to_try: list[Variant]) -> list[dict]:
    """Replay ``records`` under each variant; one result each, in the order given."""
    out = []
    for v in to_try:
        fleet = v.fleet(base)
        result = summarize(replay(records, fleet, v.policy), fleet, bucket_s(records))
        out.append(
            {
                "variant": v.name(base),
                "nodes": fleet.nodes,
                "slots": fleet.slots,
                "disk_bytes": fleet.disk_bytes,
                "zones": len(set(fleet.zones)),
                "policy": v.policy,
                **result,
            }
        )
    return out


def smallest_meeting(results: list[dict], target_p99_s: float) -> tuple[dict | None, dict]:
    """The smallest fleet (fewest slots in all, then least disk, then lowest cost) whose p99 time to ready
    is at most ``target_p99_s``, or None; and the result closest to the target (the lowest p99)."""
    closest = min(results, key=lambda r: (r["ready_p99_s"], r["nodes"] * r["slots"], r["cost"]))
    meeting = [r for r in results if r["ready_p99_s"] <= target_p99_s]
    if not meeting:
        return None, closest
    best = min(meeting, key=lambda r: (r["nodes"] * r["slots"], r["disk_bytes"], r["cost"]))
    return best, closest
