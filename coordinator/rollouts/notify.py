"""Webhook notifications of a rollout's events: started, each step, paused, each verdict (with its
numbers), succeeded, rolled back, failed.

A notification must never hold a rollout up or fail it: :meth:`Notifier.emit` only queues. One background
task per webhook URL posts its queue in order, retrying a failed post (connection refused, timeout, 5xx,
408, 429) with exponential backoff; other 4xx answers are not retried. A full queue drops its oldest entry.
Deliveries live in memory: a coordinator restart loses the ones still queued (the rollout's own history is
the durable record). Payloads are either stoker's JSON or a Slack-compatible incoming-webhook body
(``{"text": ...}``); each POST carries ``X-Stoker-Delivery`` (stable across retries) and ``X-Stoker-Attempt``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from stoker.coordinator.rollouts import judge
from stoker.coordinator.rollouts.machine import Rollout, plan_steps

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 425, 429})


@dataclass
class Delivery:
    url: str
    body: bytes
    event: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


@dataclass
class HookStats:
    delivered: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    dropped: int = 0


def verdict_dict(v: judge.Verdict) -> dict[str, Any]:
    return {
        "result": v.result,
        "check": v.check,
        "reason": v.reason,
        "canary_requests": v.canary_requests,
        "canary_errors": v.canary_errors,
        "baseline_requests": v.baseline_requests,
        "baseline_errors": v.baseline_errors,
        "canary_p50_ms": round(v.canary_p50_ms, 3),
        "baseline_p50_ms": round(v.baseline_p50_ms, 3),
        "p_value": v.p_value,
        "alpha": v.alpha,
    }


def payload(r: Rollout, event: str, fmt: str, verdict: judge.Verdict | None, now: float) -> dict[str, Any]:
    """The body of one notification: stoker's JSON, or Slack's ``{"text": ...}``."""
    steps = len(plan_steps(r.spec))
    if fmt == "slack":
        text = (
            f"*{r.spec.service}* {r.from_version or '(nothing)'} → {r.spec.version}: *{event}* "
            f"(step {min(r.step_index + 1, steps)}/{steps}, attempt {r.attempt}, rollout `{r.id}`)\n"
            f"{r.message}"
        )
        if verdict is not None:
            text += (
                f"\nverdict {verdict.result} [{verdict.check}]: canary {verdict.canary_errors}/"
                f"{verdict.canary_requests} errors, p50 {verdict.canary_p50_ms:.1f} ms; baseline "
                f"{verdict.baseline_errors}/{verdict.baseline_requests}, "
                f"p50 {verdict.baseline_p50_ms:.1f} ms; p={verdict.p_value:.2g} — {verdict.reason}"
            )
        return {"text": text}
    return {
        "event": event,
        "time": now,
        "rollout_id": r.id,
        "service": r.spec.service,
        "version": r.spec.version,
        "from_version": r.from_version,
        "phase": r.phase.value,
        "step": min(r.step_index + 1, steps),
        "steps": steps,
        "plan": r.plan,
        "attempt": r.attempt,
        "message": r.message,
        "verdict": verdict_dict(verdict) if verdict is not None else None,
    }


def redact(url: str) -> str:
    """A webhook URL as logs and histories may show it: scheme and host only (Slack's path is a secret)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


class Notifier:
    def __init__(
        self,
        *,
        allowed_prefixes: tuple[str, ...] = (),
        attempts: int = 6,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        timeout_s: float = 3.0,
        queue_limit: int = 500,
    ) -> None:
        self.allowed_prefixes = allowed_prefixes
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.queue_limit = queue_limit
        self.stats: dict[str, HookStats] = {}
        self._queues: dict[str, list[Delivery]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._closed = False

    def allowed(self, url: str) -> bool:
        """Only http(s) URLs under the operator's prefixes (none by default: a rollout file is input)."""
        if not url.startswith(("http://", "https://")) or not self.allowed_prefixes:
            return False
        return url.startswith(self.allowed_prefixes)

    def emit(self, r: Rollout, event: str, now: float, verdict: judge.Verdict | None = None) -> None:
        """Queue ``event`` for every webhook of ``r`` that asked for it; never blocks, never raises."""
        for hook in r.spec.webhooks:
            try:
                url = hook["url"]
                if event not in hook.get("events", ()) or not self.allowed(url):
                    continue
                body = json.dumps(payload(r, event, hook.get("format", "json"), verdict, now)).encode()
                self._enqueue(Delivery(url, body, event))
            except Exception:  # a notification must never break the rollout that sent it
                log.exception("rollout %s: could not queue the %s notification", r.id, event)

    def _enqueue(self, d: Delivery) -> None:
        if self._closed:
            return
        queue = self._queues.setdefault(d.url, [])
        stats = self.stats.setdefault(d.url, HookStats())
        if len(queue) >= self.queue_limit:
            queue.pop(0)
            stats.dropped += 1
        queue.append(d)
        self._wake.setdefault(d.url, asyncio.Event()).set()
        worker = self._workers.get(d.url)
        if worker is None or worker.done():
            self._workers[d.url] = asyncio.get_running_loop().create_task(
                self._work(d.url), name=f"webhook-{len(self._workers)}"
            )

    async def _work(self, url: str) -> None:
        queue, stats, wake = self._queues[url], self.stats[url], self._wake[url]
        while not self._closed:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            d = queue[0]
            delivered = await self._deliver(d, stats)
            if queue and queue[0] is d:
                queue.pop(0)
            if not delivered:
                stats.dropped += 1

    async def _deliver(self, d: Delivery, stats: HookStats) -> bool:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "stoker-rollouts",
                "X-Stoker-Event": d.event,
                "X-Stoker-Delivery": d.id,
                "X-Stoker-Attempt": str(attempt),
            }
            stats.attempts += 1
            try:
                status = await asyncio.to_thread(_post, d.url, d.body, headers, self.timeout_s)
                why = f"HTTP {status}"
            except (OSError, ValueError) as exc:
                status, why = 0, str(exc)
            if 200 <= status < 300:
                stats.delivered += 1
                return True
            stats.failed_attempts += 1
            permanent = 400 <= status < 500 and status not in RETRY_STATUS
            log.warning(
                "webhook %s: %s notification, attempt %d/%d: %s%s",
                redact(d.url),
                d.event,
                attempt,
                self.attempts,
                why,
                "; not retried" if permanent else "",
            )
            if permanent or attempt == self.attempts:
                return False
            await asyncio.sleep(delay * (0.75 + 0.5 * random.random()))
            delay = min(delay * 2, self.backoff_max_s)
        return False

    async def close(self) -> None:
        self._closed = True
        for worker in self._workers.values():
            worker.cancel()
        for worker in self._workers.values():
            try:
                await worker
            except (asyncio.CancelledError, Exception):
                pass
