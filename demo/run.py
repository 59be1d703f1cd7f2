"""``stoker demo``: the embedded default, on one machine, with nothing to configure.

Starts a coordinator and four agents in two zones as separate processes on loopback (each with its
own cache directory, all sharing one local blob-store directory), runs a short series of real
builds, and prints where each went, why, whether its cache was warm, partial or cold, and how many
bytes it fetched; then rolls a small sample service out twice behind a real HAProxy (a good version and one
that answers 10 % errors) and prints how each ended. Everything printed comes from the builds' and rollouts'
own event streams.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from stoker.cli.client import warmth_name
from stoker.demo import installer, local_fleet, sandbox
from stoker.demo.rollouts import run_demo_rollouts, teardown_under
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2, inventory_pb2, inventory_pb2_grpc

EXPECTED_ROLLOUTS = ["succeeded", "rolled_back"]  # the good version, then the faulty one
NODES = [("node-a1", "zone-a"), ("node-a2", "zone-a"), ("node-b1", "zone-b"), ("node-b2", "zone-b")]

WEB_DEPS_V1 = {f"web-pkg-{i:02d}": "1.0.0" for i in range(36)}
WEB_DEPS_V2 = {**WEB_DEPS_V1, "web-pkg-07": "1.1.0"}  # one dependency upgraded
API_DEPS = {f"api-pkg-{i:02d}": "2.3.0" for i in range(24)}


@dataclass
class BuildRow:
    id: str
    title: str
    workspace: str
    key: str
    node: str
    zone: str
    warmth: str
    expected_warmth: str
    reason: str
    restored_key: str
    bytes_fetched: int
    bytes_restored: int
    bytes_uploaded: int
    restore_s: float
    run_s: float
    total_s: float
    exit_code: int
    state: str
    output: str
    executor: str
    """What ran the build on its node: ``podman`` (its own container) or ``process`` (unsandboxed)."""


def _other_zone(zone: str) -> str:
    zones = sorted({z for _, z in NODES})
    return next(z for z in zones if z != zone)


def _key(workspace: str, deps: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:12]
    return f"{workspace}/node_modules-{digest}"


def _spec(workspace: str, deps: dict[str, str], executor: str, zone: str = "") -> common_pb2.BuildSpec:
    """A build of ``workspace`` that installs ``deps`` with the demo's installer: in a container, the image's
    python3 runs the installer's source, sent with the build like its lockfile; as a process, the agent's
    Python runs it from stoker's package."""
    files = {"deps.json": json.dumps(deps, sort_keys=True).encode()}
    if executor == "podman":
        files["installer.py"] = Path(installer.__file__).read_bytes()
        command = ["python3", "installer.py", "deps.json"]
    else:
        command = [sys.executable, "-m", "stoker.demo.installer", "deps.json"]
    return common_pb2.BuildSpec(
        workspace=workspace,
        cache=common_pb2.CacheSpec(
            key=_key(workspace, deps), restore_keys=[f"{workspace}/node_modules-"], paths=["node_modules"]
        ),
        command=command,
        files=files,
        constraints=common_pb2.Constraints(zone=zone),
        timeout_s=300,
    )


def run_build(
    stub: build_pb2_grpc.BuildsStub, title: str, spec: common_pb2.BuildSpec, executor: str
) -> BuildRow:
    placed = build_pb2.Placed()
    finished = build_pb2.Finished()
    output: list[str] = []
    build_id = ""
    for event in stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=300):
        build_id = event.build_id
        kind = event.WhichOneof("kind")
        if kind == "placed":
            placed = event.placed
        elif kind == "log" and not event.log.text.startswith("stoker:"):
            output.append(event.log.text)
        elif kind == "finished":
            finished = event.finished
    cache = finished.cache
    return BuildRow(
        id=build_id,
        title=title,
        workspace=spec.workspace,
        key=spec.cache.key,
        node=finished.node or placed.node,
        zone=placed.zone,
        warmth=warmth_name(cache.warmth),
        expected_warmth=warmth_name(placed.expected_warmth),
        reason=placed.reason,
        restored_key=cache.restored_key,
        bytes_fetched=cache.bytes_fetched,
        bytes_restored=cache.bytes_restored,
        bytes_uploaded=cache.bytes_uploaded,
        restore_s=round(finished.timings.restore_s, 3),
        run_s=round(finished.timings.run_s, 3),
        total_s=round(finished.timings.total_s, 3),
        exit_code=finished.exit_code,
        state=build_pb2.BuildState.Name(finished.state).removeprefix("BUILD_STATE_").lower(),
        output=output[-1] if output else "",
        executor=executor,
    )


