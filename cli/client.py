"""CI-side commands: ``stoker build``, ``place``, ``release``, ``get``, ``cancel``, ``watch``, ``builds``,
``inventory``.

The coordinator address comes from ``--coordinator`` or ``STOKER_COORDINATOR`` (default
127.0.0.1:7070), so a CI step is one line. ``stoker build`` exits with the build's exit code
(124 when it timed out, 130 when cancelled, 125 when stoker could not run it).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf import json_format

from stoker.cli.output import EXIT_STOKER_ERROR, fail
from stoker.common.serving import is_loopback
from stoker.common.units import size
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2, inventory_pb2, inventory_pb2_grpc

DEFAULT_COORDINATOR = "127.0.0.1:7070"
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130


def coordinator_address(flag: str | None) -> str:
    return flag or os.environ.get("STOKER_COORDINATOR") or DEFAULT_COORDINATOR


def channel(address: str) -> grpc.Channel:
    """A channel to the coordinator: TLS when ``STOKER_CA`` names the CA file, and the bearer token
    from ``STOKER_TOKEN`` on every call. A token is never sent in cleartext to anything but this machine
    unless ``STOKER_INSECURE=1`` says so."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ca = os.environ.get("STOKER_CA")
    token = os.environ.get("STOKER_TOKEN")
    if token and not ca and not is_loopback(address) and os.environ.get("STOKER_INSECURE") != "1":
        raise SystemExit(
            f"stoker: refusing to send STOKER_TOKEN to {address} without TLS: set STOKER_CA to the "
            "coordinator's CA file (or STOKER_INSECURE=1 to send it in cleartext anyway)"
        )
    if ca:
        ch = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(Path(ca).read_bytes()), options=options
        )
    else:
        ch = grpc.insecure_channel(address, options=options)
    if token:
        ch = grpc.intercept_channel(ch, _BearerToken(token))
    return ch


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or []) + [self._metadata]
        return (
            details._replace(metadata=metadata)
            if hasattr(details, "_replace")
            else _Details(details, metadata)
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base, metadata) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = getattr(base, "compression", None)


