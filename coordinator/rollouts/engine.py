"""The rollout engine: drives every active rollout's state machine against its target, durably.

One asyncio task per active rollout ticks every ``tick_s``: observe the target, read metrics when the
machine wants them, :func:`rollout.step`, and then — in this order —

1. save the rollout (its phase, desired state and step key) to the store;
2. when the step key is new, record the step's **intent** under that key (written once; a restarted
   coordinator finds it and does not plan the step again);
3. let the target converge on the desired state (idempotent: it acts on the difference between what runs
   and what is desired, so repeating a pass after a crash starts or stops nothing twice);
4. when the target has converged, mark the intent done.

After a restart :meth:`RolloutEngine.recover` starts a task for every rollout the store holds as active;
the first observation tells the machine which versions actually run. Operator verbs take the same lock as
the tick, change the rollout through the pure machine, and save it before they return.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Protocol

from stoker.coordinator.core.clock import Clock
from stoker.coordinator.core.errors import FailedPrecondition, NotFound, Unavailable
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.rollouts import judge, machine
from stoker.coordinator.rollouts.judge import Counters, Policy
from stoker.coordinator.rollouts.machine import Instance, MetricsDown, Observation, Rollout, Spec
from stoker.coordinator.rollouts.metrics_providers import MetricsUnavailable
from stoker.coordinator.rollouts.notify import Notifier, redact
from stoker.coordinator.rollouts.settings import RolloutSettings
from stoker.coordinator.rollouts.store import RolloutStore

log = logging.getLogger(__name__)


class RolloutTarget(Protocol):
    """Where a service's instances run (local processes, Kubernetes)."""

    name: str

    def check(self) -> None:
        """Raise FailedPrecondition when the target cannot work (missing binary, no cluster config)."""

    async def prepare(self, spec: Spec) -> None:
        """Get ready for ``spec`` (remember the new version's environment); raise on a bad spec."""

    async def observe(self, spec: Spec) -> Observation: ...

    async def converge(self, spec: Spec, desired: dict[str, dict[str, int]]) -> None:
        """One idempotent pass towards ``desired``; new instances ready before old ones leave."""

    def endpoint(self, spec: Spec) -> str:
        """Where the service's traffic enters ("" when unknown)."""

    async def close(self) -> None: ...


class MetricsProvider(Protocol):
    name: str

    async def sample(self, spec: Spec, instances: list[Instance]) -> dict[str, Counters]:
        """Cumulative counters per instance address; raises MetricsUnavailable."""

    async def guardrails(self, spec: Spec, instances: list[Instance]) -> list[str]:
        """The canary's breached guardrails (a rollout file's thresholds); raises MetricsUnavailable."""


def machine_settings(s: RolloutSettings) -> machine.Settings:
    return machine.Settings(
        judge_interval_s=s.judge_interval_s,
        inconclusive_limit=s.inconclusive_limit,
        progress_deadline_s=s.progress_deadline_s,
        policy=Policy(
            min_requests=s.min_requests,
            alpha=s.alpha,
            error_rate_cap=s.error_rate_cap,
            min_error_rate_increase=s.min_error_rate_increase,
            latency_floor_ms=s.latency_floor_ms,
            latency_floor_ratio=s.latency_floor_ratio,
            max_restarts=s.max_restarts,
        ),
    )


def with_defaults(spec: Spec, s: RolloutSettings) -> Spec:
    """Fill the fields a request left at zero from the coordinator's settings, and apply ``time_scale``
    to every duration the request asked for."""
    k = s.time_scale
    return replace(
        spec,
        canary_percent=spec.canary_percent or s.canary_percent,
        bake_s=spec.bake_s * k if spec.bake_s else s.bake_s,
        min_requests=spec.min_requests or s.min_requests,
        post_bake_s=spec.post_bake_s * k if spec.post_bake_s else s.post_bake_s,
        zones=spec.zones or tuple(s.zones),
        instances_per_zone=spec.instances_per_zone or s.instances_per_zone,
        steps=tuple(
            replace(
                st,
                bake_s=None if st.bake_s is None else st.bake_s * k,
                timeout_s=st.timeout_s * k,
            )
            for st in spec.steps
        ),
    )


