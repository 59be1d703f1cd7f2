"""``stoker plan``: replay a build history through the scheduler under other fleets.

    stoker history export --since 7d > trace.jsonl && stoker history fleet > fleet.json
    stoker plan --trace trace.jsonl --fleet fleet.json --nodes 20,40,60 --disk 100G,200G
    stoker plan --trace trace.jsonl --fleet fleet.json --nodes 10,20,40 --target-p99 30s
    stoker plan ... --json | --html plan.html

Runs on this machine (no coordinator needed): the simulator and the scheduler are the coordinator's own
code (coordinator/planning/planner.py says what each figure is).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stoker.cli import charts
from stoker.cli.history import duration
from stoker.common.units import size
from stoker.coordinator.planning import planner
from stoker.coordinator.planning.engine import POLICIES
from stoker.coordinator.planning.trace import Build, Fleet, TraceError, load_fleet, load_trace


def _list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="replay a build history under fleet variants (capacity planning)")
    p.add_argument("--trace", type=Path, required=True, help="a trace (stoker history export)")
    p.add_argument("--fleet", type=Path, help="the fleet spec (stoker history fleet; default: 40 × 4 slots)")
    p.add_argument("--nodes", type=_list(int), help="node counts to try, e.g. 20,40,60")
    p.add_argument("--disk", type=_list(size), help="cache disk per node to try, e.g. 100G,200G")
    p.add_argument("--slots", type=_list(int), help="build slots per node to try, e.g. 2,4")
    p.add_argument("--zones", type=_list(int), help="zone counts to try, e.g. 1,3")
    p.add_argument(
        "--policy",
        type=_list(str),
        help=f"placement policies to compare: {', '.join(POLICIES)} (default stoker)",
    )
    p.add_argument(
        "--target-p99", type=duration, help="the smallest fleet whose p99 time to ready meets this"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--html", type=Path, help="also write a self-contained HTML page with the plots here")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        records = load_trace(args.trace)
        fleet = load_fleet(args.fleet) if args.fleet else Fleet()
        to_try = planner.variants(args.nodes, args.disk, args.slots, args.zones, args.policy)
    except (TraceError, OSError) as exc:
        print(f"stoker plan: {exc}", file=sys.stderr)
        return 2
    builds = sum(1 for r in records if isinstance(r, Build))
    if not builds:
        print(f"stoker plan: {args.trace} holds no builds: nothing to replay", file=sys.stderr)
        return 2
    results = planner.plan(records, fleet, to_try)
    report: dict = {"trace": str(args.trace), "builds": builds, "variants": results}
    seen = planner.observed(records)
    if seen is not None:
        report["observed"] = seen
    if args.target_p99 is not None:
        best, closest = planner.smallest_meeting(results, args.target_p99)
        report["target"] = {
            "ready_p99_s": args.target_p99,
            "met": best is not None,
            "smallest": best["variant"] if best else None,
            "closest": closest["variant"],
            "closest_ready_p99_s": closest["ready_p99_s"],
        }
    if args.html:
        args.html.write_text(html_report(report))
        report["html"] = str(args.html)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


COLUMNS = (
    ("ready_p50_s", "p50 s", "{:.1f}"),
    ("ready_p95_s", "p95 s", "{:.1f}"),
    ("ready_p99_s", "p99 s", "{:.1f}"),
    ("warm_share", "warm", "{:.0%}"),
    ("partial_share", "partial", "{:.0%}"),
    ("cold_share", "cold", "{:.0%}"),
    ("bytes_fetched", "GB fetched", "{:.2f}"),
    ("busy_node_hours", "busy n·h", "{:.1f}"),
    ("idle_node_hours", "idle n·h", "{:.1f}"),
    ("cost", "cost", "{:.2f}"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    if key not in row:
        return "-"
    value = row[key] / 1e9 if key == "bytes_fetched" else row[key]
    return fmt.format(value)


def print_table(report: dict) -> None:
    print(f"{report['builds']} builds from {report['trace']}; time to ready = queue wait + pull + restore")
    width = max([len(r["variant"]) for r in report["variants"]] + [len("as it ran (observed)")])
    print(f"{'fleet':<{width}}" + "".join(f"{title:>11}" for _, title, _ in COLUMNS))
    rows = list(report["variants"])
    if "observed" in report:
        rows.append({"variant": "as it ran (observed)", **report["observed"]})
    for r in rows:
        print(f"{r['variant']:<{width}}" + "".join(f"{_cell(r, k, f):>11}" for k, _, f in COLUMNS))
    target = report.get("target")
    if target:
        if target["met"]:
            print(
                f"\nsmallest fleet with p99 time to ready ≤ {target['ready_p99_s']:g} s: {target['smallest']}"
            )
        else:
            print(
                f"\nno variant meets p99 time to ready ≤ {target['ready_p99_s']:g} s; the closest: "
                f"{target['closest']} (p99 {target['closest_ready_p99_s']:.1f} s)"
            )
    if report.get("html"):
        print(f"plots: {report['html']}")


def html_report(report: dict) -> str:
    rows = list(report["variants"])
    if "observed" in report:
        rows.append({"variant": "as it ran (observed)", **report["observed"]})
    names = [r["variant"] for r in rows]
    cdf = charts.line_chart(
        [(r["variant"], [(v, q / 100) for q, v in enumerate(r["ready_quantiles"])]) for r in rows],
        title="Time to ready, per fleet (share of builds ready within x seconds)",
        xlabel="seconds from submission until the cache and image are in place",
        ylabel="share of builds",
    )
    longest = max((h["hour"] for r in rows for h in r["hourly"]), default=0.0)
    scale, unit = (1.0, "hours") if longest >= 2 else (60.0, "minutes")
    hit = charts.line_chart(
        [
            (
                r["variant"],
                [
                    (
                        h["hour"] * scale,
                        (h["warm"] + h["partial"]) / max(1, h["warm"] + h["partial"] + h["cold"]),
                    )
                    for h in r["hourly"]
                ],
            )
            for r in rows
        ],
        title="Hit rate (warm or partial) over the trace",
        xlabel=f"{unit} from the trace's start",
        ylabel="share of builds placed warm or partial",
        markers=True,
    )
    fetched = charts.bar_chart(
        names,
        [("GB fetched", [r["bytes_fetched"] / 1e9 for r in rows])],
        title="Bytes fetched from the blob store (GB)",
        ylabel="GB",
    )
    cost = charts.bar_chart(
        [r["variant"] for r in report["variants"]],
        [("cost", [r["cost"] for r in report["variants"]])],
        title="Cost at the fleet spec's prices",
        ylabel="cost",
    )
    shares = charts.bar_chart(
        names,
        [(w, [r[f"{w}_share"] for r in rows]) for w in planner.WARMTHS],
        title="Warm, partial and cold shares",
        ylabel="share of builds",
    )
    table = charts.table(
        ["fleet"] + [title for _, title, _ in COLUMNS],
        [[r["variant"]] + [_cell(r, k, f) for k, _, f in COLUMNS] for r in rows],
    )
    sections = [("Per fleet", table)]
    target = report.get("target")
    if target:
        verdict = (
            f"The smallest fleet with p99 time to ready ≤ {target['ready_p99_s']:g} s: {target['smallest']}."
            if target["met"]
            else f"No variant meets p99 ≤ {target['ready_p99_s']:g} s; the closest is {target['closest']} "
            f"(p99 {target['closest_ready_p99_s']:.1f} s)."
        )
        sections.append(("Target", f"<p>{charts.escape(verdict)}</p>"))
    sections += [
        ("Time to ready", charts.figure(cdf)),
        ("Hit rates over the day", charts.figure(hit)),
        ("Warmth", charts.figure(shares)),
        ("Bytes fetched", charts.figure(fetched)),
        ("Cost", charts.figure(cost)),
    ]
    return charts.page(f"stoker plan: {report['builds']} builds from {report['trace']}", sections)
