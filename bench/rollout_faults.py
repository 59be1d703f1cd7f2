"""The rollout fault matrix (issue 5): each fault against the local-process target, with real traffic.

    .venv/bin/python bench/rollout_faults.py --json              # every scenario, JSON on stdout
    .venv/bin/python bench/rollout_faults.py good errors_1pct    # some scenarios, a table

For each scenario: a fresh coordinator process (its own SQLite file and local target directory), the sample
service v1 deployed as 4 instances in each of two zones behind HAProxy, then a load generator sending
``--rate`` requests per second through the balancer (loopback only, bounded in count and time) while v2 —
with the scenario's fault — is rolled out. Reported per scenario: outcome (succeeded / rolled_back / paused),
time to detect (rollout start → rolling back or paused), requests sent and failed during the rollout, and
failures by the version that answered ("(balancer)": HAProxy answered itself or the connection failed).

Two baselines run the fault-free v2 over the same traffic without the engine:

- ``baseline_all_at_once``: stop every v1 instance (SIGTERM), start every v2 instance and put it in the
  balancer at once (the plain "replace everything" deploy);
- ``baseline_naive_rolling``: one instance at a time, stop the old one (SIGTERM, no drain), start the new one,
  put it in the balancer, wait for HAProxy to report it UP, next.

Scenarios driven by rollout files (``file_*``, ``own_metrics_*``, ``webhook_down``): a multi-step plan
(10 % → 50 % → 100 %) that succeeds; a fault that shows late and is caught at the second step within
that step's bake; a ``pause`` step promoted by ``stoker rollout promote``; a ``pause`` step that times
out and rolls back; a second sample program with its own metric names, labels and gRPC status codes
judged through a real Prometheus (good, and faulty); and a multi-step rollout whose webhook receivers
are down the whole time (one refuses connections, one answers 503 and counts the retries).

``coordinator_kill`` sends SIGKILL to the coordinator at each state transition of a fault-free rollout,
restarts it on the same state file, and checks the rollout finishes exactly once: each new instance started
once, each step's intent recorded once, no zone below its floor (sampled from HAProxy every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stoker.coordinator.rollouts.targets import local as target_local
from stoker.demo import rollouts as demo_rollouts
from stoker.demo.loadgen import LoadGenerator, summarize
from stoker.v1 import rollout_pb2 as PB

ZONES = ("zone-a", "zone-b")
PER_ZONE = 4
SETTINGS = {
    "bake_s": 20.0,
    "post_bake_s": 3.0,
    "judge_interval_s": 2.0,
    "min_requests": 300,
    "tick_s": 0.25,
    "progress_deadline_s": 8.0,
    "inconclusive_limit": 2,
    "alpha": 0.05,
    "drain_timeout_s": 5.0,
    "stop_grace_s": 2.0,
    "instances_per_zone": PER_ZONE,
}
FAULTS = {
    "good": {},
    "errors_5pct": {"STOKER_SAMPLE_ERROR_RATE": "0.05"},
    "errors_1pct": {"STOKER_SAMPLE_ERROR_RATE": "0.01"},
    "latency_50ms": {"STOKER_SAMPLE_LATENCY_MS": "50"},
    "crash_at_start": {"STOKER_SAMPLE_CRASH_AT_START": "1"},
    "never_ready": {"STOKER_SAMPLE_NEVER_READY": "1"},
    "no_traffic": {},
    "metrics_down": {},
}
EXPECTED = {
    "good": "succeeded",
    "errors_5pct": "rolled_back",
    "errors_1pct": "rolled_back",
    "latency_50ms": "rolled_back",
    "crash_at_start": "rolled_back",
    "never_ready": "rolled_back",
    "no_traffic": "paused",
    "metrics_down": "paused",
    "coordinator_kill": "succeeded",
    "baseline_all_at_once": "succeeded",
    "baseline_naive_rolling": "succeeded",
    "file_multi_step": "succeeded",
    "file_fault_step2": "rolled_back",
    "file_pause_promoted": "succeeded",
    "file_pause_timeout": "rolled_back",
    "own_metrics_prometheus": "succeeded",
    "own_metrics_fault": "rolled_back",
    "webhook_down": "succeeded",
}
FILE_SCENARIOS = [n for n in EXPECTED if n.startswith(("file_", "own_metrics_", "webhook_"))]

MULTI_STEP = """\
    - {share: 10, bake: 15s}
    - {share: 50, bake: 15s}
    - {share: 100}