def add_spec_arguments(parser, *, command: bool) -> None:
    parser.add_argument("--coordinator", help="host:port (default: $STOKER_COORDINATOR or 127.0.0.1:7070)")
    parser.add_argument("--workspace", required=True, help="project or repository the build belongs to")
    parser.add_argument("--key", default="", help="exact cache key, e.g. web/node_modules-<lockfile hash>")
    parser.add_argument("--restore-key", action="append", default=[], help="restore-key prefix (repeatable)")
    parser.add_argument(
        "--path", action="append", default=[], help="cached path inside the workspace (repeatable)"
    )
    parser.add_argument(
        "--ref",
        default="",
        help="with an untrusted token: the pull request or branch its cache belongs to, e.g. pull/123",
    )
    parser.add_argument("--zone", default="", help="only nodes in this zone")
    parser.add_argument("--label", action="append", default=[], help="only nodes with label k=v (repeatable)")
    parser.add_argument(
        "--tenant", default="", help="team or repository for fair sharing (default: workspace)"
    )
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument(
        "--image", default="", help="OCI image the build runs in (default: the node's build.default_image)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    if command:
        limits = parser.add_argument_group(
            "limits (default: the node's; at most the node's and the coordinator's)"
        )
        limits.add_argument("--cpus", type=float, default=0.0, help="CPU cores, e.g. 2 or 0.5")
        limits.add_argument(
            "--memory", type=size, default=0, help="memory, e.g. 4G (K, M, G, T: powers of 1024)"
        )
        limits.add_argument("--pids", type=int, default=0, help="processes and threads at once")
        limits.add_argument("--output-limit", type=size, default=0, help="bytes of output, e.g. 100M")
        limits.add_argument("--disk", type=size, default=0, help="bytes the workspace may hold, e.g. 10G")
        limits.add_argument("--network", choices=["default", "none"], default="", help="none: loopback only")
        parser.add_argument(
            "--allow-unsandboxed",
            action="store_true",
            help="the build may run on a node without a sandbox (executor process), where the coordinator's "
            "builds.process_nodes is when_asked: for code you trust only",
        )
        parser.add_argument("--timeout", type=float, default=0.0, help="seconds (default: the coordinator's)")
        parser.add_argument("--env", action="append", default=[], help="K=V for the command (repeatable)")
        parser.add_argument(
            "--file",
            action="append",
            default=[],
            help="local file copied into the workspace at the same relative path (repeatable)",
        )
        parser.add_argument("--request-id", default="", help="idempotency key (default: a fresh one)")
        parser.add_argument(
            "--wait-for-nodes",
            type=float,
            default=60.0,
            help="seconds to keep retrying while no node has registered, or while this caller already has "
            "as many builds waiting as it may",
        )
        parser.add_argument("argv", nargs="+", metavar="-- CMD", help="the command to run on the node")


def spec_from_args(args, *, command: bool) -> common_pb2.BuildSpec:
    spec = common_pb2.BuildSpec(
        workspace=args.workspace,
        cache=common_pb2.CacheSpec(
            key=args.key, restore_keys=args.restore_key, paths=args.path, ref=args.ref
        ),
        constraints=common_pb2.Constraints(zone=args.zone, labels=_pairs(args.label, "--label")),
        tenant=args.tenant,
        priority=args.priority,
        image=args.image,
    )
    if command:
        spec.limits.CopyFrom(
            common_pb2.BuildLimits(
                cpus=args.cpus,
                memory_bytes=args.memory,
                pids=args.pids,
                output_bytes=args.output_limit,
                disk_bytes=args.disk,
                network=args.network,
            )
        )
        spec.command.extend(args.argv)
        spec.allow_unsandboxed = args.allow_unsandboxed
        spec.timeout_s = args.timeout
        spec.env.update(_pairs(args.env, "--env"))
        for name in args.file:
            spec.files[name] = Path(name).read_bytes()
    return spec


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"stoker: {flag} {item!r}: expected K=V")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def run_build(args) -> int:
    spec = spec_from_args(args, command=True)
    request_id = args.request_id or uuid.uuid4().hex
    address = coordinator_address(args.coordinator)
    deadline = time.monotonic() + args.wait_for_nodes
    build_id, last_seq, delay = "", 0, 0.5
    with channel(address) as ch:
        stub = build_pb2_grpc.BuildsStub(ch)
        while True:
            try:
                if not build_id:
                    events = stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec, request_id=request_id))
                else:
                    events = stub.WatchBuild(
                        build_pb2.WatchBuildRequest(build_id=build_id, after_seq=last_seq)
                    )
                for event in events:
                    build_id, last_seq = event.build_id, event.seq
                    done = _show(event, args.json)
                    if done is not None:
                        return done
                print("stoker: the event stream ended early; reconnecting", file=sys.stderr)
            except grpc.RpcError as exc:
                # UNAVAILABLE: no node yet, or the coordinator is restarting. RESOURCE_EXHAUSTED (only
                # when submitting): this caller has as many builds waiting as it may; the same request_id
                # makes the retry safe.
                retryable = exc.code() == grpc.StatusCode.UNAVAILABLE or (
                    exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not build_id
                )
                if not retryable or time.monotonic() > deadline:
                    return fail(exc)
                print(f"stoker: {exc.details()}; retrying in {delay:.1f} s", file=sys.stderr)
            time.sleep(delay * random.uniform(0.7, 1.0))
            delay = min(delay * 2, 10.0)
            if build_id:
                deadline = max(deadline, time.monotonic() + 300)  # a running build: keep trying to reattach


