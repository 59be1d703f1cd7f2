"""``stoker history export`` and ``stoker history fleet``: the coordinator's build history as a simulator
trace and the fleet spec it ran on (coordinator/planning/history.py says what each figure is).

    stoker history export [--since 7d] [--workspace W] > trace.jsonl
    stoker history fleet [--since 7d] > fleet.json

Both ask the coordinator's ``ExportHistory`` (an operator token: ``STOKER_TOKEN``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import grpc

from stoker.cli.client import channel, coordinator_address
from stoker.cli.output import fail
from stoker.coordinator.planning.history import History, NodeChange, RunRecord, fleet_doc, from_history
from stoker.coordinator.planning.trace import Build, record_doc
from stoker.v1 import build_pb2, common_pb2, history_pb2, history_pb2_grpc

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """Seconds from ``90``, ``45s``, ``30m``, ``12h``, ``7d``, ``2w``."""
    match = _DURATION.match(text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 15m, 12h, 7d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("history", help="the fleet's build history as a simulator trace and fleet spec")
    hsub = p.add_subparsers(dest="history_command", required=True, metavar="WHAT")
    e = hsub.add_parser("export", help="finished builds and node joins/losses as a trace (JSON lines)")
    f = hsub.add_parser("fleet", help="the fleet spec (JSON) with measured fetch/extract rates")
    for q in (e, f):
        q.add_argument("--coordinator", help="host:port (default: $STOKER_COORDINATOR or 127.0.0.1:7070)")
        q.add_argument("--since", type=duration, default=7 * 86400.0, help="how far back (default 7d)")
        q.add_argument("--workspace", default="", help="only this workspace's builds")
    e.set_defaults(func=export)
    f.set_defaults(func=fleet)


def fetch(address: str, since_s: float, workspace: str = "") -> history_pb2.ExportHistoryResponse:
    stub = history_pb2_grpc.HistoryStub(channel(address))
    return stub.ExportHistory(
        history_pb2.ExportHistoryRequest(since_s=since_s, workspace=workspace), timeout=120
    )


def runs_from_pb(response: history_pb2.ExportHistoryResponse) -> tuple[list[RunRecord], list[NodeChange]]:
    """The response's builds and node events as planning's plain records."""
    runs = [run_from_pb(b) for b in response.builds]
    changes = [
        NodeChange(
            t=e.time.ToNanoseconds() / 1e9,
            node=e.node,
            event=e.event,
            zone=e.zone,
            slots=e.slots,
            disk_bytes=e.disk_bytes,
        )
        for e in response.node_events
    ]
    return runs, changes


def run_from_pb(b: history_pb2.HistoryBuild) -> RunRecord:
    c, t = b.cache, b.timings
    warmth = common_pb2.Warmth.Name(c.warmth).removeprefix("WARMTH_").lower() if c.warmth else ""
    return RunRecord(
        id=b.id,
        created=b.created.ToNanoseconds() / 1e9,
        workspace=b.workspace,
        tenant=b.tenant,
        key=b.key,
        restore_keys=tuple(b.restore_keys),
        priority=b.priority,
        image=b.image,
        ran=bool(b.node) and b.placed_after_s >= 0,
        node=b.node,
        zone=b.zone,
        warmth=warmth,
        restored_key=c.restored_key,
        bytes_fetched=c.bytes_fetched,
        bytes_restored=c.bytes_restored,
        files_restored=c.files_restored,
        bytes_uploaded=c.bytes_uploaded,
        saved=c.saved,
        queued_s=t.queued_s,
        pull_s=t.pull_s,
        restore_s=t.restore_s,
        run_s=t.run_s,
        save_s=t.save_s,
        total_s=t.total_s,
        placed_after_s=b.placed_after_s,
        started_after_s=b.started_after_s,
        first_line_after_s=b.first_line_after_s,
    )


def state_name(state: int) -> str:
    return build_pb2.BuildState.Name(state).removeprefix("BUILD_STATE_").lower()


def load(args) -> History | None:
    """The history as a trace, or None after saying why on stderr."""
    try:
        response = fetch(coordinator_address(args.coordinator), args.since, args.workspace)
    except grpc.RpcError as exc:
        fail(exc)
        return None
    runs, changes = runs_from_pb(response)
    rates = response.scheduler
    scheduler_rates = {
        name: getattr(rates, name)
        for name in ("fetch_bps", "extract_bps", "materialize_bps", "pull_bps")
        if getattr(rates, name) > 0
    }
    return from_history(runs, changes, scheduler_rates)


def _empty_note(args, what: str) -> str:
    scope = f" of workspace {args.workspace!r}" if args.workspace else ""
    return f"stoker history {what}: no finished builds{scope} in the last {human_duration(args.since)}"


def export(args) -> int:
    history = load(args)
    if history is None:
        return 1
    builds = sum(1 for r in history.records if isinstance(r, Build))
    if not builds:
        print(_empty_note(args, "export") + ": the trace is empty", file=sys.stderr)
        return 0
    for record in history.records:
        sys.stdout.write(json.dumps(record_doc(record)) + "\n")
    print(
        f"stoker history export: {builds} builds and {len(history.records) - builds} node events",
        file=sys.stderr,
    )
    return 0


def fleet(args) -> int:
    history = load(args)
    if history is None:
        return 1
    print(json.dumps(fleet_doc(history.fleet), indent=2))
    m = history.measured
    if not history.records:
        print(_empty_note(args, "fleet") + ": the rates are the defaults", file=sys.stderr)
    else:
        print(
            "stoker history fleet: measured from "
            f"{m.cold_restores} fetching restores (fetch+extract "
            f"{m.fetch_extract_bps / 1e6:.1f} MB/s, split evenly between fetch_bps and extract_bps) and "
            f"{m.warm_restores} warm ones (materialize {m.materialize_bps / 1e6:.1f} MB/s); "
            f"compression {m.compression:.3f}; 0 means too few to measure (the default kept)",
            file=sys.stderr,
        )
    return 0


def human_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
