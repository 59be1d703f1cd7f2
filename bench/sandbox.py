"""The podman executor vs the process executor on one node (issue 15): start overhead, warm builds, pulls.

    python -m bench.sandbox --json [--runs 20] [--warm-runs 10] [--pull-rounds 3] [--large-mib 100]
        [--dir DIR]    (from the repository root, as root)

Three measurements in one run (results: bench/RESULTS.md, section "Sandbox"):

1. **Start overhead.** Both executors run ``true`` in a fresh workspace ``--runs`` times, interleaved
   (process, podman, …), the image already in the executor's storage (a busybox image ``podman import``ed
   from Debian's busybox-static). Reported: p50/p95/max of the wall time of ``run()`` per executor, and the
   podman minus process difference of the p50s (``results``, ``podman_extra_p50_s``); also the podman
   executor's prepare() with the image present (``podman_prepare_cached``), which an agent runs before
   each build's run() (the process executor's does nothing), and the ``podman rm`` calls inside run()
   (``podman_container_removal``).
2. **Warm builds** through a real loopback fleet (a coordinator and two agents, one per executor, sharing
   a blob store, each pinned by a label): a first build on the process agent saves a node_modules-like
   tree (``tests.helpers.cache.make_tree``) under one cache key, the podman agent fetches it once, then
   ``--warm-runs`` rounds, agents interleaved, each build once both agents' ready trees of the key are
   back (a node's steady state between builds, and no refill competing for the cores): a build of ``true``
   without a cache (the agent's start overhead), then one with the key (a warm build: restore + ``true``).
   Reported (``warm_build``): the wall time from SubmitBuild to the ``finished`` event, and the phase
   timings that event carries.
3. **First pull vs cached image** (``image_pull``): Debian's docker-registry on 127.0.0.1 serves the busybox
   image and a larger one (the same plus ``--large-mib`` MiB of incompressible deterministic files); each
   round times prepare() + run() of ``true`` right after ``podman rmi`` of the image, then again with the
   image present.

Needs root, podman, runc, catatonit, busybox-static and docker-registry.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import grpc

from stoker.agent.config import PodmanSettings
from stoker.agent.executors.base import BuildExecutor, BuildJob, Limits
from stoker.agent.executors.podman import PodmanExecutor
from stoker.agent.executors.process import ProcessExecutor
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2
from tests.helpers.cache import make_tree
from tests.helpers.fleet import Fleet
from tests.helpers.sandbox import busybox_rootfs_tar, push_rootfs, reset_storage, serve_registry

IMAGE = "localhost/stoker-bench/busybox:1"
WARM_KEY = "bench-sandbox-warm-1"
EXECUTORS = ("process", "podman")
_LIMITS = Limits(pids=256, memory_bytes=256 << 20)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _stats(values: list[float]) -> dict:
    return {
        "p50_s": statistics.median(values),
        "p95_s": _percentile(values, 0.95),
        "max_s": max(values),
        "runs": len(values),
    }


def _quiet(_line: str, _stderr: bool) -> None:
    pass


# -- 1. start overhead -------------------------------------------------------------------------------
async def _start_overhead(
    podman: PodmanExecutor, process: ProcessExecutor, runs: int, work: Path
) -> dict[str, list[float]]:
    tar = work / "rootfs.tar"
    tar.write_bytes(busybox_rootfs_tar())
    imported = subprocess.run(
        [*podman._global_args(), "import", str(tar), IMAGE], capture_output=True, text=True
    )
    if imported.returncode != 0:
        raise SystemExit(f"podman import failed: {imported.stderr}")
    times: dict[str, list[float]] = {"process": [], "podman": [], "podman_prepare": []}
    for i in range(runs):
        for name, executor in (("process", process), ("podman", podman)):
            prepare_s, run_s = await _one(executor, work / f"ws-{name}-{i}", f"bench-{name}-{i}")
            times[name].append(run_s)
            if name == "podman":
                times["podman_prepare"].append(prepare_s)
    return times


async def _one(executor: BuildExecutor, workspace: Path, build_id: str) -> tuple[float, float]:
    """(seconds in prepare(), seconds in run()) of ``true`` with the image cached."""
    workspace.mkdir()
    job = BuildJob(build_id, ("true",), workspace, image=IMAGE, limits=_LIMITS)
    started = time.perf_counter()
    assert await executor.prepare(job, _quiet) is None  # the image is cached: no pull
    prepared = time.perf_counter()
    outcome = await executor.run(job, _quiet)
    elapsed = time.perf_counter() - prepared
    if not outcome.succeeded:
        raise SystemExit(f"{executor.name}: {outcome}")
    return prepared - started, elapsed


# -- 2. first pull vs cached image -------------------------------------------------------------------
async def _pulls(podman: PodmanExecutor, refs: dict[str, str], rounds: int, work: Path) -> dict:
    """Per image and round: prepare() + run() of ``true`` right after ``podman rmi``, then again."""
    times: dict[str, dict[str, list[float]]] = {
        name: {"first_pull_s": [], "first_pull_prepare_s": [], "cached_s": []} for name in refs
    }
    for r in range(rounds):
        for name, ref in refs.items():
            removed = subprocess.run(
                [*podman._global_args(), "rmi", "--force", ref], capture_output=True, text=True
            )
            if removed.returncode != 0 and r > 0:
                raise SystemExit(f"podman rmi {ref} failed: {removed.stderr}")
            prepare_s, total_s = await _prepared_run(podman, ref, work / f"pull-{name}-{r}-cold")
            times[name]["first_pull_s"].append(total_s)
            times[name]["first_pull_prepare_s"].append(prepare_s)
            times[name]["cached_s"].append((await _prepared_run(podman, ref, work / f"pull-{name}-{r}"))[1])
    report: dict[str, dict] = {}
    for name, t in times.items():
        report[name] = {
            "image": refs[name],
            "bytes": _image_bytes(podman, refs[name]),
            **{what: _stats(values) for what, values in t.items()},
        }
        report[name]["first_pull_extra_p50_s"] = (
            report[name]["first_pull_s"]["p50_s"] - report[name]["cached_s"]["p50_s"]
        )
    return report


async def _prepared_run(executor: PodmanExecutor, ref: str, workspace: Path) -> tuple[float, float]:
    """(seconds in prepare(), seconds in prepare() + run()) of ``true`` in ``ref``."""
    workspace.mkdir()
    job = BuildJob(f"bench-{workspace.name}", ("true",), workspace, image=ref, limits=_LIMITS)
    started = time.perf_counter()
    failed = await executor.prepare(job, _quiet)
    if failed is not None:
        raise SystemExit(f"prepare {ref}: {failed}")
    prepared = time.perf_counter()
    outcome = await executor.run(job, _quiet)
    if not outcome.succeeded:
        raise SystemExit(f"run in {ref}: {outcome}")
    return prepared - started, time.perf_counter() - started


def _image_bytes(podman: PodmanExecutor, ref: str) -> int:
    done = subprocess.run(
        [*podman._global_args(), "image", "inspect", "--format", "{{.Size}}", ref],
        capture_output=True,
        text=True,
    )
    return int(done.stdout.strip() or 0)


def _push_images(registry: str, large_mib: int, work: Path) -> dict[str, str]:
    """Push the busybox image and a larger one (busybox plus ``large_mib`` files of 1 MiB of seeded
    random bytes, which gzip cannot shrink) to ``registry``; returns name -> reference."""
    small, large = work / "busybox.tar", work / "large.tar"
    small.write_bytes(busybox_rootfs_tar())
    shutil.copyfile(small, large)
    rng = random.Random(15)
    with tarfile.open(large, "a") as tar:
        for i in range(large_mib):
            data = rng.randbytes(1 << 20)
            info = tarfile.TarInfo(f"opt/data/f{i:04d}.bin")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    refs = {
        "busybox": f"{registry}/stoker-bench/busybox:1",
        f"busybox+{large_mib}MiB": f"{registry}/stoker-bench/large:1",
    }
    for tar_path, ref in zip((small, large), refs.values(), strict=True):
        push_rootfs(tar_path, ref, work / f"push-{tar_path.stem}")
    return refs


# -- 3. warm builds through a fleet --------------------------------------------------------------------
KINDS = ("warm", "no_cache")


def _warm_builds(fleet: Fleet, podman_env: dict[str, str], runs: int, seed: Path) -> dict:
    """A coordinator and one agent per executor on one blob store; the process agent saves the tree
    under WARM_KEY, the podman agent fetches it once; then ``runs`` rounds, executors interleaved, each
    once both agents' ready trees of the key are back: a build of ``true`` without a cache (the agent's own
    start overhead), then a warm one with the key."""
    fleet.start_coordinator()
    for name in EXECUTORS:
        env = podman_env if name == "podman" else {"STOKER_AGENT_BUILD_EXECUTOR": "process"}
        fleet.start_agent(name, labels={"executor": name}, env=env)
    fleet.wait_ready(*EXECUTORS)
    assert fleet.coordinator is not None
    walls: dict[tuple[str, str], list[float]] = {(n, k): [] for n in EXECUTORS for k in KINDS}
    ends: dict[tuple[str, str], list[build_pb2.Finished]] = {(n, k): [] for n in EXECUTORS for k in KINDS}
    missing = dict.fromkeys(EXECUTORS, 0)
    with grpc.insecure_channel(fleet.coordinator.address) as channel:
        builds = build_pb2_grpc.BuildsStub(channel)
        seeded = ["/bin/cp", "-a", str(seed / "node_modules"), "node_modules"]
        _, first = _submit(builds, "process", seeded, WARM_KEY, 600)
        if not first.cache.saved:
            raise SystemExit(f"the seed build saved nothing: {first}")
        _, fetched = _submit(builds, "podman", ["true"], WARM_KEY, 600)
        for _ in range(runs):
            for name in EXECUTORS:
                for kind in ("no_cache", "warm"):
                    for node in EXECUTORS:  # no refill under way on either node (they share the cores)
                        missing[node] += _wait_ready_tree(fleet.root / node, WARM_KEY, 300) < 0
                    wall, finished = _submit(builds, name, ["true"], WARM_KEY if kind == "warm" else "", 300)
                    walls[name, kind].append(wall)
                    ends[name, kind].append(finished)
    report: dict = {
        "tree": {
            "files": fetched.cache.files_restored,
            "bytes": fetched.cache.bytes_restored,
            "saved_bytes_uploaded": first.cache.bytes_uploaded,
        },
        "podman_first_fetch": _phases([fetched]),
    }
    for name in EXECUTORS:
        report[name] = {
            "submit_to_finished": _stats(walls[name, "warm"]),
            "phases_p50": _phases(ends[name, "warm"]),
            "warmth": sorted({common_pb2.Warmth.Name(f.cache.warmth) for f in ends[name, "warm"]}),
            "ready_tree_missing": missing[name],
            "no_cache": {
                "submit_to_finished": _stats(walls[name, "no_cache"]),
                "phases_p50": _phases(ends[name, "no_cache"]),
            },
        }
    for prefix, where in (("", lambda n: report[n]), ("no_cache_", lambda n: report[n]["no_cache"])):
        p50 = {name: where(name)["submit_to_finished"]["p50_s"] for name in EXECUTORS}
        report[f"{prefix}podman_extra_p50_s"] = p50["podman"] - p50["process"]
        report[f"{prefix}podman_over_process_p50"] = p50["podman"] / p50["process"]
    return report


def _submit(
    builds: build_pb2_grpc.BuildsStub, node: str, command: list[str], key: str, timeout_s: float
) -> tuple[float, build_pb2.Finished]:
    """Submit one build pinned to ``node`` with the cache ``key`` (none when empty); (seconds to its
    finished event, the event)."""
    spec = common_pb2.BuildSpec(
        workspace="bench-sandbox",
        command=command,
        cache=common_pb2.CacheSpec(key=key, paths=["node_modules"]) if key else None,
        constraints=common_pb2.Constraints(labels={"executor": node}),
        timeout_s=timeout_s,
    )
    started = time.perf_counter()
    for event in builds.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=timeout_s + 60):
        if event.WhichOneof("kind") == "finished":
            wall = time.perf_counter() - started
            finished = event.finished
            if finished.state != build_pb2.BUILD_STATE_SUCCEEDED or finished.node != node:
                raise SystemExit(f"build on {node} did not succeed there: {finished}")
            return wall, finished
    raise SystemExit(f"build on {node}: the stream ended without a finished event")


def _phases(ends: list[build_pb2.Finished]) -> dict:
    """Median of each phase timing and cache figure the finished events carry."""
    timing = ("queued_s", "restore_s", "run_s", "save_s", "total_s")
    figures = ("bytes_fetched", "bytes_restored", "files_restored")
    out = {k: statistics.median(getattr(f.timings, k) for f in ends) for k in timing}
    out.update({k: statistics.median(getattr(f.cache, k) for f in ends) for k in figures})
    return out


def _wait_ready_tree(node_dir: Path, key: str, timeout_s: float) -> float:
    """Seconds until the node's store holds a ready tree of ``key`` again (re-made in the background after
    each build, see agent/cache/ready_trees.py); -1 when it did not appear in time."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        for record in (node_dir / "cache" / "trees").glob("*.json"):
            try:
                if json.loads(record.read_bytes()).get("key") == key:
                    return time.monotonic() - started
            except (OSError, ValueError):
                pass
        time.sleep(0.1)
    return -1.0


