"""Rollouts of the sample service against a running coordinator: the demo's part, and helpers the tests and
bench/rollout_faults.py share (start a coordinator with rollout settings, run a rollout to its end while
load flows through the balancer, count what failed).

The demo hook::

    from stoker.demo.rollouts import run_demo_rollouts
    rows = run_demo_rollouts(coordinator.address, workdir, say=print)

``workdir`` is the directory the demo's coordinator keeps its state file in (``local_fleet`` puts
``coordinator.db`` there, so the local target's instances live in ``<workdir>/coordinator-rollouts``); the
hook stops every sample instance and balancer under ``workdir`` when it is done.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import grpc

from stoker.cli.output import TERMINAL_PHASES, phase_name, verdict_result
from stoker.demo import local_fleet
from stoker.demo.loadgen import LoadGenerator, summarize
from stoker.v1 import rollout_pb2, rollout_pb2_grpc

TERMINAL = TERMINAL_PHASES
OUTCOME = {
    rollout_pb2.ROLLOUT_PHASE_SUCCEEDED: "succeeded",
    rollout_pb2.ROLLOUT_PHASE_ROLLED_BACK: "rolled_back",
    rollout_pb2.ROLLOUT_PHASE_FAILED: "failed",
    rollout_pb2.ROLLOUT_PHASE_PAUSED: "paused",
}


def write_config(path: Path, rollouts: dict) -> Path:
    """A coordinator settings file (TOML) with a [rollouts] table."""
    lines = ["[rollouts]"]
    for key, value in rollouts.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def start_coordinator(workdir: Path, rollouts: dict, **kwargs) -> local_fleet.Process:
    """A coordinator process with these rollout settings; its local target lives in
    ``<workdir>/coordinator-rollouts``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir / "rollouts.toml", rollouts)
    extra = ["--config", str(config)] + kwargs.pop("extra", [])
    return local_fleet.start_coordinator(workdir, extra=extra, **kwargs)


def stub(address: str) -> rollout_pb2_grpc.RolloutsStub:
    return rollout_pb2_grpc.RolloutsStub(grpc.insecure_channel(address))


