"""``stoker rollout start|validate|watch|get|list|history|promote|abort|pause|resume|retry``: operate
rollouts from a terminal.

    stoker rollout validate -f rollout.yaml        check a rollout file offline (line and field of a problem)
    stoker rollout start -f rollout.yaml --version v2 --watch
    stoker rollout start web v2 --bake 120 --canary 10 --env STOKER_SAMPLE_LATENCY_MS=5 --watch
    stoker rollout history web                      every rollout of a service, its outcome and verdict
    stoker rollout retry r-0123456789               start a rolled-back rollout again
    stoker rollout schema > rollout.schema.json     the rollout file's JSON Schema, for editors
    stoker rollout watch r-0123456789        live: phase, instances per zone per version, verdicts
    stoker rollout list --service web
    stoker rollout promote|abort|pause|resume r-0123456789 --reason "..."

Exit status of ``start --watch`` and ``watch``: 0 when the rollout succeeded, 3 when it was rolled back or
failed, 4 when it paused for an operator, 125 for an RPC error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import grpc
from google.protobuf import json_format

from stoker.cli.client import channel, coordinator_address
from stoker.cli.output import TERMINAL_PHASES, fail, phase_name, verdict_result
from stoker.v1 import rollout_pb2, rollout_pb2_grpc

EXIT_ROLLED_BACK = 3
EXIT_PAUSED = 4


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("rollout", help="start, watch, promote, abort, pause or resume rollouts")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--coordinator", help="host:port (default: $STOKER_COORDINATOR or 127.0.0.1:7070)")
        p.add_argument("--json", action="store_true", help="print rollouts as JSON")

    p = verbs.add_parser("start", help="roll a service out to a new version (from a rollout file or flags)")
    p.add_argument("service", nargs="?", default="", help="the service (not with -f: the file names it)")
    p.add_argument(
        "version", nargs="?", default="", help="the version (local target) or image (kubernetes target)"
    )
    p.add_argument("-f", "--file", default="", help="a rollout file (YAML; see docs/rollouts.md)")
    p.add_argument("--version", dest="version_flag", default="", help="the version to roll out (with -f)")
    p.add_argument("--target", default="local", help="local (default) or kubernetes")
    p.add_argument(
        "--canary", type=float, default=0.0, help="canary share in percent (default: coordinator's)"
    )
    p.add_argument("--bake", type=float, default=0.0, help="minimum bake seconds (default: coordinator's)")
    p.add_argument("--post-bake", type=float, default=0.0, help="seconds to watch after the surge")
    p.add_argument("--min-requests", type=int, default=0, help="requests the canary must serve before a pass")
    p.add_argument("--zone-first", action="store_true", help="surge one zone first, then the rest")
    p.add_argument("--namespace", default="", help="Kubernetes namespace (kubernetes target)")
    p.add_argument("--zones", default="", help="first deployment only: comma-separated zones")
    p.add_argument("--instances-per-zone", type=int, default=0, help="first deployment only")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the new version (repeatable)")
    p.add_argument("--watch", action="store_true", help="then watch it until it ends")
    common(p)
    p.set_defaults(func=cmd_start)

    for name, helptext in (("watch", "show a rollout live until it ends"), ("get", "show a rollout")):
        p = verbs.add_parser(name, help=helptext)
        p.add_argument("rollout_id")
        common(p)
        p.set_defaults(func=cmd_watch if name == "watch" else cmd_get)

    p = verbs.add_parser("validate", help="check a rollout file (offline) and print its plan")
    p.add_argument("-f", "--file", required=True, help="the rollout file")
    p.set_defaults(func=cmd_validate)

    p = verbs.add_parser("schema", help="print the rollout file's JSON Schema")
    p.set_defaults(func=cmd_schema)

    p = verbs.add_parser("history", help="a service's rollouts, newest first, with outcome and verdict")
    p.add_argument("service")
    common(p)
    p.set_defaults(func=cmd_history)

    p = verbs.add_parser("list", help="rollouts, newest first")
    p.add_argument("--service", default="")
    common(p)
    p.set_defaults(func=cmd_list)

    for name, helptext in (
        ("promote", "skip the rest of the bake"),
        ("abort", "roll back now"),
        ("pause", "hold the rollout where it is"),
        ("resume", "resume a paused rollout, or retry one that rolled back or failed"),
        ("retry", "start a rolled-back or failed rollout again (next attempt, first step)"),
    ):
        p = verbs.add_parser(name, help=helptext)
        p.add_argument("rollout_id")
        p.add_argument("--reason", default="", help="recorded in the rollout's history")
        common(p)
        p.set_defaults(func=cmd_action, action=name)


def _stub(args) -> tuple[grpc.Channel, rollout_pb2_grpc.RolloutsStub]:
    ch = channel(coordinator_address(args.coordinator))
    return ch, rollout_pb2_grpc.RolloutsStub(ch)


def verdict_text(v: rollout_pb2.Verdict) -> str:
    result = verdict_result(v)
    numbers = ""
    if v.canary_requests or v.baseline_requests or v.check in ("data", "errors", "latency", "all"):
        numbers = (
            f" canary {v.canary_errors}/{v.canary_requests} err p50 {v.canary_p50_ms:.1f}ms | baseline "
            f"{v.baseline_errors}/{v.baseline_requests} err p50 {v.baseline_p50_ms:.1f}ms | p={v.p_value:.2g}"
            f" (alpha {v.alpha:.2g})"
        )
    return f"{result:<12} [{v.check or '-'}]{numbers}\n               {v.reason}"


def render(r: rollout_pb2.Rollout) -> str:
    """A rollout as a few lines: phase, instances per zone per version, verdicts with their numbers."""
    spec = r.spec
    lines = [
        f"rollout {r.id}  {spec.service}: {r.from_version or '(nothing)'} → {spec.version}  [{spec.target}]"
        f"  attempt {r.attempt}",
        f"  phase    {phase_name(r.phase)}: {r.message}",
    ]
    now = time.time()
    if r.HasField("bake_until"):
        lines.append(
            f"  bake     {max(0.0, r.bake_until.ToNanoseconds() / 1e9 - now):.1f} s left "
            f"(bake {spec.bake_s:g} s, min {spec.min_requests} requests, canary {spec.canary_percent:g} %)"
        )
    if r.HasField("deadline"):
        lines.append(f"  deadline {max(0.0, r.deadline.ToNanoseconds() / 1e9 - now):.1f} s for this step")
    if r.endpoint:
        lines.append(f"  traffic  {r.endpoint}")
    if spec.source:
        lines.append(f"  from     {spec.source}")
    for n, step in enumerate(r.plan, 1):
        mark = "▶" if n == r.step and r.phase not in TERMINAL_PHASES else " "
        lines.append(f"  plan   {mark} {step}")
    if r.awaiting_promotion:
        lines.append(f"  waiting  for an operator: stoker rollout promote {r.id}  (or abort)")
    if r.zones:
        lines.append(f"  {'zone':<12} {r.from_version or 'old':>10} {spec.version:>10} {'ready':>6}")
        for z in r.zones:
            lines.append(f"  {z.zone:<12} {z.old_instances:>10} {z.new_instances:>10} {z.ready_instances:>6}")
    if r.HasField("last_look") and r.phase in (
        rollout_pb2.ROLLOUT_PHASE_BAKING,
        rollout_pb2.ROLLOUT_PHASE_POST_BAKE,
    ):
        lines.append(f"  look     {verdict_text(r.last_look)}")
    for v in r.verdicts:
        lines.append(f"  verdict  {verdict_text(v)}")
    return "\n".join(lines)


def _print(r: rollout_pb2.Rollout, as_json: bool) -> None:
    if as_json:
        print(json_format.MessageToJson(r, preserving_proto_field_name=True, indent=None), flush=True)
    else:
        print(render(r), flush=True)


def _exit_for(r: rollout_pb2.Rollout) -> int:
    if r.phase == rollout_pb2.ROLLOUT_PHASE_SUCCEEDED:
        return 0
    if r.phase == rollout_pb2.ROLLOUT_PHASE_PAUSED:
        return EXIT_PAUSED
    return EXIT_ROLLED_BACK


def _watch(stub: rollout_pb2_grpc.RolloutsStub, rollout_id: str, as_json: bool) -> int:
    last_text = None
    last = None
    while True:
        try:
            for r in stub.WatchRollout(rollout_pb2.GetRolloutRequest(rollout_id=rollout_id)):
                last = r
                text = render(r)
                if text != last_text:
                    if not as_json and sys.stdout.isatty():
                        print("\033[2J\033[H", end="")
                    elif not as_json:
                        print("-" * 78)
                    _print(r, as_json)
                    last_text = text
                if r.phase == rollout_pb2.ROLLOUT_PHASE_PAUSED and r.message.startswith(
                    "paused: inconclusive"
                ):
                    return EXIT_PAUSED
            if last is not None and last.phase in TERMINAL_PHASES:
                return _exit_for(last)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                time.sleep(1.0)  # the coordinator restarts: the rollout resumes, and so does the watch
                continue
            return fail(exc)


def _read_file(path: str) -> tuple[str, str] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(), path
    except (OSError, UnicodeDecodeError) as exc:
        print(f"stoker: {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return None


def cmd_validate(args) -> int:
    from stoker.coordinator.rollouts import rollout_file
    from stoker.coordinator.rollouts.machine import Phase, Rollout, describe_plan

    read = _read_file(args.file)
    if read is None:
        return 2
    from stoker.coordinator.core.errors import DomainError

    try:
        loaded = rollout_file.load(*read)
        spec = loaded.with_version("any")
    except rollout_file.RolloutFileError as exc:
        print(f"stoker: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:  # InvalidArgument from the spec's own checks
        print(f"stoker: {args.file}: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok: {spec.service} on {spec.target}")
    if spec.zones and spec.instances_per_zone:
        r = Rollout("-", spec, phase=Phase.PENDING, created=0, updated=0)
        r.capacity = {z: spec.instances_per_zone for z in spec.zones}
        print(f"  plan for {spec.instances_per_zone} instance(s) in each of {', '.join(spec.zones)}:")
        for line in describe_plan(r):
            print(f"    {line}")
    else:
        print(f"  {len(spec.steps) or 2} step(s); the instance counts are printed when the rollout starts")
    if spec.analysis:
        from stoker.coordinator.rollouts.metrics_providers import MetricNames

        names = MetricNames.from_analysis(spec.analysis)
        source = spec.analysis.get("source") or "the coordinator's rollouts.metrics"
        print(
            f"  analysis: {source}; requests {names.requests}, errors {names.errors}, latency {names.latency}"
            f"; {len(spec.analysis.get('queries') or {})} query template(s), "
            f"{len(spec.analysis.get('guardrails') or [])} guardrail(s)"
        )
    from stoker.coordinator.rollouts.notify import redact

    for hook in spec.webhooks:
        print(f"  webhook: {redact(hook['url'])} ({hook['format']}: {', '.join(hook['events'])})")
    return 0


def cmd_schema(args) -> int:
    from stoker.coordinator.rollouts import rollout_file

    sys.stdout.write(rollout_file.schema_json())
    return 0


def _start_from_file(args) -> int:
    shaping = [
        flag
        for flag, on in (
            ("--target", args.target != "local"),
            ("--canary", args.canary),
            ("--bake", args.bake),
            ("--post-bake", args.post_bake),
            ("--min-requests", args.min_requests),
            ("--zone-first", args.zone_first),
            ("--namespace", args.namespace),
            ("--zones", args.zones),
            ("--instances-per-zone", args.instances_per_zone),
            ("--env", args.env),
        )
        if on
    ]
    if shaping:
        print(f"stoker: {shaping[0]} cannot be combined with -f: set it in the rollout file", file=sys.stderr)
        return 2
    version = args.version_flag or (args.version or (args.service if not args.version else ""))
    if args.service and args.version:
        print(
            "stoker: with -f give only the version (--version V): the file names the service", file=sys.stderr
        )
        return 2
    if not version:
        print("stoker: --version: required with -f (the version or image to roll out)", file=sys.stderr)
        return 2
    read = _read_file(args.file)
    if read is None:
        return 2
    text, name = read
    from stoker.coordinator.core.errors import DomainError
    from stoker.coordinator.rollouts import rollout_file

    try:  # refused here with the path as given; the coordinator checks it again all the same
        rollout_file.load(text, name).with_version(version)
    except rollout_file.RolloutFileError as exc:
        print(f"stoker: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"stoker: {name}: {exc}", file=sys.stderr)
        return 2
    ch, stub = _stub(args)
    with ch:
        request = rollout_pb2.StartRolloutRequest(
            spec=rollout_pb2.RolloutSpec(version=version),
            rollout_file=text,
            rollout_file_name=os.path.basename(name),
        )
        try:
            r = stub.StartRollout(request, timeout=30)
        except grpc.RpcError as exc:
            return fail(exc)
        if not args.watch:
            _print(r, args.json)
            return 0
        return _watch(stub, r.id, args.json)


def cmd_start(args) -> int:
    if args.file:
        return _start_from_file(args)
    if args.version_flag and not args.version:
        args.version = args.version_flag
    if not args.service or not args.version:
        print("stoker: rollout start: give SERVICE VERSION, or -f FILE --version V", file=sys.stderr)
        return 2
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"stoker: --env {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        env[key] = value
    spec = rollout_pb2.RolloutSpec(
        service=args.service,
        version=args.version,
        target=args.target,
        canary_percent=args.canary,
        bake_s=args.bake,
        post_bake_s=args.post_bake,
        min_requests=args.min_requests,
        zone_first=args.zone_first,
        namespace=args.namespace,
        zones=[z for z in args.zones.split(",") if z],
        instances_per_zone=args.instances_per_zone,
        env=env,
    )
    ch, stub = _stub(args)
    with ch:
        try:
            r = stub.StartRollout(rollout_pb2.StartRolloutRequest(spec=spec), timeout=30)
        except grpc.RpcError as exc:
            return fail(exc)
        if not args.watch:
            _print(r, args.json)
            return 0
        return _watch(stub, r.id, args.json)


def cmd_watch(args) -> int:
    ch, stub = _stub(args)
    with ch:
        return _watch(stub, args.rollout_id, args.json)


def cmd_get(args) -> int:
    ch, stub = _stub(args)
    with ch:
        try:
            r = stub.GetRollout(rollout_pb2.GetRolloutRequest(rollout_id=args.rollout_id), timeout=10)
        except grpc.RpcError as exc:
            return fail(exc)
    _print(r, args.json)
    if not args.json:
        print("  history")
        for line in r.events:
            print(f"    {line}")
    return 0


def _listed(args) -> rollout_pb2.ListRolloutsResponse | int:
    """The service's rollouts (``--service``), or the exit code after printing why not, or after printing
    them as JSON with ``--json``."""
    ch, stub = _stub(args)
    with ch:
        try:
            resp = stub.ListRollouts(rollout_pb2.ListRolloutsRequest(service=args.service), timeout=10)
        except grpc.RpcError as exc:
            return fail(exc)
    if args.json:
        print(
            json.dumps(
                [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in resp.rollouts]
            )
        )
        return 0
    return resp


def cmd_list(args) -> int:
    resp = _listed(args)
    if isinstance(resp, int):
        return resp
    print(f"{'ID':<14} {'SERVICE':<16} {'FROM':<10} {'TO':<16} {'PHASE':<13} MESSAGE")
    for r in resp.rollouts:
        print(
            f"{r.id:<14} {r.spec.service:<16} {r.from_version or '-':<10} {r.spec.version:<16} "
            f"{phase_name(r.phase):<13} {r.message[:80]}"
        )
    return 0


def cmd_history(args) -> int:
    resp = _listed(args)
    if isinstance(resp, int):
        return resp
    if not resp.rollouts:
        print(f"no rollouts of {args.service}")
        return 0
    print(
        f"{'STARTED (UTC)':<20} {'ID':<14} {'FROM → TO':<26} {'TRY':>3} {'STEP':>5} {'OUTCOME':<12} VERDICT"
    )
    for r in resp.rollouts:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created.seconds))
        change = f"{r.from_version or '-'} → {r.spec.version}"
        step = f"{r.step}/{r.steps}" if r.steps else "-"
        verdict = ""
        if r.verdicts:
            v = r.verdicts[-1]
            verdict = f"{verdict_result(v)} [{v.check}]"
            if v.canary_requests or v.baseline_requests:
                verdict += (
                    f" canary {v.canary_errors}/{v.canary_requests} baseline "
                    f"{v.baseline_errors}/{v.baseline_requests} p={v.p_value:.2g}"
                )
            verdict += f": {v.reason[:70]}"
        outcome = phase_name(r.phase)
        print(f"{started:<20} {r.id:<14} {change:<26} {r.attempt:>3} {step:>5} {outcome:<12} {verdict}")
    return 0


def cmd_action(args) -> int:
    ch, stub = _stub(args)
    call = {
        "promote": stub.PromoteRollout,
        "abort": stub.AbortRollout,
        "pause": stub.PauseRollout,
        "resume": stub.ResumeRollout,
        "retry": stub.RetryRollout,
    }[args.action]
    with ch:
        try:
            r = call(
                rollout_pb2.RolloutActionRequest(rollout_id=args.rollout_id, reason=args.reason), timeout=10
            )
        except grpc.RpcError as exc:
            return fail(exc)
    _print(r, args.json)
    return 0
