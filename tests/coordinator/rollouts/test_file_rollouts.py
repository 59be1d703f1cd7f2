"""Rollouts started from rollout files, end to end: a coordinator process over real gRPC, the local target's
instances behind a real HAProxy, real traffic through it, the `stoker` CLI in a subprocess, and webhooks to a
real HTTP receiver on loopback. ``rollouts.time_scale`` runs the files' real plans faster."""

from __future__ import annotations

import subprocess
import sys
import threading

import grpc
import pytest

from stoker.demo import rollouts as demo_rollouts
from stoker.v1 import rollout_pb2
from tests.coordinator.rollouts.test_rollout_file import docs_example
from tests.helpers.net import free_port
from tests.helpers.webhooks import Receiver

pytestmark = pytest.mark.integration

PB = rollout_pb2


def stoker(address: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "rollout", *args, "--coordinator", address],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def from_file(path, version: str) -> PB.StartRolloutRequest:
    return PB.StartRolloutRequest(
        spec=PB.RolloutSpec(version=version), rollout_file=path.read_text(), rollout_file_name=path.name
    )


def promote_when_waiting(address: str, promoted: list[str]):
    """An on_update hook: the first time the rollout waits at a pause step, `stoker rollout promote` it."""

    def hook(update: PB.Rollout) -> None:
        if update.awaiting_promotion and update.id not in promoted:
            promoted.append(update.id)
            threading.Thread(
                target=lambda: promoted.append(stoker(address, "promote", update.id, "--reason", "ok").stdout)
            ).start()

    return hook