# -- the run -------------------------------------------------------------------------------------------
async def _executor_parts(args: argparse.Namespace, work: Path, registry: str, refs: dict[str, str]) -> dict:
    podman = PodmanExecutor(
        PodmanSettings(dir=str(work / "podman"), kill_grace_s=1.0, insecure_registries=(registry,))
    )
    process = ProcessExecutor(work / "groups", ("PATH",))
    for executor in (podman, process):
        await executor.start()
    removals = _Removals(podman)
    times = await _start_overhead(podman, process, args.runs, work)
    removed = removals.report(args.runs)
    return {"start": times, "removal": removed, "pull": await _pulls(podman, refs, args.pull_rounds, work)}


class _Removals:
    """Counts and times the executor's ``podman rm`` calls, by wrapping its command runner. A build's
    container goes with its ``podman run --rm``; run() calls ``podman rm`` (and tries again after 0.2 s
    when podman reports the container's shm mount still busy) only when podman failed, so any such call
    counts in the start overhead and shows here."""

    def __init__(self, podman: PodmanExecutor) -> None:
        self.calls: list[tuple[int, float]] = []
        inner = podman._podman_cmd

        async def counted(*args: str, runtime: bool = True, timeout_s: float) -> tuple[int, str, str]:
            started = time.perf_counter()
            result = await inner(*args, runtime=runtime, timeout_s=timeout_s)
            if args[:1] == ("rm",):
                self.calls.append((result[0], time.perf_counter() - started))
            return result

        podman._podman_cmd = counted  # type: ignore[method-assign,unused-ignore]

    def report(self, builds: int) -> dict:
        return {
            "builds": builds,
            "rm_calls": len(self.calls),
            "rm_failed": sum(1 for code, _ in self.calls if code != 0),
            "rm_s": _stats([seconds for _, seconds in self.calls]) if self.calls else None,
        }


