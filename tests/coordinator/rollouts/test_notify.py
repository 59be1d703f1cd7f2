"""Webhook notifications against a small real HTTP receiver on loopback: retried with backoff, never in the
way of the rollout that sent them."""

from __future__ import annotations

import asyncio
import time

from stoker.coordinator.rollouts import judge
from stoker.coordinator.rollouts import machine as m
from stoker.coordinator.rollouts.notify import Notifier
from tests.helpers.net import free_port
from tests.helpers.webhooks import Receiver


def rollout(*hooks: dict) -> m.Rollout:
    spec = m.Spec(service="web", version="v2", webhooks=tuple(hooks))
    r = m.new_rollout("r-1", spec, 100.0)
    r.from_version = "v1"
    return r


VERDICT = judge.Verdict(
    100.0, judge.FAIL, "canary errors above the baseline's", "errors",
    canary_requests=400, canary_errors=37, baseline_requests=1600, baseline_errors=2,
    canary_p50_ms=4.5, baseline_p50_ms=4.1, p_value=1e-9, alpha=0.001,
)  # fmt: skip


def test_a_failing_receiver_gets_the_notification_on_a_later_attempt_in_both_formats():
    async def run(json_url: str, slack_url: str) -> Notifier:
        n = Notifier(attempts=5, backoff_s=0.05, allowed_prefixes=("http://127.0.0.1:",))
        r = rollout(
            {"url": json_url, "format": "json", "events": ["verdict", "rolled_back"]},
            {"url": slack_url, "format": "slack", "events": ["verdict"]},
        )
        n.emit(r, "started", 100.0)  # not asked for by either hook
        n.emit(r, "verdict", 100.0, VERDICT)
        for _ in range(200):
            if n.stats.get(json_url) and n.stats[json_url].delivered and n.stats[slack_url].delivered:
                break
            await asyncio.sleep(0.02)
        await n.close()
        return n

    with Receiver(fail_first=2) as flaky, Receiver() as slack:
        n = asyncio.run(run(flaky.url, slack.url))
        assert [h["x-stoker-attempt"] for h, _ in flaky.attempts] == ["1", "2", "3"]
        assert len({h["x-stoker-delivery"] for h, _ in flaky.attempts}) == 1  # one delivery, retried
        ((headers, body),) = flaky.posts
        assert headers["x-stoker-event"] == "verdict" and body["event"] == "verdict"
        assert body["service"] == "web" and body["version"] == "v2" and body["from_version"] == "v1"
        assert body["verdict"]["canary_errors"] == 37 and body["verdict"]["canary_requests"] == 400
        assert body["verdict"]["baseline_errors"] == 2 and body["verdict"]["p_value"] == 1e-9
        ((_, slack_body),) = slack.posts
        assert set(slack_body) == {"text"}
        assert "canary 37/400 errors" in slack_body["text"] and "baseline 2/1600" in slack_body["text"]
        assert n.stats[flaky.url].failed_attempts == 2 and n.stats[flaky.url].delivered == 1


def test_a_down_receiver_never_blocks_emit_and_is_retried_then_dropped():
    down = f"http://127.0.0.1:{free_port()}/hook"

    async def run() -> tuple[Notifier, float]:
        n = Notifier(attempts=3, backoff_s=0.05, timeout_s=0.5, allowed_prefixes=("http://127.0.0.1:",))
        r = rollout({"url": down, "format": "json", "events": ["step", "succeeded"]})
        t0 = time.monotonic()
        for _ in range(5):
            n.emit(r, "step", 100.0)
        n.emit(r, "succeeded", 100.0)
        took = time.monotonic() - t0
        for _ in range(300):
            if n.stats[down].dropped == 6:
                break
            await asyncio.sleep(0.02)
        await n.close()
        return n, took

    n, took = asyncio.run(run())
    assert took < 0.05  # queuing only
    assert n.stats[down].attempts == 18 and n.stats[down].delivered == 0 and n.stats[down].dropped == 6


def test_urls_outside_the_allowed_prefixes_are_not_called():
    with Receiver() as receiver:

        async def run() -> None:
            n = Notifier(allowed_prefixes=("https://hooks.example.com/",), backoff_s=0.01)
            n.emit(rollout({"url": receiver.url, "format": "json", "events": ["started"]}), "started", 1.0)
            await asyncio.sleep(0.3)
            await n.close()
            assert not n.allowed(receiver.url) and n.allowed("https://hooks.example.com/x")
            assert not Notifier().allowed("file:///etc/passwd")
            assert not Notifier().allowed(receiver.url)  # nothing is allowed until the operator says so

        asyncio.run(run())
        assert receiver.attempts == []