def wait_until(
    rollouts: rollout_pb2_grpc.RolloutsStub,
    rollout_id: str,
    phases: Collection[int],
    timeout: float = 120.0,
    on_update: Callable[[rollout_pb2.Rollout], None] | None = None,
) -> rollout_pb2.Rollout:
    """Watch until the rollout reaches one of ``phases`` (or ends); reconnects when the stream breaks."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            for update in rollouts.WatchRollout(
                rollout_pb2.GetRolloutRequest(rollout_id=rollout_id),
                timeout=max(1.0, deadline - time.monotonic()),
            ):
                last = update
                if on_update:
                    on_update(update)
                if update.phase in phases or update.phase in TERMINAL:
                    return update
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                break
            time.sleep(0.2)
            continue
        if last is not None and last.phase in TERMINAL:
            return last
    raise TimeoutError(
        f"rollout {rollout_id} did not reach {sorted(phase_name(p) for p in phases)} within "
        f"{timeout:.0f} s; last: {last.message if last else 'nothing'}"
    )


def deploy_first(
    rollouts: rollout_pb2_grpc.RolloutsStub,
    service: str,
    version: str,
    *,
    zones=("zone-a", "zone-b"),
    instances_per_zone: int = 3,
    timeout: float = 60.0,
) -> rollout_pb2.Rollout:
    r = rollouts.StartRollout(
        rollout_pb2.StartRolloutRequest(
            spec=rollout_pb2.RolloutSpec(
                service=service,
                version=version,
                zones=list(zones),
                instances_per_zone=instances_per_zone,
                post_bake_s=0.5,
            )
        ),
        timeout=10,
    )
    final = wait_until(rollouts, r.id, TERMINAL, timeout)
    if final.phase != rollout_pb2.ROLLOUT_PHASE_SUCCEEDED:
        raise RuntimeError(f"first deployment of {service} ended {phase_name(final.phase)}: {final.message}")
    return final


def verdict_line(v: rollout_pb2.Verdict) -> str:
    result = verdict_result(v)
    return (
        f"{result} [{v.check}] canary {v.canary_errors}/{v.canary_requests} errors, "
        f"p50 {v.canary_p50_ms:.1f} ms;"
        f" baseline {v.baseline_errors}/{v.baseline_requests}, p50 {v.baseline_p50_ms:.1f} ms; "
        f"p={v.p_value:.2g}: {v.reason}"
    )


def run_with_load(
    rollouts: rollout_pb2_grpc.RolloutsStub,
    spec: rollout_pb2.RolloutSpec | rollout_pb2.StartRolloutRequest,
    endpoint: str,
    *,
    rate: float = 100.0,
    timeout: float = 120.0,
    stop_at: set[int] | None = None,
    on_update: Callable[[rollout_pb2.Rollout], None] | None = None,
) -> dict:
    """Start a rollout while ``rate`` requests per second flow through ``endpoint``; wait for its end (or one
    of ``stop_at``) and report outcome, time to detect a fault, and requests sent and failed during it.
    ``spec`` may be a whole StartRolloutRequest (a rollout file's text and the version)."""
    request = (
        spec
        if isinstance(spec, rollout_pb2.StartRolloutRequest)
        else rollout_pb2.StartRolloutRequest(spec=spec)
    )
    with LoadGenerator(
        endpoint, rate, max_requests=int(rate * (timeout + 10)), max_duration_s=timeout + 10
    ) as load:
        time.sleep(1.0)  # traffic flows before the rollout begins
        t0 = time.time()
        r = rollouts.StartRollout(request, timeout=10)
        detect: dict[str, float] = {}

        def seen(update: rollout_pb2.Rollout) -> None:
            stopped = update.phase == rollout_pb2.ROLLOUT_PHASE_ROLLING_BACK or (
                update.phase == rollout_pb2.ROLLOUT_PHASE_PAUSED and not update.awaiting_promotion
            )
            if stopped:  # a pause step waiting for its promotion is the plan, not a detection
                detect.setdefault("t", time.time())
            if on_update:
                on_update(update)

        final = wait_until(rollouts, r.id, stop_at or set(), timeout, seen)
        t1 = time.time()
        time.sleep(0.5)
    summary = summarize(load.results, t0, t1)
    return {
        "service": r.spec.service,
        "version": r.spec.version,
        "rollout_id": r.id,
        "outcome": OUTCOME.get(final.phase, phase_name(final.phase)),
        "detect_s": round(detect["t"] - t0, 2) if "t" in detect else None,
        "duration_s": round(t1 - t0, 2),
        "requests": summary.requests,
        "failed_requests": summary.failed,
        "by_version": summary.by_version,
        "message": final.message,
        "verdicts": [verdict_line(v) for v in final.verdicts],
    }


class FloorWatcher:
    """Samples, every ``interval_s``, how many instances per zone the balancer has UP; remembers the
    lowest."""

    def __init__(self, local_dir: Path, service: str, interval_s: float = 0.05) -> None:
        self.local_dir, self.service, self.interval_s = local_dir, service, interval_s
        self.lowest: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="floor-watcher", daemon=True)

    def _run(self) -> None:
        from stoker.coordinator.rollouts.targets.local import servers_up_by_zone

        while not self._stop.is_set():
            try:
                up = servers_up_by_zone(self.local_dir, self.service)
            except OSError:
                up = None
            if up is not None:
                self.samples += 1
                for zone in set(up) | set(self.lowest):
                    self.lowest[zone] = min(self.lowest.get(zone, up.get(zone, 0)), up.get(zone, 0))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> FloorWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def teardown_under(base: Path) -> int:
    """Stop every balancer and instance the local target started under ``base`` (any ``*-rollouts`` dir)."""
    from stoker.coordinator.rollouts.targets.local import teardown

    killed = 0
    for root in {p.parent.parent for p in Path(base).rglob("haproxy.json")}:
        killed += teardown(root)
    return killed


DEMO_ROLLOUT_FILE = """\
# sample.rollout.yaml: how the demo rolls the sample service out (docs/rollouts.md explains every key)
apiVersion: stoker.dev/v1
kind: Rollout
service: sample
plan:
  bake: 4s
  min_requests: 100
  post_bake: 3s
  steps:
    - share: 10
    - share: 50
    - share: 100
      zone_first: true
analysis:
  source: scrape
  metrics:
    requests: stoker_sample_requests_total
    errors: 'code=~"5.."'
    latency: stoker_sample_request_duration_seconds
"""


