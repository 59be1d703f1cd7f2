"""Start overhead of a build under the podman executor vs the process executor (issue 15, first part).

    python -m bench.sandbox --json [--runs 20] [--dir DIR]     (from the repository root)

Both executors run ``true`` in a fresh workspace ``--runs`` times, interleaved (process, podman, …), with the
podman image already in the executor's storage (a busybox image ``podman import``ed from Debian's
busybox-static, no registry). Reported: p50/p95/max of the wall time of ``run()`` per executor, and the
podman minus process difference of the p50s. Needs root, podman, runc, catatonit and busybox-static.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from stoker.agent.config import PodmanSettings
from stoker.agent.executors.base import BuildExecutor, BuildJob, Limits
from stoker.agent.executors.podman import PodmanExecutor
from stoker.agent.executors.process import ProcessExecutor
from tests.helpers.sandbox import busybox_rootfs_tar

IMAGE = "localhost/stoker-bench/busybox:1"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _measure(runs: int, work: Path) -> dict[str, list[float]]:
    podman = PodmanExecutor(PodmanSettings(dir=str(work / "podman"), kill_grace_s=1.0))
    process = ProcessExecutor(work / "groups", ("PATH",))
    for executor in (podman, process):
        await executor.start()
    tar = work / "rootfs.tar"
    tar.write_bytes(busybox_rootfs_tar())
    imported = subprocess.run(
        [*podman._global_args(), "import", str(tar), IMAGE], capture_output=True, text=True
    )
    if imported.returncode != 0:
        raise SystemExit(f"podman import failed: {imported.stderr}")
    times: dict[str, list[float]] = {"process": [], "podman": []}
    for i in range(runs):
        for name, executor in (("process", process), ("podman", podman)):
            times[name].append(await _one(executor, work / f"ws-{name}-{i}", f"bench-{name}-{i}"))
    return times


async def _one(executor: BuildExecutor, workspace: Path, build_id: str) -> float:
    workspace.mkdir()
    job = BuildJob(
        build_id, ("true",), workspace, image=IMAGE, limits=Limits(pids=256, memory_bytes=256 << 20)
    )
    assert await executor.prepare(job, lambda line, err: None) is None  # the image is cached: no pull
    started = time.perf_counter()
    outcome = await executor.run(job, lambda line, err: None)
    elapsed = time.perf_counter() - started
    if not outcome.succeeded:
        raise SystemExit(f"{executor.name}: {outcome}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dir", help="work directory (default: a temporary one under /tmp; keep it short)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="stoker-bench-"))
    try:
        times = asyncio.run(_measure(args.runs, work))
    finally:
        podman_dir = work / "podman"
        subprocess.run(
            [
                "podman",
                "--root",
                str(podman_dir / "storage"),
                "--runroot",
                str(podman_dir / "run"),
                "system",
                "reset",
                "--force",
            ],
            capture_output=True,
        )
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    results = {
        name: {"p50_s": statistics.median(v), "p95_s": _percentile(v, 0.95), "max_s": max(v), "runs": len(v)}
        for name, v in times.items()
    }
    report = {
        "benchmark": "sandbox start overhead (true)",
        "host": platform.node(),
        "results": results,
        "podman_extra_p50_s": results["podman"]["p50_s"] - results["process"]["p50_s"],
    }
    print(json.dumps(report, indent=2) if args.json else report)


if __name__ == "__main__":
    main()