def _measure(args: argparse.Namespace, work: Path) -> dict:
    (work / "registry").mkdir(parents=True)
    podman_dir = Path(tempfile.mkdtemp(prefix="stoker-bw-"))  # podman refuses a long run directory
    fleet = Fleet(work / "fleet")
    try:
        with serve_registry(work / "registry") as registry:
            refs = _push_images(registry, args.large_mib, work)
            parts = asyncio.run(_executor_parts(args, work, registry, refs))
            make_tree(work / "seed", seed=15, packages=300, files_per_package=14)
            podman_env = {
                "STOKER_AGENT_BUILD_EXECUTOR": "podman",
                "STOKER_AGENT_BUILD_DEFAULT_IMAGE": refs["busybox"],
                "STOKER_AGENT_PODMAN_DIR": str(podman_dir),
                "STOKER_AGENT_PODMAN_INSECURE_REGISTRIES": registry,
            }
            try:
                parts["warm"] = _warm_builds(fleet, podman_env, args.warm_runs, work / "seed")
            finally:
                for agent in fleet.agents.values():
                    agent.stop()
                fleet.stop()
    finally:
        reset_storage(PodmanSettings(dir=str(podman_dir)))
        reset_storage(PodmanSettings(dir=str(work / "podman")))
    return parts


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="start-overhead runs per executor")
    parser.add_argument("--warm-runs", type=int, default=10, help="warm builds per executor")
    parser.add_argument("--pull-rounds", type=int, default=3, help="first pull + cached run per image")
    parser.add_argument("--large-mib", type=int, default=100, help="extra MiB in the larger image")
    parser.add_argument("--dir", help="work directory (default: a temporary one under /tmp; keep it short)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="stoker-bench-"))
    load_before = os.getloadavg()
    try:
        parts = _measure(args, work)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    prepare = parts["start"].pop("podman_prepare")
    results = {name: _stats(v) for name, v in parts["start"].items()}
    report = {
        "benchmark": "sandbox start overhead (true)",
        "host": platform.node(),
        "commit": _commit(),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "results": results,
        "podman_extra_p50_s": results["podman"]["p50_s"] - results["process"]["p50_s"],
        "podman_prepare_cached": _stats(prepare),
        "podman_container_removal": parts["removal"],
        "warm_build": parts["warm"],
        "image_pull": parts["pull"],
    }
    print(json.dumps(report, indent=2) if args.json else report)


if __name__ == "__main__":
    main()