def _show(event: build_pb2.BuildEvent, as_json: bool) -> int | None:
    """Print one event; return the exit code when the build has finished."""
    kind = event.WhichOneof("kind")
    if as_json:
        print(json_format.MessageToJson(event, indent=None, preserving_proto_field_name=True), flush=True)
    elif kind == "log":
        # The build's stdout to stdout; its stderr and stoker's own lines (STREAM_STOKER, marked "stoker: ")
        # to stderr, so that the build's output stays byte for byte its own.
        out = sys.stdout if event.log.stream == build_pb2.LogLine.STREAM_STDOUT else sys.stderr
        print(event.log.text, file=out, flush=True)
    else:
        line = _describe(event)
        if line:
            print(f"stoker: {line}", file=sys.stderr, flush=True)
    if kind != "finished":
        return None
    state = event.finished.state
    if state in (build_pb2.BUILD_STATE_SUCCEEDED, build_pb2.BUILD_STATE_FAILED):
        return event.finished.exit_code if event.finished.exit_code >= 0 else 1
    return {
        build_pb2.BUILD_STATE_TIMED_OUT: EXIT_TIMED_OUT,
        build_pb2.BUILD_STATE_CANCELLED: EXIT_CANCELLED,
    }.get(state, EXIT_STOKER_ERROR)


def warmth_name(value: int) -> str:
    return common_pb2.Warmth.Name(value).removeprefix("WARMTH_").lower() if value else "-"


def _describe(event: build_pb2.BuildEvent) -> str:
    kind = event.WhichOneof("kind")
    if kind == "queued":
        return f"build {event.build_id} queued: {event.queued.reason}"
    if kind == "placed":
        p = event.placed
        return f"placed on {p.node} (zone {p.zone or '-'}): {p.reason}"
    if kind == "restoring":
        pr = event.restoring.progress
        if pr.bytes_total:
            return f"restoring {event.restoring.key}: {pr.bytes_done / 1e6:.1f}/{pr.bytes_total / 1e6:.1f} MB"
        return f"restoring cache {event.restoring.key or ''}".rstrip()
    if kind == "restored":
        c = event.restored.cache
        return (
            f"cache {warmth_name(c.warmth)}: restored {c.restored_key or 'nothing'}, "
            f"{c.bytes_fetched / 1e6:.1f} MB fetched in {event.restored.seconds:.2f} s"
        )
    if kind == "saving":
        pr = event.saving.progress
        if pr.bytes_total:
            return f"saved {event.saving.key}: {pr.files_done} files, {pr.bytes_done / 1e6:.1f} MB"
        return f"saving cache {event.saving.key}"
    if kind == "retrying":
        return f"retrying as attempt {event.retrying.next_attempt}: {event.retrying.reason}"
    if kind == "finished":
        f = event.finished
        return (
            f"finished {build_pb2.BuildState.Name(f.state).removeprefix('BUILD_STATE_').lower()} "
            f"(exit {f.exit_code}) on {f.node or '-'} in {f.timings.total_s:.1f} s: {f.message}"
        )
    return ""


def place(args) -> int:
    spec = spec_from_args(args, command=False)
    with channel(coordinator_address(args.coordinator)) as ch:
        try:
            placement = build_pb2_grpc.BuildsStub(ch).PlaceBuild(
                build_pb2.PlaceBuildRequest(spec=spec, lease_s=args.lease), timeout=args.wait
            )
        except grpc.RpcError as exc:
            return fail(exc)
    if args.json:
        print(json_format.MessageToJson(placement, indent=None, preserving_proto_field_name=True))
    else:
        print(f"{placement.lease_id} {placement.node} {placement.zone} {placement.reason}")
        print(
            f"lease secret (STOKER_LEASE_SECRET for stoker lease restore/save on {placement.node}): "
            f"{placement.lease_secret}",
            file=sys.stderr,
        )
    return 0


def release(args) -> int:
    with channel(coordinator_address(args.coordinator)) as ch:
        try:
            reply = build_pb2_grpc.BuildsStub(ch).ReleasePlacement(
                build_pb2.ReleasePlacementRequest(lease_id=args.lease_id), timeout=10
            )
        except grpc.RpcError as exc:
            return fail(exc)
    print("released" if reply.released else "already expired or released")
    return 0


