"""The scheduling simulator: its input checks, and that it drives the coordinator's own scheduler."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from bench.simkit.engine import Sim, StokerPolicy, make_policy
from bench.simkit.trace import Build, Fleet, FleetEvent, TraceSpec, generate
from stoker.coordinator.placement.domain import KEY
from stoker.coordinator.placement.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[2]
SIM = ROOT / "bench" / "simulate.py"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SIM), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def good_build(**changes) -> dict:
    doc = {
        "t": 1.0,
        "workspace": "w",
        "key": "w/deps-v1",
        "restore_keys": ["w/deps-"],
        "bytes": 1000,
        "files": 3,
        "changed_fraction": 0.0,
        "duration_s": 10.0,
        "tenant": "a",
    }
    doc.update(changes)
    return doc


def test_bad_trace_and_fleet_name_the_line_and_field(tmp_path):
    cases = [
        ({k: v for k, v in good_build().items() if k != "bytes"}, "field 'bytes': missing"),
        (good_build(t=-5), "field 't': must not be negative"),
        (good_build(duration_s="long"), "field 'duration_s': expected a number"),
        (good_build(changed_fraction=2), "field 'changed_fraction'"),
        ({"t": 3, "event": "explode"}, "field 'event': unknown event"),
    ]
    for doc, message in cases:
        trace = tmp_path / "t.jsonl"
        trace.write_text(json.dumps(good_build()) + "\n" + json.dumps(doc) + "\n")
        done = run("--trace", str(trace), "--json", "--no-decision-bench", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert f"t.jsonl:2: {message}" in done.stderr and "Traceback" not in done.stderr
    fleet = tmp_path / "f.json"
    fleet.write_text(json.dumps({"nodes": 4, "slotz": 2}))
    done = run("--fleet", str(fleet), cwd=tmp_path)
    assert done.returncode == 2 and "field 'slotz': unknown" in done.stderr
    done = run("--policies", "stoker,magic", cwd=tmp_path)
    assert done.returncode == 2 and "unknown policy 'magic'" in done.stderr


def test_small_run_reports_every_policy_as_json(tmp_path):
    trace = tmp_path / "t.jsonl"
    done = run(
        "--write-trace", str(trace), "--hours", "2", "--builds-per-day", "3000", "--nodes", "8", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    done = run(
        "--trace",
        str(trace),
        "--nodes",
        "8",
        "--json",
        "--no-decision-bench",
        "--plots",
        str(tmp_path / "plots"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    names = {
        "stoker",
        "random",
        "round_robin",
        "least_loaded",
        "power_of_two",
        "consistent_hash",
        "bounded_hash",
        "history",
        "oracle",
    }
    assert set(report["policies"]) == names
    for name, r in report["policies"].items():
        for key in (
            "ready_p50_s",
            "ready_p99_s",
            "e2e_p99_s",
            "bytes_fetched",
            "max_mean_load",
            "warm_share",
            "partial_share",
            "cold_share",
            "jain_fairness",
        ):
            assert key in r, (name, key)
        assert abs(r["warm_share"] + r["partial_share"] + r["cold_share"] - 1.0) < 1e-3  # rounded to 4 places
    assert report["policies"]["oracle"]["bytes_fetched"] == 0
    assert report["policies"]["oracle"]["warm_share"] == 1.0
    assert report["builds"] == report["policies"]["least_loaded"]["builds"]
    assert [p for p in report["plots"] if p.endswith(".png")]


def test_stoker_policy_is_the_coordinators_scheduler_and_every_build_finishes_once():
    fleet = Fleet(nodes=6, slots=2, disk_bytes=5e9)
    records = generate(
        TraceSpec(hours=3, builds_per_day=4000, node_failures=(1.0, 1.5, 2.5), scale_out=((2.0, 2),)), fleet
    )
    policy = make_policy("stoker", fleet)
    assert isinstance(policy, StokerPolicy) and type(policy.scheduler) is Scheduler
    sim = Sim(fleet, records, policy).run()
    builds = [r for r in records if isinstance(r, Build)]
    assert len(sim.jobs) == len(builds) and all(j.finish and j.node for j in sim.jobs)
    assert sim.failures and any(isinstance(r, FleetEvent) and r.event == "node_add" for r in records)
    assert any(
        j.attempt > 1 for j in sim.jobs
    )  # a failed node's builds were requeued (one of three was busy)
    for node in sim.nodes.values():
        assert sum(node.cache.values()) <= node.disk or len(node.cache) <= 1


def test_the_simulated_agents_carry_out_the_schedulers_evictions():
    fleet = Fleet(nodes=1, slots=1, disk_bytes=10e9)
    records = [
        Build(
            t=float(i * 100),
            workspace="w",
            key=f"w/deps-v{1 + i // 2}",
            restore_keys=("w/deps-",),
            bytes=1_000_000_000,
            files=10,
            changed_fraction=0.0 if i < 2 else 0.05,
            duration_s=20.0,
            tenant="a",
        )
        for i in range(6)
    ]
    sim = Sim(fleet, records, make_policy("stoker", fleet)).run()
    node = sim.nodes["node-000"]
    # Each new version superseded the last on the only node: only the newest is kept (LRU alone keeps all
    # three).
    assert list(node.cache) == ["w/deps-v3"]
    assert [e[KEY] for e in sim.policy.inventory.entries("node-000")] == ["w/deps-v3"]  # and reported so


def test_one_sweep_variant_runs_alone_on_its_own_trace_and_fleet(tmp_path):
    from dataclasses import replace

    done = run(
        "--variant",
        "nodes_20",
        "--hours",
        "1",
        "--policies",
        "least_loaded",
        "--json",
        "--no-decision-bench",
        "--plots",
        str(tmp_path / "plots"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    fleet = replace(Fleet(), nodes=20)
    expected = generate(replace(TraceSpec(hours=1), builds_per_day=8000), fleet)
    assert report["fleet"]["nodes"] == 20 and "builds_per_day=8000" in report["trace"]
    assert report["builds"] == sum(1 for r in expected if isinstance(r, Build)) > 0
    assert set(report["policies"]) == {"least_loaded"} and "sweep" not in report
    done = run("--variant", "nodes_9000", cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_a_trace_may_name_each_builds_image_and_its_size(tmp_path):
    trace = tmp_path / "t.jsonl"
    for doc, message in (
        (good_build(image=5), "field 'image': expected str"),
        (good_build(image_bytes=10), "field 'image_bytes': given without 'image'"),
        (good_build(image="ci/node:20", image_bytes=-1), "field 'image_bytes': must not be negative"),
    ):
        trace.write_text(json.dumps(doc) + "\n")
        done = run(
            "--trace", str(trace), "--json", "--no-decision-bench", "--policies", "stoker", cwd=tmp_path
        )
        assert done.returncode == 2 and f"t.jsonl:1: {message}" in done.stderr, done.stderr
    trace.write_text(json.dumps(good_build(image="ci/node:20", image_bytes=500_000_000)) + "\n")
    done = run("--trace", str(trace), "--json", "--no-decision-bench", "--policies", "stoker", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["policies"]["stoker"]["image_bytes_pulled"] == 500_000_000


def test_without_images_the_generated_trace_is_what_it_was():
    fleet = Fleet()
    plain = generate(TraceSpec(hours=2), fleet)
    with_images = generate(TraceSpec(hours=2, images=4), fleet)
    strip = [replace(r, image="", image_bytes=0) if isinstance(r, Build) else r for r in with_images]
    assert strip == plain and all(not r.image for r in plain if isinstance(r, Build))
    assert len({r.image for r in with_images if isinstance(r, Build)}) > 1


def test_the_scheduler_sends_builds_where_their_image_is_and_pulls_less_than_image_blind_peers():
    fleet = Fleet(nodes=12, slots=2, disk_bytes=50e9, image_budget_bytes=2e9)
    records = generate(
        TraceSpec(hours=3, builds_per_day=3000, images=8, node_failures=(), scale_out=()), fleet
    )
    pulled = {}
    for name in ("stoker", "least_loaded", "random"):
        sim = Sim(fleet, records, make_policy(name, fleet)).run()
        assert all(j.finish for j in sim.jobs)
        for node in sim.nodes.values():
            assert sum(node.images.values()) <= fleet.image_budget_bytes
        pulled[name] = sum(j.pulled for j in sim.jobs)
    assert pulled["stoker"] < 0.8 * min(pulled["least_loaded"], pulled["random"]), pulled


def test_stoker_plan_and_the_benchmark_replay_a_trace_with_the_same_engine(tmp_path):
    """The planner and bench/simulate.py run the same simulator and scheduler: the same trace and fleet give
    the same figures in both."""
    trace, fleet = tmp_path / "t.jsonl", tmp_path / "f.json"
    fleet.write_text(json.dumps({"nodes": 6, "slots": 2, "disk_bytes": 5e9}))
    done = run(
        "--write-trace", str(trace), "--hours", "2", "--builds-per-day", "2000", "--nodes", "6", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    done = run("--trace", str(trace), "--fleet", str(fleet), "--policies", "stoker,least_loaded", "--json",
               "--no-decision-bench", "--plots", str(tmp_path / "plots"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    bench = json.loads(done.stdout)["policies"]
    done = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "plan", "--trace", str(trace), "--fleet", str(fleet),
         "--policy", "stoker,least_loaded", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    planned = {v["policy"]: v for v in json.loads(done.stdout)["variants"]}
    for policy in ("stoker", "least_loaded"):
        for key in (
            "builds",
            "ready_p50_s",
            "ready_p99_s",
            "bytes_fetched",
            "warm_share",
            "cold_share",
        ):
            assert planned[policy][key] == bench[policy][key], (policy, key)
        assert round(planned[policy]["cost"], 2) == bench[policy]["cost"]  # the benchmark rounds to cents