"""
PAUSED_PLAN = """\
    - {share: 25, bake: 12s}
    - pause: {timeout: %s, on_timeout: rollback}
    - {share: 100}
"""


def sample_file(steps: str, env: dict[str, str] | None = None, hooks: list[str] | None = None) -> str:
    """A rollout file for the sample service (its default metric names, spelled out)."""
    text = "apiVersion: stoker.dev/v1\nkind: Rollout\nservice: sample\n"
    if env:
        text += "target:\n  env:\n" + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in env.items())
    text += "plan:\n  min_requests: 300\n  post_bake: 3s\n  steps:\n" + steps
    text += (
        "analysis:\n  source: scrape\n  metrics:\n    requests: stoker_sample_requests_total\n"
        "    errors: 'code=~\"5..\"'\n    latency: stoker_sample_request_duration_seconds\n"
    )
    if hooks:
        text += "notifications:\n  webhooks:\n" + "".join(f"    - {{url: '{h}'}}\n" for h in hooks)
    return text


SHOP_FILE = """\
apiVersion: stoker.dev/v1
kind: Rollout
service: shop
target:
  zones: [zone-a, zone-b]
  instances_per_zone: 4
  env: {%s}
plan:
  min_requests: 300
  post_bake: 8s  # longer than Prometheus's discovery of new targets (up to 5 s) and a scrape
  steps:
    - {share: 25, bake: 15s}
    - {share: 100}
analysis:
  source: prometheus
  metrics:
    requests: shop_grpc_server_handled_total
    errors: 'grpc_code=~"Unavailable|Internal|Unknown|DeadlineExceeded"'
    latency: shop_grpc_server_handling_seconds
    service_label: app
  queries:
    requests: >-
      sum by (instance) (shop_grpc_server_handled_total{app="{{service}}",
      version="{{version}}", zone="{{zone}}"})
  guardrails:
    - name: queue depth
      query: max by (instance) (shop_grpc_server_queue_depth{app="{{service}}", version="{{version}}"})
      max: 50