def run_demo_rollouts(coordinator_address: str, base: Path, say: Callable[[str], None] = print) -> list[dict]:
    """One good and one faulty rollout of the sample service on the demo's coordinator (~40 s).

    Deploys ``sample`` v1 (3 instances in each of two zones) behind HAProxy, then, with 100 requests per
    second flowing through the balancer, rolls out v2 from a rollout file (``DEMO_ROLLOUT_FILE``: 10 % →
    50 % → 100 %, fault-free: should succeed with no failed request) and v3 from flags (10 % of its answers
    are errors: should be caught at the canary and rolled back). Returns one row per rollout: service,
    version, outcome, detect_s, failed_requests, requests, duration_s, by_version, verdicts.
    """
    rollouts = stub(coordinator_address)
    rows = []
    try:
        say("rollouts: deploying sample v1 (3 instances in each of zone-a and zone-b) behind HAProxy")
        first = deploy_first(rollouts, "sample", "v1")
        common: dict[str, Any] = dict(
            service="sample", bake_s=8.0, min_requests=150, post_bake_s=3.0, canary_percent=5.0
        )
        # 10 %, not 5 %: the canary serves ~250 requests here, and at 5 % one run in ~25 drew too few errors
        # (6 of 252: Fisher p = 0.0013) to pass the judge's per-look threshold, so the demo rolled it out. At
        # 10 % the judge's test catches it, or the guardrail does first when the canary's error rate passes
        # its cap.
        path = base / "sample.rollout.yaml"
        path.write_text(DEMO_ROLLOUT_FILE)
        from_file = rollout_pb2.StartRolloutRequest(
            spec=rollout_pb2.RolloutSpec(version="v2"),
            rollout_file=DEMO_ROLLOUT_FILE,
            rollout_file_name=path.name,
        )
        # (what the run says, the summary table's short name, the request)
        starts: tuple[tuple[str, str, rollout_pb2.RolloutSpec | rollout_pb2.StartRolloutRequest], ...] = (
            (
                f"good version v2 from a rollout file (stoker rollout start -f {path} --version v2)",
                "good v2, from a rollout file",
                from_file,
            ),
            (
                "faulty version v3 (10 % errors)",
                "faulty v3 (10 % errors)",
                rollout_pb2.RolloutSpec(version="v3", env={"STOKER_SAMPLE_ERROR_RATE": "0.10"}, **common),
            ),
        )
        for title, short, spec in starts:
            say(f"rollouts: {title}, 100 req/s through {first.endpoint}")
            last_phase: list[object] = [None, False]

            def show(update: rollout_pb2.Rollout, last_phase: list[object] = last_phase) -> None:
                if not last_phase[1] and update.plan:
                    last_phase[1] = True
                    for line in update.plan:
                        say(f"  plan: {line}")
                if (update.phase, update.step) != last_phase[0]:
                    last_phase[0] = (update.phase, update.step)
                    zones = " ".join(
                        f"{z.zone}={z.old_instances}old/{z.new_instances}new" for z in update.zones
                    )
                    say(f"  {phase_name(update.phase):<13} {zones}  {update.message}")

            row = run_with_load(rollouts, spec, first.endpoint, rate=100.0, timeout=60.0, on_update=show)
            row["title"] = short
            for line in row["verdicts"]:
                say(f"  verdict: {line}")
            say(
                f"  → {row['outcome']} after {row['duration_s']:.1f} s; {row['failed_requests']} of "
                f"{row['requests']} requests failed"
                + (f"; detected after {row['detect_s']:.1f} s" if row["detect_s"] is not None else "")
            )
            rows.append(row)
    finally:
        teardown_under(base)
    return rows


def start_prometheus(
    workdir: Path, binary: str, local_dir: Path, *, service_label: str = "service"
) -> tuple[subprocess.Popen, str]:
    """A real Prometheus on a free loopback port that scrapes, every second, the instances the local target
    publishes (``<local_dir>/file_sd+prometheus/*.json``); the target's ``service`` label is renamed
    ``service_label`` (a service's own label names). Returns the process and its base URL."""
    import socket
    import urllib.request

    workdir.mkdir(parents=True, exist_ok=True)
    (local_dir / "file_sd+prometheus").mkdir(parents=True, exist_ok=True)  # so Prometheus can watch it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    relabel = ""
    if service_label != "service":
        relabel = f"""
    relabel_configs:
      - source_labels: [service]
        target_label: {service_label}
      - regex: service
        action: labeldrop"""
    (workdir / "prometheus.yml").write_text(
        f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: rollouts
    scrape_timeout: 900ms
    file_sd_configs:
      - files: ["{local_dir}/file_sd+prometheus/*.json"]
        refresh_interval: 1s{relabel}
"""
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=(workdir / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"Prometheus did not become ready; see {workdir / 'prometheus.log'}")


SHOP_COMMAND = [
    sys.executable, "-m", "stoker.demo.shop_service",
    "--port", "{port}", "--instance", "{instance}", "--version", "{version}",
]  # fmt: skip
"""The local target's command for the second sample program (``rollouts.command``)."""
