#!/usr/bin/env python3
"""Trace-driven comparison of stoker's scheduler with what a user would otherwise pick.

    python bench/simulate.py                      # default trace and fleet, a table, plots in bench/out/
    python bench/simulate.py --json               # the same as JSON
    python bench/simulate.py --trace T.jsonl --fleet F.json
    python bench/simulate.py --write-trace T.jsonl [--zipf 0.6 --nodes 100 ...]   # generate a trace
    python bench/simulate.py --sweep --json       # the results on other traces (Zipf s, bursts, fleet size)
    python bench/simulate.py --variant nodes_500  # one of those traces alone

Every policy runs on the same trace and fleet in one run. ``stoker`` is the coordinator's own
scheduler (the engine is the product's: coordinator/planning/engine.py, the same code `stoker plan` runs; the
peers are in bench/simkit/engine.py). The trace format is documented in coordinator/planning/trace.py.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from simkit.engine import POLICY_NAMES, Sim, make_policy, usage  # noqa: E402
from simkit.trace import Build, Fleet, TraceError, TraceSpec, generate, load_fleet, load_trace, write_trace  # noqa: E402


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def jain(values: list[float]) -> float:
    if not values:
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def recovery_times(sim: Sim, window: int = 50) -> list[float]:
    """After each node failure: time until the warm-or-partial share of the last ``window`` placements
    is back to 95 % of what it was before the failure."""
    out = []
    placements = sim.placements
    times = [t for t, _ in placements]
    for failed_at in sim.failures:
        import bisect

        i = bisect.bisect_left(times, failed_at)
        before = placements[max(0, i - window) : i]
        if len(before) < window // 2:
            continue
        target = 0.95 * sum(hit for _, hit in before) / len(before)
        recovered = None
        for j in range(i + 1, len(placements) + 1):
            recent = placements[max(i, j - window) : j]
            if (
                len(recent) >= min(window, len(placements) - i)
                and sum(h for _, h in recent) / len(recent) >= target
            ):
                recovered = placements[j - 1][0] - failed_at
                break
            if j - i >= window and sum(h for _, h in recent) / len(recent) >= target:
                recovered = placements[j - 1][0] - failed_at
                break
        out.append(recovered if recovered is not None else float("inf"))
    return out


def summarize(sim: Sim, fleet: Fleet, wall_s: float) -> dict:
    jobs = [j for j in sim.jobs if j.finish and j.node]
    ready = [j.ready - j.arrival for j in jobs]
    e2e = [j.finish - j.arrival for j in jobs]
    n = len(jobs) or 1
    shares = {w: sum(1 for j in jobs if j.warmth == w) / n for w in ("warm", "partial", "cold")}
    horizon = sim.now
    loads = []
    for node in sim.nodes.values():
        alive = min(node.died, horizon) - node.born
        if alive > 0.25 * horizon:
            loads.append(node.busy_area / alive)
    mean_load = statistics.fmean(loads) if loads else 0.0
    slowdown: dict[str, list[float]] = {}
    for j in jobs:
        slowdown.setdefault(j.build.tenant, []).append((j.finish - j.arrival) / max(1.0, j.build.duration_s))
    tenant_means = {t: statistics.fmean(v) for t, v in slowdown.items()}
    used = usage(sim, fleet)
    node_hours, busy_hours, fetched, cost = used.node_hours, used.busy_hours, used.fetched, used.cost
    recoveries = recovery_times(sim)
    return {
        "builds": len(jobs),
        "ready_p50_s": round(pct(ready, 0.5), 2),
        "ready_p95_s": round(pct(ready, 0.95), 2),
        "ready_p99_s": round(pct(ready, 0.99), 2),
        "e2e_p50_s": round(pct(e2e, 0.5), 2),
        "e2e_p95_s": round(pct(e2e, 0.95), 2),
        "e2e_p99_s": round(pct(e2e, 0.99), 2),
        "bytes_fetched": int(fetched),
        "prewarm_bytes": int(sim.prewarm_bytes),
        "image_bytes_pulled": int(sum(j.pulled for j in sim.jobs)),
        "warm_share": round(shares["warm"], 4),
        "partial_share": round(shares["partial"], 4),
        "cold_share": round(shares["cold"], 4),
        "max_mean_load": round(max(loads) / mean_load, 3) if mean_load else 0.0,
        "jain_fairness": round(jain(list(tenant_means.values())), 4),
        "tenant_slowdown_max_over_min": round(max(tenant_means.values()) / min(tenant_means.values()), 3)
        if tenant_means
        else 1.0,
        "idle_while_queued_node_s": round(sim.idle_while_queued, 1),
        "hit_recovery_s": [None if math.isinf(r) else round(r, 1) for r in recoveries],
        "busy_node_hours": round(busy_hours, 2),
        "idle_node_hours": round(node_hours - busy_hours, 2),
        "get_requests": sim.gets,
        "put_requests": sim.puts,
        "cost": round(cost, 2),
        "decision_p99_ms": round(pct(sim.decision_s, 0.99) * 1000, 4),
        "sim_wall_s": round(wall_s, 2),
        "_ready": ready,
        "_fetched": [j.fetched for j in jobs],
    }


def decision_benchmark(nodes: int = 1000, keys: int = 1000, decisions: int = 2000) -> dict:
    """p50/p99 of one scheduler decision with ``nodes`` nodes each holding ``keys`` keys."""
    import random

    from stoker.coordinator.placement.domain import EntryRecord, NodeInfo, PlacementRequest
    from stoker.coordinator.placement.inventory import InventoryIndex
    from stoker.coordinator.placement.registry import NodeRegistry
    from stoker.coordinator.placement.scheduler import Scheduler

    class Clock:
        def now(self) -> float:
            return 1000.0

    rng = random.Random(11)
    clock = Clock()
    registry = NodeRegistry(clock, 15)
    inventory = InventoryIndex()
    universe = 20 * keys  # keys spread over 200 workspaces × versions
    for i in range(nodes):
        rec = registry.register(NodeInfo(name=f"node-{i:04d}", zone=f"zone-{i % 3}", slots=4))
        registry.attach(rec.name, rec.session_id)
        rec.last_seen = 1000.0
        held = rng.sample(range(universe), keys)
        inventory.apply_snapshot(
            rec.name,
            0,
            [
                EntryRecord(
                    key=f"ws-{k % 200:03d}/deps-v{k // 200}",
                    bytes=400_000_000,
                    files=20000,
                    created=float(k // 200),
                    last_used=1.0,
                )
                for k in held
            ],
        )
        for j in range(rng.randrange(0, 4)):
            rec.holders.add(f"busy-{i}-{j}")
    scheduler = Scheduler(inventory, clock)
    all_nodes = registry.all()
    samples = []
    for n in range(decisions):
        k = rng.randrange(universe)
        ws = f"ws-{k % 200:03d}"
        request = PlacementRequest(
            id=f"r{n}", workspace=ws, key=f"{ws}/deps-v{k // 200}", restore_keys=(f"{ws}/deps-",), tenant=ws
        )
        started = time.perf_counter()
        scheduler.choose(request, all_nodes)
        samples.append(time.perf_counter() - started)
    return {
        "nodes": nodes,
        "keys_per_node": keys,
        "decisions": decisions,
        "decision_p50_ms": round(pct(samples, 0.5) * 1000, 4),
        "decision_p99_ms": round(pct(samples, 0.99) * 1000, 4),
    }


def run_all(records: list, fleet: Fleet, policies: list[str], progress) -> dict[str, dict]:
    results = {}
    for name in policies:
        started = time.perf_counter()
        sim = Sim(fleet, records, make_policy(name, fleet)).run()
        results[name] = summarize(sim, fleet, time.perf_counter() - started)
        progress(
            f"  {name:<16} ready p99 {results[name]['ready_p99_s']:>8.1f} s   "
            f"fetched {results[name]['bytes_fetched'] / 1e9:>8.1f} GB   ({results[name]['sim_wall_s']:.1f} s)"
        )
    return results


def check_targets(results: dict[str, dict], decision: dict) -> dict[str, bool]:
    s, ll, oracle = results["stoker"], results["least_loaded"], results["oracle"]
    others = [v for k, v in results.items() if k not in ("stoker", "oracle")]
    return {
        "ready_p99_le_20pct_of_least_loaded": s["ready_p99_s"] <= 0.2 * ll["ready_p99_s"],
        "ready_p99_lowest_of_peers": all(s["ready_p99_s"] < o["ready_p99_s"] for o in others),
        "bytes_le_25pct_of_least_loaded": s["bytes_fetched"] <= 0.25 * ll["bytes_fetched"],
        "e2e_p99_within_1_25x_oracle": s["e2e_p99_s"] <= 1.25 * oracle["e2e_p99_s"],
        "max_mean_load_le_1_3": s["max_mean_load"] <= 1.3,
        "tenant_slowdown_within_2x": s["tenant_slowdown_max_over_min"] <= 2.0,
        "decision_p99_le_1ms": decision["decision_p99_ms"] <= 1.0,
    }


def plots(results: dict[str, dict], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, r in results.items():
        values = sorted(r["_ready"])
        if values:
            ax.plot(values, [i / len(values) for i in range(len(values))], label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("time to ready (s): queue wait + restore")
    ax.set_ylabel("share of builds")
    ax.set_title("Time to ready, by policy (CDF)")
    ax.legend(fontsize=8)
    path = out / "ready_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    written.append(str(path))
    fig, ax = plt.subplots(figsize=(9, 4))
    names = list(results)
    ax.bar(names, [results[n]["bytes_fetched"] / 1e9 for n in names])
    ax.set_ylabel("GB fetched from the blob store")
    ax.set_title("Bytes fetched, by policy")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    path = out / "bytes_fetched.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    written.append(str(path))
    plt.close("all")
    return written


SWEEP = [
    ("zipf_0.6", dict(zipf_s=0.6), {}),
    ("zipf_1.2", dict(zipf_s=1.2), {}),
    ("bursty", dict(bursts_per_hour=8.0), {}),
    ("nodes_20", dict(builds_per_day=8000), dict(nodes=20)),
    (
        "nodes_500",
        dict(builds_per_day=120000, workspaces=1200, hours=6.0, node_failures=(3.0,), scale_out=((4.0, 20),)),
        dict(nodes=500),
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--trace", type=Path, help="JSON-lines trace (default: generated)")
    parser.add_argument("--fleet", type=Path, help="fleet spec JSON (default: 40 nodes × 4 slots, 3 zones)")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES), help="comma-separated policy names")
    parser.add_argument("--plots", type=Path, default=HERE / "out", help="where PNG plots go")
    parser.add_argument("--write-trace", type=Path, help="write the generated trace here and stop")
    parser.add_argument("--hours", type=float, default=TraceSpec.hours)
    parser.add_argument("--builds-per-day", type=int, default=TraceSpec.builds_per_day)
    parser.add_argument("--zipf", type=float, default=TraceSpec.zipf_s)
    parser.add_argument("--bursts-per-hour", type=float, default=TraceSpec.bursts_per_hour)
    parser.add_argument("--nodes", type=int, help="override the fleet's node count")
    parser.add_argument("--seed", type=int, default=TraceSpec.seed)
    parser.add_argument(
        "--images",
        type=int,
        default=TraceSpec.images,
        help="distinct build images in the generated trace (0: none)",
    )
    parser.add_argument("--sweep", action="store_true", help="also run the variant traces (slow)")
    parser.add_argument(
        "--no-decision-bench", action="store_true", help="skip the 1,000 × 1,000 decision timing"
    )
    parser.add_argument(
        "--variant",
        choices=[name for name, _, _ in SWEEP],
        help="run one of the --sweep traces (its trace and fleet) instead of the default",
    )
    args = parser.parse_args(argv)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        fleet = load_fleet(args.fleet) if args.fleet else Fleet()
        if args.nodes:
            fleet = replace(fleet, nodes=args.nodes)
        spec = TraceSpec(
            hours=args.hours,
            builds_per_day=args.builds_per_day,
            zipf_s=args.zipf,
            bursts_per_hour=args.bursts_per_hour,
            images=args.images,
            seed=args.seed,
        )
        if args.variant:
            spec_changes, fleet_changes = next((s, f) for name, s, f in SWEEP if name == args.variant)
            fleet, spec = replace(fleet, **fleet_changes), replace(spec, **spec_changes)
        records = load_trace(args.trace) if args.trace else generate(spec, fleet)
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        unknown = [p for p in policies if p not in POLICY_NAMES]
        if unknown:
            raise TraceError(f"--policies: unknown policy {unknown[0]!r} (known: {', '.join(POLICY_NAMES)})")
    except TraceError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if args.write_trace:
        write_trace(records, args.write_trace)
        print(f"wrote {len(records)} records to {args.write_trace}", file=sys.stderr)
        return 0
    builds = sum(1 for r in records if isinstance(r, Build))
    progress(
        f"simulating {builds} builds on {fleet.nodes} nodes × {fleet.slots} slots with "
        f"{len(policies)} policies"
    )
    results = run_all(records, fleet, policies, progress)
    decision = {} if args.no_decision_bench else decision_benchmark()
    report = {
        "trace": str(args.trace) if args.trace else f"generated: {spec}",
        "fleet": {k: v for k, v in fleet.__dict__.items()},
        "builds": builds,
        "policies": {
            name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results.items()
        },
        "decision_p99_ms": decision.get("decision_p99_ms"),
        "decision_benchmark": decision,
    }
    if {"stoker", "least_loaded", "oracle"} <= set(results) and decision:
        report["targets"] = check_targets(results, decision)
    report["plots"] = plots(results, args.plots)
    if args.sweep:
        report["sweep"] = {}
        for name, spec_changes, fleet_changes in SWEEP:
            v_fleet = replace(fleet, **fleet_changes)
            v_records = generate(replace(spec, **spec_changes), v_fleet)
            progress(
                f"sweep {name}: {sum(1 for r in v_records if isinstance(r, Build))} builds on "
                f"{v_fleet.nodes} nodes"
            )
            v_results = run_all(v_records, v_fleet, policies, progress)
            report["sweep"][name] = {
                p: {k: v for k, v in r.items() if not k.startswith("_")} for p, r in v_results.items()
            }
            if {"stoker", "least_loaded", "oracle"} <= set(v_results):
                report["sweep"][name]["targets"] = check_targets(
                    v_results, decision or {"decision_p99_ms": 0}
                )
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report)
    return 0


def print_table(report: dict) -> None:
    cols = [
        ("ready_p50_s", "ready p50"),
        ("ready_p99_s", "ready p99"),
        ("e2e_p99_s", "e2e p99"),
        ("bytes_fetched", "GB fetched"),
        ("warm_share", "warm"),
        ("partial_share", "partial"),
        ("cold_share", "cold"),
        ("max_mean_load", "max/mean"),
        ("jain_fairness", "jain"),
        ("idle_while_queued_node_s", "idle·q s"),
        ("cost", "cost"),
    ]
    print(f"{'policy':<16}" + "".join(f"{title:>12}" for _, title in cols))
    for name, r in report["policies"].items():
        cells = []
        for key, _ in cols:
            v = r[key]
            cells.append(
                f"{v / 1e9:>12.1f}"
                if key == "bytes_fetched"
                else f"{v:>12.2f}"
                if isinstance(v, float)
                else f"{v:>12}"
            )
        print(f"{name:<16}" + "".join(cells))
    if report.get("decision_benchmark"):
        d = report["decision_benchmark"]
        print(
            f"\ndecision time with {d['nodes']} nodes × {d['keys_per_node']} keys: "
            f"p50 {d['decision_p50_ms']} ms, p99 {d['decision_p99_ms']} ms"
        )
    for name, ok in report.get("targets", {}).items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    if report.get("plots"):
        print("plots: " + ", ".join(report["plots"]))


if __name__ == "__main__":
    sys.exit(main())
