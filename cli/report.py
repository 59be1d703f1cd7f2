"""``stoker report dead-time``: where the time between a build's submission and its command's first line
goes (coordinator/planning/dead_time.py says how each phase is measured), and what would cut it.

    stoker report dead-time [--since 7d] [--by workspace|tenant|node] [--workspace W] [--json] [--html FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from stoker.cli import charts
from stoker.cli.client import coordinator_address
from stoker.cli.history import duration, fetch, human_duration, runs_from_pb
from stoker.cli.output import fail
from stoker.coordinator.planning import dead_time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="reports from the fleet's history (dead-time)")
    rsub = p.add_subparsers(dest="report_command", required=True, metavar="WHICH")
    d = rsub.add_parser("dead-time", help="submission → first line of the command, by phase, worst first")
    d.add_argument("--coordinator", help="host:port (default: $STOKER_COORDINATOR or 127.0.0.1:7070)")
    d.add_argument("--since", type=duration, default=7 * 86400.0, help="how far back (default 7d)")
    d.add_argument("--by", choices=dead_time.GROUPINGS, default="workspace", help="group builds by")
    d.add_argument("--workspace", default="", help="only this workspace's builds")
    d.add_argument("--worst", type=int, default=10, help="how many groups to show (default 10)")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.add_argument("--html", type=Path, help="also write a self-contained HTML page with the plots here")
    d.set_defaults(func=run_dead_time)


def run_dead_time(args) -> int:
    try:
        response = fetch(coordinator_address(args.coordinator), args.since, args.workspace)
    except grpc.RpcError as exc:
        return fail(exc)
    runs, _ = runs_from_pb(response)
    report = dead_time.report(runs, args.by, args.worst)
    report["since"] = human_duration(args.since)
    if not report["builds"]:
        print(
            f"stoker report dead-time: no build started in the last {report['since']}: nothing to report",
            file=sys.stderr,
        )
    if args.html:
        args.html.write_text(html_report(report))
        report["html"] = str(args.html)
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["builds"]:
        print_report(report)
    return 0


def _phase_cells(summary: dict, key: str) -> list[str]:
    return [f"{summary['phases'][p][key]:.2f}" for p in dead_time.PHASES]


def print_report(report: dict) -> None:
    o = report["overall"]
    print(
        f"dead time of {report['builds']} builds in the last {report['since']} (submission → first line): "
        f"p50 {o['dead_p50_s']:.2f} s, p95 {o['dead_p95_s']:.2f} s, max {o['dead_max_s']:.2f} s"
    )
    print(f"{'phase':<12}{'mean s':>10}{'p50 s':>10}{'p95 s':>10}")
    for p in dead_time.PHASES:
        s = o["phases"][p]
        print(f"{p:<12}{s['mean_s']:>10.2f}{s['p50_s']:>10.2f}{s['p95_s']:>10.2f}")
    print(f"what would cut it most: {o['advice']}\n")
    width = max([len(g["name"]) for g in report["groups"]] + [len(report["by"])])
    print(
        f"worst {len(report['groups'])} of {report['groups_total']} by {report['by']} "
        "(mean seconds per phase):"
    )
    print(
        f"{report['by']:<{width}}{'builds':>8}{'p95 s':>9}"
        + "".join(f"{p:>11}" for p in dead_time.PHASES)
        + "  what would cut it"
    )
    for g in report["groups"]:
        print(
            f"{g['name']:<{width}}{g['builds']:>8}{g['dead_p95_s']:>9.2f}"
            + "".join(f"{c:>11}" for c in _phase_cells(g, "mean_s"))
            + f"  {g['advice']}"
        )


def html_report(report: dict) -> str:
    q = report["quantiles"]
    cdf = charts.line_chart(
        [(name, [(v, i / 100) for i, v in enumerate(q[name])]) for name in (*dead_time.PHASES, "total")]
        if q
        else [],
        title="Dead time by phase (share of builds within x seconds)",
        xlabel="seconds",
        ylabel="share of builds",
    )
    groups = report["groups"]
    stacked = charts.bar_chart(
        [g["name"] for g in groups],
        [(p, [g["phases"][p]["mean_s"] for g in groups]) for p in dead_time.PHASES],
        title=f"Mean dead time per phase, worst {report['by']}s first",
        ylabel="seconds",
    )
    p95 = charts.bar_chart(
        [g["name"] for g in groups],
        [("p95", [g["dead_p95_s"] for g in groups])],
        title=f"p95 dead time per {report['by']}",
        ylabel="seconds",
    )
    o = report["overall"]
    overall = charts.table(
        ["phase", "mean s", "p50 s", "p95 s"],
        [
            [
                p,
                f"{o['phases'][p]['mean_s']:.2f}",
                f"{o['phases'][p]['p50_s']:.2f}",
                f"{o['phases'][p]['p95_s']:.2f}",
            ]
            for p in dead_time.PHASES
        ],
    )
    worst = charts.table(
        [report["by"], "builds", "p95 s", *dead_time.PHASES, "what would cut it"],
        [
            [g["name"], g["builds"], f"{g['dead_p95_s']:.2f}", *_phase_cells(g, "mean_s"), g["advice"]]
            for g in groups
        ],
    )
    return charts.page(
        f"stoker dead time: {report['builds']} builds in the last {report['since']}",
        [
            ("Overall", overall + f"<p>What would cut it most: {charts.escape(o.get('advice', ''))}</p>"),
            ("Distributions", charts.figure(cdf)),
            (f"Worst {report['by']}s", worst + charts.figure(stacked) + charts.figure(p95)),
        ],
    )