def test_the_docs_example_rolls_out_step_by_step_and_waits_for_the_cli_to_promote(rollout_fleet, tmp_path):
    # 60 s bakes take 3 s; the example's webhooks (Slack, example.com) are outside the allowed prefixes
    address = rollout_fleet.start(
        time_scale=0.05, inconclusive_limit=4, webhook_url_prefixes=["http://127.0.0.1:"]
    ).address
    stub = rollout_fleet.stub()
    path = tmp_path / "rollout.yaml"
    path.write_text(docs_example())

    # the coordinator checks the file itself (a client that skipped the CLI's check is refused the same way)
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRollout(
            PB.StartRolloutRequest(
                spec=PB.RolloutSpec(version="v1"),
                rollout_file=docs_example().replace("share: 50", "share: 0"),
                rollout_file_name="rollout.yaml",
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("rollout.yaml:15: plan.steps[2].share: must be in (0, 100], got 0")
    assert not stub.ListRollouts(PB.ListRolloutsRequest(service="web"), timeout=5).rollouts

    first = stoker(address, "start", "-f", str(path), "--version", "v1", "--watch")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "from     file rollout.yaml" in first.stdout
    endpoint = stub.ListRollouts(PB.ListRolloutsRequest(service="web"), timeout=5).rollouts[0].endpoint

    promoted: list[str] = []
    good = demo_rollouts.run_with_load(
        stub,
        from_file(path, "v2"),
        endpoint,
        rate=120,
        timeout=90,
        on_update=promote_when_waiting(address, promoted),
    )
    assert good["outcome"] == "succeeded", good
    assert good["failed_requests"] == 0 and good["requests"] > 1000, good
    assert promoted[0] == good["rollout_id"]
    final = stub.GetRollout(PB.GetRolloutRequest(rollout_id=good["rollout_id"]), timeout=5)
    assert list(final.plan) == [
        "step 1/4: 10 % (zone-a 1/4, zone-b 1/4); bake 3 s and >= 100 requests",
        "step 2/4: 50 % (zone-a 2/4, zone-b 2/4), first zone first; bake 6 s and >= 100 requests",
        "step 3/4: pause for `stoker rollout promote` (up to 180 s, then rollback)",
        "step 4/4: 100 % (zone-a 4/4, zone-b 4/4), first zone first; post-bake 1.5 s",
    ]
    passes = [v for v in final.verdicts if v.check == "all"]
    assert len(passes) == 2 and all(v.canary_requests >= 100 and v.baseline_requests >= 100 for v in passes)
    assert passes[1].canary_requests > passes[0].canary_requests  # step 2 ran twice the canary share
    assert [(z.old_instances, z.new_instances) for z in final.zones] == [(0, 4), (0, 4)]
    events = "\n".join(final.events)
    assert "promoted by an operator (ok)" in events
    shown = stoker(address, "get", good["rollout_id"])
    assert "  plan     step 1/4: 10 % (zone-a 1/4, zone-b 1/4); bake 3 s and >= 100 requests" in shown.stdout
    assert "webhook https://hooks.slack.com/…: not allowed by rollouts.webhook_url_prefixes" in events
    assert "XXXXXXXX" not in events  # the secret part of a Slack URL is never shown
    assert "step 2/4: 50 % of v2 in zone zone-a first" in events

    history = stoker(address, "history", "web")
    rows = [line.split() for line in history.stdout.splitlines()[1:]]
    assert history.returncode == 0 and len(rows) == 2
    assert rows[0][2:7] == [good["rollout_id"], "v1", "→", "v2", "1"] and "succeeded" in rows[0]


def test_a_late_fault_is_caught_at_the_second_step_then_retried_with_webhooks_told(rollout_fleet, tmp_path):
    """Errors that begin 5 s after an instance starts pass step 1's 2 s bake and fail step 2's; the JSON and
    Slack receivers hear every event with the verdict's numbers, a receiver that is down holds nothing up;
    `stoker rollout retry` runs the rolled-back rollout again."""
    address = rollout_fleet.start(
        time_scale=1.0, webhook_attempts=3, webhook_backoff_s=0.2, webhook_url_prefixes=["http://127.0.0.1:"]
    ).address
    stub = rollout_fleet.stub()
    down = f"http://127.0.0.1:{free_port()}/down"
    with Receiver() as hooks, Receiver() as slack:
        path = tmp_path / "web.yaml"
        path.write_text(
            f"""apiVersion: stoker.dev/v1
kind: Rollout
service: web
target:
  zones: [zone-a, zone-b]
  instances_per_zone: 4
  env:
    STOKER_SAMPLE_ERROR_RATE: "0.3"
    STOKER_SAMPLE_ERRORS_AFTER_S: "5"
plan:
  min_requests: 40
  post_bake: 1s
  steps:
    - {{share: 25, bake: 2s}}
    - {{share: 50, bake: 20s}}
    - {{share: 100}}
notifications:
  webhooks:
    - {{url: "{hooks.url}", format: json}}
    - {{url: "{slack.url}", format: slack, events: [verdict, rolled_back]}}
    - {{url: "{down}"}}
"""
        )
        first = demo_rollouts.deploy_first(stub, "web", "v1", instances_per_zone=4)
        bad = demo_rollouts.run_with_load(stub, from_file(path, "v2"), first.endpoint, rate=100, timeout=60)
        assert bad["outcome"] == "rolled_back", bad
        final = stub.GetRollout(PB.GetRolloutRequest(rollout_id=bad["rollout_id"]), timeout=5)
        passed, failed = final.verdicts[0], final.verdicts[-1]
        assert passed.result == PB.VERDICT_RESULT_PASS and failed.result == PB.VERDICT_RESULT_FAIL
        assert final.step == 2 and failed.canary_errors > 0
        step2 = next(e for e in final.events if "step 2 ready; baking" in e)
        opened = float(step2.split()[0])
        assert failed.time.ToNanoseconds() / 1e9 - opened < 20  # within that step's bake
        hooks.wait_for(lambda r: "rolled_back" in r.events())
        slack.wait_for(lambda r: len(r.posts) >= 3)
        assert hooks.events()[:3] == ["started", "step", "verdict"]
        assert hooks.events().count("step") == 2 and hooks.events()[-1] == "rolled_back"
        verdicts = [body["verdict"] for _, body in hooks.posts if body["event"] == "verdict"]
        assert verdicts[-1]["result"] == "fail" and verdicts[-1]["canary_errors"] == failed.canary_errors
        assert "canary" in slack.posts[-1][1]["text"] and "rolled_back" in slack.posts[-1][1]["text"]

        retried = stoker(address, "retry", bad["rollout_id"], "--reason", "again")
        assert retried.returncode == 0, retried.stderr
        again = demo_rollouts.wait_until(stub, bad["rollout_id"], {PB.ROLLOUT_PHASE_BAKING}, 30)
        assert again.attempt == 2 and again.phase == PB.ROLLOUT_PHASE_BAKING and again.step == 1
        hooks.wait_for(lambda r: r.events().count("started") == 2)
        assert stoker(address, "abort", bad["rollout_id"]).returncode == 0
        refused = stoker(address, "retry", first.id)
        assert refused.returncode != 0 and "only a rolled-back or failed rollout" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