def get(args) -> int:
    with channel(coordinator_address(args.coordinator)) as ch:
        try:
            build = build_pb2_grpc.BuildsStub(ch).GetBuild(
                build_pb2.GetBuildRequest(build_id=args.build_id), timeout=10
            )
        except grpc.RpcError as exc:
            return fail(exc)
    print(json_format.MessageToJson(build, indent=2, preserving_proto_field_name=True))
    return 0


def cancel(args) -> int:
    with channel(coordinator_address(args.coordinator)) as ch:
        try:
            build = build_pb2_grpc.BuildsStub(ch).CancelBuild(
                build_pb2.CancelBuildRequest(build_id=args.build_id, reason=args.reason), timeout=10
            )
        except grpc.RpcError as exc:
            return fail(exc)
    print(f"{build.id}: {build_pb2.BuildState.Name(build.state).removeprefix('BUILD_STATE_').lower()}")
    return 0


def watch(args) -> int:
    with channel(coordinator_address(args.coordinator)) as ch:
        try:
            for event in build_pb2_grpc.BuildsStub(ch).WatchBuild(
                build_pb2.WatchBuildRequest(build_id=args.build_id, after_seq=args.after)
            ):
                done = _show(event, args.json)
                if done is not None:
                    return done
        except grpc.RpcError as exc:
            return fail(exc)
    return 0


def inventory(args) -> int:
    with channel(coordinator_address(args.coordinator)) as ch:
        try:
            reply = inventory_pb2_grpc.InventoryStub(ch).QueryInventory(
                inventory_pb2.QueryInventoryRequest(
                    key_prefix=args.prefix, zone=args.zone, node=args.node, summary_only=args.summary
                ),
                timeout=30,
            )
        except grpc.RpcError as exc:
            return fail(exc)
    if args.json:
        print(json_format.MessageToJson(reply, indent=2, preserving_proto_field_name=True))
        return 0
    print(f"{'NODE':<20} {'ZONE':<10} {'STATE':<13} {'SLOTS':>5} {'RUN':>4} {'ENTRIES':>7} {'BYTES':>12}")
    for n in reply.nodes:
        state = inventory_pb2.NodeState.Name(n.state).removeprefix("NODE_STATE_").lower()
        print(
            f"{n.node:<20} {n.zone:<10} {state:<13} {n.slots:>5} {n.running:>4} {n.entry_count:>7} "
            f"{n.entry_bytes:>12}"
        )
    for n in reply.nodes:  # nodes whose claims the coordinator does not take as sent (docs/security.md)
        flags = []
        if n.uncorroborated_entries:
            flags.append(
                f"{n.uncorroborated_entries} entries it reports are uncorroborated (count for no placement)"
            )
        if n.registered_slots > n.slots:
            flags.append(f"registered with {n.registered_slots} slots, bounded to {n.slots}")
        if flags:
            print(f"flagged: {n.node}: {'; '.join(flags)}")
    print()
    print(f"{'KEY':<48} {'REPLICAS':>8} {'BYTES':>12}  NODES")
    for k in reply.keys:
        print(f"{k.key:<48} {k.replicas:>8} {k.bytes:>12}  {','.join(k.nodes)}")
    h = reply.hit_rates
    print(
        f"\nhits: warm {h.warm_builds}, partial {h.partial_builds}, cold {h.cold_builds}; "
        f"bytes local {h.bytes_local}, fetched {h.bytes_fetched}"
    )
    return 0


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def age(text: str) -> float:
    """Seconds from ``90s``, ``30m``, ``12h``, ``7d``."""
    unit = text.strip()[-1:].lower()
    try:
        number = float(text.strip()[:-1]) if unit in _AGE_UNITS else float("nan")
    except ValueError:
        number = float("nan")
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age (e.g. 30m, 12h, 7d)")
    return number * _AGE_UNITS[unit]


def _state_name(state: int) -> str:
    return build_pb2.BuildState.Name(state).removeprefix("BUILD_STATE_").lower()


