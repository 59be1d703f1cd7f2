#!/usr/bin/env python3
"""Is ``stoker plan`` right? Run a real fleet on loopback through the demo's builds, export its history,
replay it under the same fleet, and compare what the planner predicts with what the fleet did.

    python bench/plan_accuracy.py --json                       # 4 nodes × 2 slots, 8 workspaces, 120 builds
    python bench/plan_accuracy.py --builds 40 --workspaces 4   # smaller

Real parts: a coordinator and agents as processes over gRPC, the demo's installer as each build's command
(``stoker.demo.installer``: a package tree whose restore and install move real bytes), the agents' blob
store a local directory (``--s3-endpoint URL`` for an S3 server), then ``stoker history export``,
``stoker history fleet`` and ``stoker plan --json`` as a user runs them. The errors: per warmth, predicted
count − observed count over the number of builds; bytes fetched by builds' restores, (predicted − observed)
/ observed (prewarms are left out of both: the history records only what builds fetched).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from stoker.demo import local_fleet
from stoker.demo.run import _spec
from stoker.v1 import build_pb2, build_pb2_grpc

WARMTHS = ("warm", "partial", "cold")


def workload(
    workspaces: int, builds: int, packages: int, change_p: float, seed: int
) -> list[tuple[str, dict]]:
    """``builds`` builds over ``workspaces`` workspaces (a few popular ones get most), each with ``packages``
    dependencies; before a build, with chance ``change_p``, its workspace bumps one package (a lockfile
    change: a new key, most of the tree the same)."""
    rng = random.Random(seed)
    deps = {f"ws-{w}": {f"pkg-{w}-{i}": "1.0.0" for i in range(packages)} for w in range(workspaces)}
    weights = [1.0 / (w + 1) for w in range(workspaces)]
    out = []
    for _ in range(builds):
        ws = rng.choices(list(deps), weights)[0]
        if rng.random() < change_p:
            name = rng.choice(sorted(deps[ws]))
            major = int(deps[ws][name].split(".")[0]) + 1
            deps[ws] = {**deps[ws], name: f"{major}.0.0"}
        out.append((ws, dict(deps[ws])))
    return out


def run_builds(
    address: str, builds: list[tuple[str, dict]], concurrency: int, gap_s: float = 0.0
) -> list[str]:
    """Submit the builds in order, at most ``concurrency`` at once; returns each build's final state."""
    stub = build_pb2_grpc.BuildsStub(grpc.insecure_channel(address))
    states: list[str] = [""] * len(builds)
    gate = threading.Semaphore(concurrency)
    threads = []

    def one(i: int, ws: str, deps: dict) -> None:
        try:
            for event in stub.SubmitBuild(
                build_pb2.SubmitBuildRequest(spec=_spec(ws, deps, "process")), timeout=300
            ):
                if event.WhichOneof("kind") == "finished":
                    states[i] = build_pb2.BuildState.Name(event.finished.state)
        finally:
            gate.release()

    for i, (ws, deps) in enumerate(builds):
        gate.acquire()
        t = threading.Thread(target=one, args=(i, ws, deps))
        t.start()
        threads.append(t)
        if gap_s:
            time.sleep(gap_s)
    for t in threads:
        t.join()
    return states


def stoker(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", *args], capture_output=True, text=True, timeout=600, env=env
    )


def export_and_plan(address: str, out: Path, env: dict | None = None) -> dict:
    """``stoker history export`` / ``fleet`` into ``out``, then ``stoker plan --json`` of them."""
    trace, fleet = out / "trace.jsonl", out / "fleet.json"
    done = stoker("history", "export", "--coordinator", address, "--since", "1d", env=env)
    if done.returncode:
        raise RuntimeError(f"history export failed: {done.stderr}")
    trace.write_text(done.stdout)
    done = stoker("history", "fleet", "--coordinator", address, "--since", "1d", env=env)
    if done.returncode:
        raise RuntimeError(f"history fleet failed: {done.stderr}")
    fleet.write_text(done.stdout)
    done = stoker("plan", "--trace", str(trace), "--fleet", str(fleet), "--json", env=env)
    if done.returncode:
        raise RuntimeError(f"plan failed: {done.stderr}")
    return json.loads(done.stdout)