def _same_fleet(a: Spec, b: Spec) -> bool:
    """Two specs that move the same instances (the same service, or one Deployment family)."""
    if a.service == b.service:
        return True
    return a.target == b.target == "kubernetes" and (a.family, a.namespace) == (b.family, b.namespace)


class RolloutEngine:
    def __init__(
        self,
        settings: RolloutSettings,
        store: RolloutStore,
        targets: dict[str, Callable[[], RolloutTarget]],
        metrics: MetricsProvider,
        clock: Clock,
        notifier: Notifier | None = None,
        metrics_for: Callable[[Spec], MetricsProvider] | None = None,
        telemetry: CoordinatorMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.machine = machine_settings(settings)
        self.store = store
        self._target_factories = targets
        self._targets: dict[str, RolloutTarget] = {}
        self.metrics = metrics
        self.clock = clock
        self._rollouts: dict[str, Rollout] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._start_lock = asyncio.Lock()
        self._intended: set[str] = set()
        self._closed = False
        self.notifier = notifier or Notifier()
        self._metrics_for = metrics_for
        self._providers: dict[str, MetricsProvider] = {}
        self._seen: dict[str, tuple[machine.Phase, int, int, int]] = {}
        """Per rollout: (phase, step, verdicts, attempt) last notified, to tell which events a change is."""
        self._telemetry = telemetry
        if telemetry is not None:
            for phase in machine.Phase:
                if phase not in machine.TERMINAL:  # read when /metrics is scraped
                    telemetry.rollouts_active.labels(phase.value).set_function(
                        functools.partial(self._count_in, phase)
                    )
                else:  # every end present from the start, so rate() and increase() see its first one
                    telemetry.rollouts_ended.labels(phase.value)
            for result in (judge.PASS, judge.FAIL, judge.INCONCLUSIVE):
                telemetry.rollout_verdicts.labels(result)

    def _count_in(self, phase: machine.Phase) -> int:
        return sum(1 for r in list(self._rollouts.values()) if r.phase is phase)  # list(): one atomic copy

    def _count_changes(self, r: Rollout, phase_before: machine.Phase, verdicts_before: int) -> None:
        """Count the verdicts a step added, and the end it reached (for the dashboards and alerts)."""
        if self._telemetry is None:
            return
        for verdict in r.verdicts[verdicts_before:]:
            self._telemetry.rollout_verdicts.labels(verdict.result).inc()
        if r.terminal and r.phase is not phase_before:
            self._telemetry.rollouts_ended.labels(r.phase.value).inc()

    # ---------------------------------------------------------------- targets

    def target(self, name: str) -> RolloutTarget:
        existing = self._targets.get(name)
        if existing is not None:
            return existing
        factory = self._target_factories.get(name)
        if factory is None:
            raise FailedPrecondition(f"target {name!r} is not configured on this coordinator")
        target = factory()
        target.check()
        self._targets[name] = target
        return target

    # ---------------------------------------------------------------- lifecycle

    def recover(self) -> int:
        """Start driving every rollout the store holds as active (after a restart)."""
        active = self.store.active()
        for r in active:
            self._rollouts[r.id] = r
            self._seen[r.id] = (r.phase, r.step_index, len(r.verdicts), r.attempt)
            self.store.append_event(
                r.id, self.clock.now(), f"coordinator restarted; resuming in {r.phase.value}"
            )
            self._spawn(r.id)
        if active:
            log.info(
                "resuming %d rollout(s): %s",
                len(active),
                ", ".join(f"{r.id} ({r.phase.value})" for r in active),
            )
        return len(active)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for target in self._targets.values():
            await target.close()
        await self.notifier.close()

    def _spawn(self, rollout_id: str) -> None:
        if rollout_id in self._tasks and not self._tasks[rollout_id].done():
            return
        self._tasks[rollout_id] = asyncio.get_running_loop().create_task(
            self._drive(rollout_id), name=f"rollout-{rollout_id}"
        )

    # ---------------------------------------------------------------- RPC-facing operations

    async def start(self, spec: Spec) -> Rollout:
        spec = with_defaults(spec, self.settings)
        machine.validate_spec(spec)
        async with self._start_lock:
            busy = [r for r in self.store.active() if _same_fleet(r.spec, spec)]
            if busy:
                raise FailedPrecondition(
                    f"service {spec.service} already has a rollout in progress ({busy[0].id}, "
                    f"{busy[0].phase.value}); abort it or wait for it to end"
                )
            target = self.target(spec.target)
            await target.prepare(spec)
            r = machine.new_rollout(f"r-{uuid.uuid4().hex[:10]}", spec, self.clock.now())
            for hook in spec.webhooks:
                if not self.notifier.allowed(hook["url"]):
                    r.history.append(
                        f"{r.created:.3f} webhook {redact(hook['url'])}: not allowed by "
                        "rollouts.webhook_url_prefixes; it will not be called"
                    )
            self.store.create(r)
            for line in r.history:
                self.store.append_event(r.id, r.created, line)
            self._rollouts[r.id] = r
            self._lock(r.id)
        self._seen[r.id] = (r.phase, r.step_index, len(r.verdicts), r.attempt)
        self.notifier.emit(r, "started", r.created)
        self._spawn(r.id)
        log.info("rollout %s: %s → %s on %s", r.id, spec.service, spec.version, spec.target)
        return r

    def get(self, rollout_id: str) -> Rollout:
        r = self._rollouts.get(rollout_id) or self.store.get(rollout_id)
        if r is None:
            raise NotFound(f"rollout {rollout_id} not found")
        return r

    def list(self, service: str = "") -> list[Rollout]:
        stored = {r.id: r for r in self.store.list(service)}
        for rid, r in self._rollouts.items():
            if rid in stored:
                stored[rid] = r
        return sorted(stored.values(), key=lambda r: -r.created)

    def endpoint(self, r: Rollout) -> str:
        target = self._targets.get(r.spec.target)
        try:
            return target.endpoint(r.spec) if target else ""
        except Exception:
            return ""

    async def act(self, rollout_id: str, verb: str, reason: str) -> Rollout:
        actions = {
            "promote": machine.promote,
            "abort": machine.abort,
            "pause": machine.pause,
            "resume": machine.resume,
            "retry": machine.retry,
        }
        action = actions[verb]
        self.get(rollout_id)
        async with self._lock(rollout_id):
            r = self._rollouts.get(rollout_id) or self.store.get(rollout_id)
            assert r is not None
            # a rollout loaded from the store (an ended one, retried) notifies from where it is now
            self._seen.setdefault(r.id, (r.phase, r.step_index, len(r.verdicts), r.attempt))
            was_terminal = r.terminal
            retrying = r.phase in (machine.Phase.ROLLED_BACK, machine.Phase.FAILED)
            if verb in ("resume", "retry") and retrying:
                busy = [o for o in self.store.active() if _same_fleet(o.spec, r.spec) and o.id != r.id]
                if busy:
                    raise FailedPrecondition(
                        f"service {r.spec.service} already has a rollout in progress "
                        f"({busy[0].id}); it cannot be retried now"
                    )
            before, phase_before, verdicts_before = len(r.history), r.phase, len(r.verdicts)
            action(r, self.clock.now(), reason, self.machine)
            self._rollouts[r.id] = r
            self._persist(r, before)
            self._count_changes(r, phase_before, verdicts_before)
        if was_terminal and not r.terminal:
            self._spawn(r.id)
        return r

    async def watch(self, rollout_id: str) -> AsyncIterator[Rollout]:
        r = self.get(rollout_id)
        while True:
            event = self._changed.setdefault(rollout_id, asyncio.Event())
            yield r
            task = self._tasks.get(rollout_id)
            if r.terminal and (task is None or task.done()):
                return
            try:
                await asyncio.wait_for(event.wait(), timeout=5.0)
            except TimeoutError:
                pass
            r = self.get(rollout_id)

    # ---------------------------------------------------------------- the loop

    def _lock(self, rollout_id: str) -> asyncio.Lock:
        return self._locks.setdefault(rollout_id, asyncio.Lock())

    def _persist(self, r: Rollout, history_before: int) -> None:
        self.store.save(r)
        for line in r.history[history_before:]:
            self.store.append_event(r.id, r.updated, line)
        self._notify(r)
        event = self._changed.pop(r.id, None)
        if event is not None:
            event.set()

    def _notify(self, r: Rollout) -> None:
        """Queue the notifications a saved change means (after the save: never ahead of the record)."""
        seen = self._seen.get(r.id)
        self._seen[r.id] = (r.phase, r.step_index, len(r.verdicts), r.attempt)
        if seen is None:
            return
        phase, step, verdicts, attempt = seen
        now = r.updated
        P = machine.Phase
        if r.attempt != attempt:
            self.notifier.emit(r, "started", now)
        for v in r.verdicts[verdicts:]:
            self.notifier.emit(r, "verdict", now, v)
        moved = r.step_index != step or r.attempt != attempt or phase is P.PENDING
        if moved and r.phase in (P.CANARY, P.SURGING):
            self.notifier.emit(r, "step", now)
        if r.phase is P.PAUSED and phase is not P.PAUSED:
            self.notifier.emit(r, "paused", now)
        if r.phase is not phase:
            event = {P.SUCCEEDED: "succeeded", P.ROLLED_BACK: "rolled_back", P.FAILED: "failed"}.get(r.phase)
            if event:
                self.notifier.emit(r, event, now, r.verdicts[-1] if r.verdicts else None)

    async def _drive(self, rollout_id: str) -> None:
        failures = 0
        while not self._closed:
            try:
                done = await self._tick(rollout_id)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                level = (
                    logging.WARNING if isinstance(exc, (Unavailable, FailedPrecondition)) else logging.ERROR
                )
                log.log(
                    level,
                    "rollout %s: tick failed (%s: %s)",
                    rollout_id,
                    type(exc).__name__,
                    exc,
                    exc_info=level == logging.ERROR and failures == 1,
                )
                r = self._rollouts.get(rollout_id)
                if r is not None:
                    r.message = f"{r.phase.value}: retrying after an error: {exc}"
                    event = self._changed.pop(r.id, None)
                    if event is not None:
                        event.set()
                done = False
            if done:
                break
            await asyncio.sleep(self.settings.tick_s)
        self._tasks.pop(rollout_id, None)
        event = self._changed.pop(rollout_id, None)
        if event is not None:
            event.set()

    def _provider(self, r: Rollout) -> MetricsProvider:
        """The coordinator's provider, or the one the rollout's file asks for (its names and queries)."""
        if not r.spec.analysis or self._metrics_for is None:
            return self.metrics
        provider = self._providers.get(r.id)
        if provider is None:
            provider = self._providers[r.id] = self._metrics_for(r.spec)
        return provider

    async def _tick(self, rollout_id: str) -> bool:
        """One observation and step; True when the rollout has ended and its target has converged."""
        async with self._lock(rollout_id):
            r = self._rollouts[rollout_id]
            target = self.target(r.spec.target)
            obs = await target.observe(r.spec)
            now = self.clock.now()
            metrics: dict[str, Counters] | MetricsDown | None = None
            breaches: tuple[str, ...] = ()
            if machine.wants_metrics(r, now):
                provider = self._provider(r)
                live = [i for i in obs.instances if not i.leaving]
                try:
                    metrics = await provider.sample(r.spec, live)
                    breaches = tuple(await provider.guardrails(r.spec, live))
                except MetricsUnavailable as exc:
                    metrics = MetricsDown(str(exc))
                now = self.clock.now()
            before_key, before_history = r.step_key, len(r.history)
            before = (r.phase, r.message, r.looks, len(r.verdicts), [z.__dict__ for z in r.zones])
            machine.step(r, obs, metrics, now, self.machine, breaches)
            self._count_changes(r, before[0], before[3])
            after = (r.phase, r.message, r.looks, len(r.verdicts), [z.__dict__ for z in r.zones])
            if r.step_key and r.step_key not in self._intended:
                # The intent goes first: a crash after it and before the save replays the same step key.
                _, fresh = self.store.record_intent(r.id, r.step_key, r.desired, now)
                self._intended.add(r.step_key)
                log.info(
                    "rollout %s: intent %s%s: %s",
                    r.id,
                    r.step_key,
                    "" if fresh else " (already recorded)",
                    r.desired,
                )
            if after != before or r.step_key != before_key or r.window_opened and metrics is not None:
                self._persist(r, before_history)
            if r.desired and r.phase is not machine.Phase.FAILED:
                if machine.converged(r.desired, obs):
                    self.store.finish_intent(r.id, r.step_key, now)
                else:
                    await target.converge(r.spec, r.desired)
            return r.terminal and (
                not r.desired or machine.converged(r.desired, obs) or r.phase is machine.Phase.FAILED
            )