BUILD_STATES = [_state_name(s) for s in build_pb2.BuildState.values() if s]


def list_builds(args) -> int:
    """``stoker builds``: the newest builds first, as many pages as --limit needs."""
    request = build_pb2.ListBuildsRequest(
        workspace=args.workspace,
        owner=args.owner,
        node=args.node,
        page_size=min(args.limit, 500),
    )
    if args.state:
        request.state = build_pb2.BuildState.Value("BUILD_STATE_" + args.state.upper())
    if args.since is not None:
        request.since.FromSeconds(int(time.time() - args.since))
    builds: list[build_pb2.Build] = []
    with channel(coordinator_address(args.coordinator)) as ch:
        stub = build_pb2_grpc.BuildsStub(ch)
        try:
            while len(builds) < args.limit:
                reply = stub.ListBuilds(request, timeout=30)
                builds.extend(reply.builds)
                if not reply.next_page_token:
                    break
                request.page_token = reply.next_page_token
        except grpc.RpcError as exc:
            return fail(exc)
    builds = builds[: args.limit]
    if args.json:
        for b in builds:
            print(json_format.MessageToJson(b, indent=None, preserving_proto_field_name=True))
        return 0
    if not builds:
        print("no builds match", file=sys.stderr)
        return 0
    print(
        f"{'ID':<20} {'STATE':<10} {'WORKSPACE':<20} {'NODE':<16} {'OWNER':<14} {'CREATED':<20} "
        f"{'EXIT':>5} {'TOOK':>8}"
    )
    for b in builds:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.created.ToSeconds()))
        took = f"{b.timings.total_s:.1f}s" if b.timings.total_s else "-"
        code = str(b.exit_code) if b.HasField("finished") else "-"
        print(
            f"{b.id:<20} {_state_name(b.state):<10} {b.spec.workspace[:20]:<20} {b.node[:16] or '-':<16} "
            f"{b.owner[:14] or '-':<14} {created:<20} {code:>5} {took:>8}"
        )
    return 0


def prewarm(args) -> int:
    """``stoker prewarm KEY``: have nodes fetch an entry now; with --wait, until they hold it."""
    with channel(coordinator_address(args.coordinator)) as ch:
        try:
            reply = inventory_pb2_grpc.InventoryStub(ch).Prewarm(
                inventory_pb2.PrewarmRequest(
                    key=args.key, restore_keys=args.restore_key, replicas=args.replicas, zone=args.zone
                ),
                timeout=30,
            )
        except grpc.RpcError as exc:
            return fail(exc)
        print(f"holding: {', '.join(reply.holding) or 'none'}; asked: {', '.join(reply.asked) or 'none'}")
        if not args.wait or not reply.asked:
            return 0
        deadline = time.monotonic() + args.wait
        waiting = set(reply.asked)
        while waiting and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                held = inventory_pb2_grpc.InventoryStub(ch).QueryInventory(
                    inventory_pb2.QueryInventoryRequest(key_prefix=args.key, summary_only=True), timeout=30
                )
            except grpc.RpcError as exc:
                return fail(exc)
            nodes = {n for k in held.keys if k.key == args.key for n in k.nodes}
            for node in sorted(waiting & nodes):
                print(f"{node}: holds {args.key}")
            waiting -= nodes
    if waiting:
        print(f"stoker: not yet on {', '.join(sorted(waiting))} after {args.wait:g} s", file=sys.stderr)
        return EXIT_STOKER_ERROR
    return 0


def forget_node(args) -> int:
    """``stoker node forget NODE``: remove a lost node from the inventory."""
    with channel(coordinator_address(args.coordinator)) as ch:
        try:
            inventory_pb2_grpc.InventoryStub(ch).ForgetNode(
                inventory_pb2.ForgetNodeRequest(node=args.node), timeout=10
            )
        except grpc.RpcError as exc:
            return fail(exc)
    print(f"forgot node {args.node}")
    return 0