"""


def file_request(text: str, version: str, name: str) -> PB.StartRolloutRequest:
    return PB.StartRolloutRequest(
        spec=PB.RolloutSpec(version=version), rollout_file=text, rollout_file_name=f"{name}.yaml"
    )


SCENARIOS = list(EXPECTED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class World:
    """A coordinator process and the sample service v1 behind HAProxy, in a directory of their own."""

    def __init__(self, root: Path, settings: dict) -> None:
        self.root = root
        self.settings = SETTINGS  # v1 is deployed with the default settings (metrics that work) ...
        self.restart()
        first = demo_rollouts.deploy_first(
            self.stub, "sample", "v1", zones=ZONES, instances_per_zone=PER_ZONE
        )
        self.endpoint = first.endpoint
        self.local_dir = root / "coordinator-rollouts"
        if settings != SETTINGS:  # ... and the scenario's settings apply from a restart on
            self.coordinator.kill()
            self.settings = settings
            self.restart()

    def restart(self) -> None:
        self.coordinator = demo_rollouts.start_coordinator(self.root, self.settings)
        self.stub = demo_rollouts.stub(self.coordinator.address)

    def close(self) -> None:
        self.coordinator.kill()
        demo_rollouts.teardown_under(self.root)


def run_engine(world: World, name: str, rate: float, timeout: float) -> dict:
    spec = PB.RolloutSpec(service="sample", version="v2", env=FAULTS[name])
    stop_at = {PB.ROLLOUT_PHASE_PAUSED}
    if rate <= 0:  # no traffic at all
        t0 = time.time()
        r = world.stub.StartRollout(PB.StartRolloutRequest(spec=spec), timeout=10)
        final = demo_rollouts.wait_until(world.stub, r.id, stop_at, timeout)
        return {
            "outcome": demo_rollouts.OUTCOME.get(final.phase, demo_rollouts.phase_name(final.phase)),
            "detect_s": round(time.time() - t0, 2) if final.phase == PB.ROLLOUT_PHASE_PAUSED else None,
            "duration_s": round(time.time() - t0, 2),
            "requests": 0,
            "failed_requests": 0,
            "by_version": {},
            "message": final.message,
            "verdicts": [demo_rollouts.verdict_line(v) for v in final.verdicts],
        }
    row = demo_rollouts.run_with_load(
        world.stub, spec, world.endpoint, rate=rate, timeout=timeout, stop_at=stop_at
    )
    row.pop("service", None)
    row.pop("version", None)
    return row


def run_coordinator_kill(world: World, rate: float, timeout: float) -> dict:
    order = [
        PB.ROLLOUT_PHASE_PENDING,
        PB.ROLLOUT_PHASE_CANARY,
        PB.ROLLOUT_PHASE_BAKING,
        PB.ROLLOUT_PHASE_SURGING,
        PB.ROLLOUT_PHASE_POST_BAKE,
        PB.ROLLOUT_PHASE_SUCCEEDED,
    ]
    kills = []
    with (
        LoadGenerator(
            world.endpoint, rate, max_requests=int(rate * (timeout + 10)), max_duration_s=timeout + 10
        ) as load,
        demo_rollouts.FloorWatcher(world.local_dir, "sample") as floor,
    ):
        time.sleep(1.0)
        t0 = time.time()
        r = world.stub.StartRollout(
            PB.StartRolloutRequest(spec=PB.RolloutSpec(service="sample", version="v2")), timeout=10
        )
        for phase in order[1:5]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                now = world.stub.GetRollout(PB.GetRolloutRequest(rollout_id=r.id), timeout=5)
                if now.phase in demo_rollouts.TERMINAL or (
                    now.phase in order and order.index(now.phase) >= order.index(phase)
                ):
                    break
                time.sleep(0.05)
            if now.phase in demo_rollouts.TERMINAL:
                break
            world.coordinator.kill()
            kills.append(demo_rollouts.phase_name(now.phase))
            time.sleep(0.3)
            world.restart()
        final = demo_rollouts.wait_until(world.stub, r.id, set(), timeout)
        t1 = time.time()
        time.sleep(0.5)
    traffic = summarize(load.results, t0, t1)
    starts = [s for s in target_local.starts(world.local_dir, "sample") if s["version"] == "v2"]
    with sqlite3.connect(world.root / "coordinator.db") as db:
        intents = [
            k.rsplit("/", 1)[-1]
            for (k,) in db.execute(
                "SELECT key FROM rollout_intents WHERE rollout_id = ? ORDER BY created", (r.id,)
            )
        ]
    return {
        "outcome": demo_rollouts.OUTCOME.get(final.phase, demo_rollouts.phase_name(final.phase)),
        "detect_s": None,
        "duration_s": round(t1 - t0, 2),
        "requests": traffic.requests,
        "failed_requests": traffic.failed,
        "by_version": traffic.by_version,
        "killed_in": kills,
        "new_instance_starts": len(starts),
        "distinct_new_instances": len({s["instance"] for s in starts}),
        "new_instance_restarts": sum(1 for s in starts if s["restart"]),
        "intents": intents,
        "min_up_per_zone": floor.lowest,
        "floor_per_zone": PER_ZONE,
        "floor_samples": floor.samples,
        "message": final.message,
    }


def _rt(sock: Path, line: str) -> str:
    for _attempt in range(20):
        try:
            with socket.socket(socket.AF_UNIX) as s, target_local.runtime_api_path(sock.parent) as path:
                s.connect(path)
                s.sendall(line.encode() + b"\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
            return out.decode(errors="replace")
        except ConnectionRefusedError:  # the runtime API's accept queue is momentarily full
            time.sleep(0.05)
    raise ConnectionRefusedError(f"HAProxy runtime API at {sock}")


def _up(sock: Path, name: str) -> bool:
    for line in _rt(sock, "show stat").splitlines():
        parts = line.split(",")
        if len(parts) > 17 and parts[0] == "be" and parts[1] == name:
            return parts[17].startswith("UP")
    return False


def run_baseline(world: World, name: str, rate: float) -> dict:
    """Replace v1 by v2 without the engine: HAProxy runtime API and signals only."""
    world.coordinator.kill()  # nothing of the engine takes part
    svc = target_local.LocalService(world.local_dir, "sample", "haproxy")
    sock = svc.haproxy.socket
    old = svc.records()
    procs: list[subprocess.Popen] = []

    def start_new(i: int) -> str:
        port = free_port()
        inst = f"base-{i}"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stoker.coordinator.rollouts.sample_service",
                    "--port",
                    str(port),
                    "--instance",
                    inst,
                    "--version",
                    "v2",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        _rt(sock, f"add server be/{inst} 127.0.0.1:{port} {target_local.CHECK}")
        _rt(sock, f"enable health be/{inst}")
        _rt(sock, f"enable server be/{inst}")
        return inst

    def stop_old(rec) -> None:
        try:
            os.kill(rec.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def forget_old(rec) -> None:
        for _ in range(100):
            if not target_local._alive(rec.pid):
                break
            time.sleep(0.05)
        _rt(sock, f"set server be/{rec.id} state maint")  # no `del server`: see target_local.HAProxy.remove

    with LoadGenerator(world.endpoint, rate, max_requests=int(rate * 70), max_duration_s=70) as load:
        time.sleep(1.0)
        t0 = time.time()
        if name == "baseline_all_at_once":
            for rec in old:
                stop_old(rec)
            new = [start_new(i) for i in range(len(old))]
            for rec in old:
                forget_old(rec)
        else:
            new = []
            for i, rec in enumerate(old):
                stop_old(rec)
                new.append(start_new(i))
                forget_old(rec)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and not _up(sock, new[-1]):
                    time.sleep(0.05)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(_up(sock, n) for n in new):
            time.sleep(0.05)
        time.sleep(2.0)  # traffic after the change has settled counts too
        t1 = time.time()
    traffic = summarize(load.results, t0, t1)
    outcome = "succeeded" if all(_up(sock, n) for n in new) else "failed"
    for p in procs:
        p.kill()
        p.wait()
    return {
        "outcome": outcome,
        "detect_s": None,
        "duration_s": round(t1 - t0, 2),
        "requests": traffic.requests,
        "failed_requests": traffic.failed,
        "by_version": traffic.by_version,
    }


def _step_times(final: PB.Rollout) -> dict[int, float]:
    """When each step's bake opened (from the rollout's event log)."""
    out = {}
    for line in final.events:
        stamp, _, text = line.partition(" ")
        if " ready; baking for " in text and text.startswith("baking: step "):
            out[int(text.split()[2])] = float(stamp)
    return out


def run_file(world: World, name: str, rate: float, timeout: float) -> dict:
    """One rollout-file scenario on the sample service."""
    extra: dict = {}
    on_update = None
    if name == "file_multi_step":
        text = sample_file(MULTI_STEP)
    elif name == "file_fault_step2":
        # errors begin 20 s after an instance starts: step 1's canaries pass their 15 s bake
        text = sample_file(
            MULTI_STEP, env={"STOKER_SAMPLE_ERROR_RATE": "0.05", "STOKER_SAMPLE_ERRORS_AFTER_S": "20"}
        )
    elif name == "file_pause_promoted":
        text = sample_file(PAUSED_PLAN % "5m")
        promoted: dict = {}

        def promote(update: PB.Rollout) -> None:
            if update.awaiting_promotion and "t" not in promoted:
                promoted["t"] = time.time()
                cli = subprocess.run(
                    [sys.executable, "-m", "stoker.cli.main", "rollout", "promote", update.id,
                     "--coordinator", world.coordinator.address, "--reason", "bench"],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                promoted["cli_exit"] = cli.returncode

        on_update = promote
        extra["promoted"] = promoted
    elif name == "file_pause_timeout":
        text = sample_file(PAUSED_PLAN % "6s")
    else:  # webhook_down: one URL refuses connections, one answers 503 to everything and counts
        from stoker.demo.webhook_receiver import Receiver

        refusing = f"http://127.0.0.1:{free_port()}/hook"
        with Receiver(always_fail=True) as failing:
            text = sample_file(MULTI_STEP, hooks=[refusing, failing.url])
            row = demo_rollouts.run_with_load(
                world.stub, file_request(text, "v2", name), world.endpoint, rate=rate, timeout=timeout,
                stop_at={PB.ROLLOUT_PHASE_PAUSED},
            )  # fmt: skip
            time.sleep(2.0)
            row["webhook_503_attempts"] = len(failing.attempts)
            row["webhook_503_deliveries"] = len({h.get("x-stoker-delivery") for h, _ in failing.attempts})
            row["webhook_max_attempt"] = max(
                (int(h["x-stoker-attempt"]) for h, _ in failing.attempts), default=0
            )
        return row
    stop_at = {PB.ROLLOUT_PHASE_PAUSED}
    if name in ("file_pause_promoted", "file_pause_timeout"):
        stop_at = set()  # a pause step is the plan: watch on to the end
    row = demo_rollouts.run_with_load(
        world.stub, file_request(text, "v2", name), world.endpoint, rate=rate, timeout=timeout,
        stop_at=stop_at, on_update=on_update,
    )  # fmt: skip
    final = world.stub.GetRollout(PB.GetRolloutRequest(rollout_id=row["rollout_id"]), timeout=10)
    row["plan"] = list(final.plan)
    row["step_reached"] = final.step
    bakes = _step_times(final)
    if name == "file_fault_step2" and final.verdicts:
        failed_at = final.verdicts[-1].time.ToNanoseconds() / 1e9
        row["failed_check"] = final.verdicts[-1].check
        row["detect_after_step2_bake_start_s"] = round(failed_at - bakes.get(2, failed_at), 2)
    if name == "file_pause_timeout" and final.verdicts:
        paused = next(
            (float(e.split()[0]) for e in final.events if "waiting for `stoker rollout promote`" in e), 0
        )
        row["failed_check"] = final.verdicts[-1].check
        row["pause_to_rollback_s"] = round(final.verdicts[-1].time.ToNanoseconds() / 1e9 - paused, 2)
    row.update(extra)
    return row


def run_own_metrics(base: Path, name: str, rate: float, timeout: float) -> dict:
    """The shop service (its own names, gRPC codes as errors) judged through a real Prometheus."""
    root = base / name
    prometheus, url = demo_rollouts.start_prometheus(
        root / "prometheus", __import__("shutil").which("prometheus") or "prometheus",
        root / "coordinator-rollouts", service_label="app",
    )  # fmt: skip
    settings = dict(SETTINGS, command=demo_rollouts.SHOP_COMMAND, metrics="prometheus", prometheus_url=url)
    coordinator = demo_rollouts.start_coordinator(root, settings)
    try:
        stub = demo_rollouts.stub(coordinator.address)
        first = stub.StartRollout(file_request(SHOP_FILE % "", "v1", "shop"), timeout=10)
        first = demo_rollouts.wait_until(stub, first.id, demo_rollouts.TERMINAL, 60)
        if first.phase != PB.ROLLOUT_PHASE_SUCCEEDED:
            raise RuntimeError(f"first deployment of shop: {first.message}")
        env = "SHOP_FAIL_RATE: '0.05'" if name == "own_metrics_fault" else ""
        row = demo_rollouts.run_with_load(
            stub, file_request(SHOP_FILE % env, "v2", "shop"), first.endpoint, rate=rate, timeout=timeout,
            stop_at={PB.ROLLOUT_PHASE_PAUSED},
        )  # fmt: skip
        row["metrics"] = "prometheus: shop_grpc_server_handled_total{grpc_code}, app label"
        return row
    finally:
        coordinator.kill()
        demo_rollouts.teardown_under(root)
        prometheus.kill()
        prometheus.wait()


def run_scenario(name: str, base: Path, rate: float, timeout: float) -> dict:
    if name.startswith("own_metrics_"):
        row = run_own_metrics(base, name, rate, timeout)
        return _judge_row(name, row)
    settings = dict(SETTINGS)
    if name == "webhook_down":
        settings.update(webhook_url_prefixes=["http://127.0.0.1:"])  # the operator allows the receivers
    if name == "metrics_down":
        settings.update(
            metrics="prometheus", prometheus_url=f"http://127.0.0.1:{free_port()}", metrics_timeout_s=1.0
        )
    root = base / name
    world = World(root, settings)
    try:
        if name == "coordinator_kill":
            row = run_coordinator_kill(world, rate, timeout)
        elif name.startswith("baseline_"):
            row = run_baseline(world, name, rate)
        elif name in FILE_SCENARIOS:
            row = run_file(world, name, rate, timeout)
        else:
            row = run_engine(world, name, 0.0 if name == "no_traffic" else rate, timeout)
    finally:
        world.close()
    return _judge_row(name, row)


def _judge_row(name: str, row: dict) -> dict:
    row["expected"] = EXPECTED[name]
    row["ok"] = row["outcome"] == EXPECTED[name]
    if EXPECTED[name] == "succeeded" and name in FILE_SCENARIOS:
        row["ok"] = row["ok"] and row["failed_requests"] == 0
    if name == "file_fault_step2":
        row["ok"] = row["ok"] and row.get("step_reached") == 2 and row["detect_after_step2_bake_start_s"] < 15
    if name == "file_pause_promoted":
        row["ok"] = row["ok"] and row["promoted"].get("cli_exit") == 0
    if name == "file_pause_timeout":
        row["ok"] = row["ok"] and row["failed_check"] == "pause" and row["failed_requests"] == 0
    if name == "webhook_down":
        row["ok"] = row["ok"] and row["webhook_max_attempt"] > 1
    if name in ("good", "coordinator_kill"):
        row["ok"] = row["ok"] and row["failed_requests"] == 0
    if name == "coordinator_kill":
        row["ok"] = (
            row["ok"]
            and row["distinct_new_instances"] == 2 * PER_ZONE
            and row["new_instance_restarts"] == 0
            and sorted(row["intents"]) == ["canary", "surge"]
            and min(row["min_up_per_zone"].values(), default=0) >= PER_ZONE
        )
    if EXPECTED[name] == "rolled_back":
        canary_failures = sum(v["failed"] for k, v in row.get("by_version", {}).items() if k == "v2")
        # a pause that times out rolls back a healthy canary: nothing fails at all
        row["failed_outside_canary"] = row["failed_requests"] - canary_failures
        row["ok"] = row["ok"] and row["failed_outside_canary"] == 0
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"default: all ({', '.join(SCENARIOS)})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second through the balancer")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds one rollout may take")
    parser.add_argument("--dir", help="keep everything here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {SCENARIOS}")
    for binary in ("haproxy",):
        if not __import__("shutil").which(binary):
            print(f"{binary} is not installed: run scripts/system_deps.sh", file=sys.stderr)
            return 2
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="stoker-faults-"))
    results = {}
    started = time.time()
    try:
        for name in args.scenarios or SCENARIOS:
            t = time.time()
            try:
                results[name] = run_scenario(name, base, args.rate, args.timeout)
            except Exception as exc:  # one broken scenario must not hide the others' results
                results[name] = {
                    "outcome": "error",
                    "ok": False,
                    "detect_s": None,
                    "requests": 0,
                    "failed_requests": 0,
                    "error": f"{type(exc).__name__}: {exc}",
                    "expected": EXPECTED[name],
                }
            results[name]["wall_s"] = round(time.time() - t, 1)
            if not args.json:
                r = results[name]
                print(
                    f"{name:<24} {r['outcome']:<12} {'ok' if r['ok'] else 'UNEXPECTED':<10} "
                    f"detect {r['detect_s'] if r['detect_s'] is not None else '-':>6} s  "
                    f"failed {r['failed_requests']:>5} / {r['requests']:>6}  {r.get('by_version', {})}",
                    flush=True,
                )
    finally:
        if not args.dir:
            demo_rollouts.teardown_under(base)
            __import__("shutil").rmtree(base, ignore_errors=True)
    report = {
        "scenarios": results,
        "rate_rps": args.rate,
        "instances": {z: PER_ZONE for z in ZONES},
        "settings": SETTINGS,
        "total_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