# Long on purpose: the demo's script, step by step as it prints (fleet up, builds, rollouts, summary).
def run(args) -> int:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="stoker-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    say = (
        (lambda *a: print(*a, file=sys.stderr, flush=True))
        if args.json
        else (lambda *a: print(*a, flush=True))
    )
    procs: list[local_fleet.Process] = []
    sandboxed = sandbox.Sandbox("process", "not set up yet")
    try:
        say(f"stoker demo: working in {base}")
        coordinator = local_fleet.start_coordinator(base, state=base / "coordinator.db")
        procs.append(coordinator)
        say(f"  coordinator on {coordinator.address} (metrics on :{coordinator.metrics_port})")
        sandboxed = sandbox.prepare(base, say)
        executor = sandboxed.executor
        for name, zone in NODES:
            agent = local_fleet.start_agent(
                base,
                name,
                coordinator.address,
                zone=zone,
                slots=1,
                blobs=base / "blobs",
                env=sandboxed.env_for(name, base),
            )
            procs.append(agent)
        local_fleet.wait_for_nodes(coordinator.address, [n for n, _ in NODES])
        say(f"  4 agents registered: {', '.join(f'{n} ({z})' for n, z in NODES)}")
        if executor == "podman":
            say(f"  builds run sandboxed: {sandboxed.why}, image {sandboxed.image}\n")
        else:
            say(f"  builds run as plain processes of the agents, NOT sandboxed: {sandboxed.why}\n")
        rows: list[BuildRow] = []
        with grpc.insecure_channel(coordinator.address) as channel:
            stub = build_pb2_grpc.BuildsStub(channel)
            plan = [
                ("web, first build", lambda: _spec("web", WEB_DEPS_V1, executor)),
                ("web, same lockfile", lambda: _spec("web", WEB_DEPS_V1, executor)),
                ("api, first build", lambda: _spec("api", API_DEPS, executor)),
                ("web, one dependency upgraded", lambda: _spec("web", WEB_DEPS_V2, executor)),
                # Pinned to the zone where web has not run: the entry must come from the blob store.
                (
                    "web, upgraded, other zone",
                    lambda: _spec("web", WEB_DEPS_V2, executor, zone=_other_zone(rows[-1].zone)),
                ),
            ]
            for n, (title, make_spec) in enumerate(plan, 1):
                say(f"  [{n}/{len(plan)}] {title} ...")
                rows.append(run_build(stub, title, make_spec(), executor))
                time.sleep(0.3)  # let the agent's inventory delta reach the coordinator
            inventory = inventory_pb2_grpc.InventoryStub(channel).QueryInventory(
                inventory_pb2.QueryInventoryRequest(summary_only=True), timeout=10
            )
        if not args.json:
            print_table(rows)
            say("")
        rollouts = run_demo_rollouts(coordinator.address, base, say=say)
        ok = all(r.exit_code == 0 for r in rows) and [r["outcome"] for r in rollouts] == EXPECTED_ROLLOUTS
        if args.json:
            print(
                json.dumps(
                    {
                        "executor": executor,
                        "executor_reason": sandboxed.why,
                        "builds": [asdict(r) for r in rows],
                        "hit_rates": {
                            "warm": inventory.hit_rates.warm_builds,
                            "partial": inventory.hit_rates.partial_builds,
                            "cold": inventory.hit_rates.cold_builds,
                        },
                        "rollouts": rollouts,
                        "ok": ok,
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            print_rollouts(rollouts)
            h = inventory.hit_rates
            print(
                f"\nbuild cache hit rates: warm {h.warm_builds}, partial {h.partial_builds}, "
                f"cold {h.cold_builds}"
            )
            if args.keep or args.dir:
                print(f"logs and state in {base}")
            if not ok:
                print("stoker demo: something did not end as expected (see above)", file=sys.stderr)
        return 0 if ok else 1
    except (local_fleet.FleetError, grpc.RpcError) as exc:
        print(f"stoker demo failed: {exc}", file=sys.stderr)
        for proc in procs:
            print(f"--- {proc.name} log ---\n{proc.log_tail()}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(procs):
            proc.stop()
        # Once the coordinator is down: a rollout it was still driving when the demo stopped early (a closed
        # pipe, ^C) may have started sample instances after the rollouts' own teardown.
        teardown_under(base)
        sandboxed.stop(base, [n for n, _ in NODES])
        if not (args.keep or args.dir):
            shutil.rmtree(base, ignore_errors=True)


def print_rollouts(rows: list[dict]) -> None:
    print(f"\n{'ROLLOUT':<34} {'OUTCOME':<12} {'DETECTED':>9} {'FAILED/REQUESTS':>16}  WHY")
    for r in rows:
        detect = f"{r['detect_s']:.1f}s" if r.get("detect_s") else "-"
        failed = f"{r['failed_requests']}/{r['requests']}"
        print(f"{r['title']:<34} {r['outcome']:<12} {detect:>9} {failed:>16}  {r.get('message', '')}")


def print_table(rows: list[BuildRow]) -> None:
    print(
        f"\n{'#':<2} {'BUILD':<32} {'NODE':<8} {'ZONE':<7} {'IN':<8} {'CACHE':<8} {'FETCHED':>9} "
        f"{'RESTORE':>8} {'RUN':>6} {'EXIT':>4}  WHY"
    )
    for n, r in enumerate(rows, 1):
        print(
            f"{n:<2} {r.title:<32} {r.node:<8} {r.zone:<7} {r.executor:<8} {r.warmth:<8} "
            f"{_mb(r.bytes_fetched):>9} {r.restore_s:>7.2f}s {r.run_s:>5.2f}s {r.exit_code:>4}  "
            f"{r.reason.split('; ready in')[0]}"
        )
    print()
    for n, r in enumerate(rows, 1):
        restored = f"restored {r.restored_key}" if r.restored_key else "restored nothing"
        print(f"{n:<2} {restored}; the build said: {r.output or '(nothing)'}")
    print(REAL_NPM_NOTE)


# The demo's installer is a stand-in that keeps what is present; say how the same builds go with real npm.
REAL_NPM_NOTE = """
With real npm: these builds use a small stand-in installer that keeps what it finds. `npm ci` does not: it
deletes node_modules before installing, so build 2 would reinstall everything stoker restored. With
recipes/npm.sh instead (what the README and docs/ci.md use), build 2 skips the install
(STOKER_CACHE_HIT=exact), build 4 changes only the upgraded package, and build 5 fetches the entry and
skips the install too.
Measured with real npm on a 457-package lockfile, against a cold `npm ci` and the actions/cache way:
python bench/e2e.py --json (figures in bench/RESULTS.md, "End to end with real package managers")."""


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