def errors(report: dict) -> dict:
    """The planner's errors against what the fleet did (the first variant: the fleet as it was)."""
    predicted, observed = report["variants"][0], report["observed"]
    n = observed["builds"]
    out: dict = {"builds": n, "predicted": {}, "observed": {}}
    for w in WARMTHS:
        out["predicted"][w], out["observed"][w] = predicted[w], observed[w]
        out[f"{w}_error_share"] = round((predicted[w] - observed[w]) / n, 4) if n else 0.0
    # Restores only: the history records what builds' restores fetched, not the fleet's prewarms.
    out["predicted"]["bytes_fetched"] = predicted["restore_bytes_fetched"]
    out["predicted"]["prewarm_bytes"] = predicted["prewarm_bytes"]
    out["observed"]["bytes_fetched"] = observed["bytes_fetched"]
    base = observed["bytes_fetched"]
    out["bytes_fetched_error"] = (
        round((predicted["restore_bytes_fetched"] - base) / base, 4) if base else None
    )
    out["predicted"]["ready_p50_s"], out["observed"]["ready_p50_s"] = (
        predicted["ready_p50_s"],
        observed["ready_p50_s"],
    )
    return out


def run_fleet(
    root: Path,
    *,
    nodes: int,
    slots: int,
    builds: list[tuple[str, dict]],
    concurrency: int,
    agent_args: Callable[[str], tuple[list[str], dict]] | None = None,
    gap_s: float = 0.0,
) -> tuple[local_fleet.Process, list[local_fleet.Process], list[str]]:
    """A coordinator and ``nodes`` agents (two zones), the builds run through them; the caller stops them."""
    coordinator = local_fleet.start_coordinator(root)
    agents = []
    try:
        for i in range(nodes):
            extra, env = agent_args(f"n{i}") if agent_args else ([], {})
            agents.append(
                local_fleet.start_agent(
                    root,
                    f"n{i}",
                    coordinator.address,
                    zone=("zone-a", "zone-b")[i % 2],
                    slots=slots,
                    blobs=root / "blobs",
                    extra=extra,
                    env=env,
                )
            )
        local_fleet.wait_for_nodes(coordinator.address, [f"n{i}" for i in range(nodes)], 60)
        states = run_builds(coordinator.address, builds, concurrency, gap_s)
    except BaseException:
        for p in [coordinator, *agents]:
            p.kill()
        raise
    return coordinator, agents, states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--workspaces", type=int, default=8)
    parser.add_argument("--builds", type=int, default=120)
    parser.add_argument("--packages", type=int, default=20, help="dependencies per workspace")
    parser.add_argument("--change-p", type=float, default=0.15, help="chance a build changes its lockfile")
    parser.add_argument("--concurrency", type=int, default=4, help="builds submitted at once")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stoker-plan-accuracy-") as tmp:
        root = Path(tmp)
        builds = workload(args.workspaces, args.builds, args.packages, args.change_p, args.seed)
        coordinator, agents, states = run_fleet(
            root, nodes=args.nodes, slots=args.slots, builds=builds, concurrency=args.concurrency
        )
        try:
            report = export_and_plan(coordinator.address, root)
        finally:
            for p in [coordinator, *agents]:
                p.kill()
    result = {
        "command": "python bench/plan_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "fleet": {"nodes": args.nodes, "slots": args.slots},
        "workload": {k: getattr(args, k) for k in ("workspaces", "builds", "packages", "change_p", "seed")},
        "succeeded": sum(1 for s in states if s == "BUILD_STATE_SUCCEEDED"),
        **errors(report),
        "wall_s": round(time.monotonic() - started, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['builds']} builds on {args.nodes} nodes × {args.slots} slots ({result['wall_s']} s)")
        for w in WARMTHS:
            print(
                f"  {w:<8} predicted {result['predicted'][w]:>4}  observed {result['observed'][w]:>4}  "
                f"error {result[f'{w}_error_share']:+.1%} of builds"
            )
        print(
            f"  bytes fetched predicted {result['predicted']['bytes_fetched'] / 1e6:.1f} MB, observed "
            f"{result['observed']['bytes_fetched'] / 1e6:.1f} MB, error {result['bytes_fetched_error']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
