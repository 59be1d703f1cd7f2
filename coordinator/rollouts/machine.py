"""The rollout state machine: pure code on plain dataclasses, the clock passed in.

A rollout moves a service from version A to version B::

    PENDING ─▶ CANARY ─▶ BAKING ─▶ SURGING ─▶ POST_BAKE ─▶ SUCCEEDED
                 │          │  ▲       │           │
                 │          ▼  │       │           │
                 │        PAUSED (operator, or inconclusive too often)
                 └──────────┴──────────┴───────────┴──▶ ROLLING_BACK ─▶ ROLLED_BACK   (or FAILED)

The machine never touches the world. Each call to :func:`step` gets what the target observed (instances per
zone, their version, readiness and restarts) and, when it asked for them, the metrics of every instance; it
returns the rollout with its new phase and its **desired state**: how many instances of each version every
zone should run, under a **step key** (the idempotency key of that desired state). The engine records the
step's intent in the store before it lets the target converge on it; the target converges by starting new
instances, waiting for them to be ready, and only then draining and stopping old ones, so a zone never drops
below its capacity. Deadlines are absolute times, so a restarted coordinator keeps them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from stoker.coordinator.core.errors import FailedPrecondition, InvalidArgument
from stoker.coordinator.rollouts import judge


class Phase(str, enum.Enum):
    PENDING = "pending"
    CANARY = "canary"
    BAKING = "baking"
    SURGING = "surging"
    POST_BAKE = "post_bake"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    PAUSED = "paused"
    FAILED = "failed"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED})
TARGETS = ("local", "kubernetes")


@dataclass(frozen=True)
class Spec:
    """What to roll out and how (the wire's RolloutSpec with the defaults filled in)."""

    service: str
    version: str
    target: str = "local"
    canary_percent: float = 5.0
    bake_s: float = 60.0
    min_requests: int = 200
    zone_first: bool = False
    namespace: str = ""
    post_bake_s: float = 30.0
    zones: tuple[str, ...] = ()
    """Zones of a first deployment (a service that has no instances yet)."""
    instances_per_zone: int = 0
    """Instances per zone of a first deployment."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment of the new version's instances."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        data["zones"] = tuple(data.get("zones", ()))
        data["env"] = dict(data.get("env", {}))
        return cls(**data)


def validate_spec(spec: Spec) -> None:
    """Raise InvalidArgument naming the first problem with ``spec``."""
    if not spec.service.strip():
        raise InvalidArgument("spec.service: must not be empty")
    if not all(c.isalnum() or c in "-_." for c in spec.service) or len(spec.service) > 50:
        raise InvalidArgument(
            f"spec.service: {spec.service!r} must be at most 50 letters, digits, '-', '_' or '.'"
        )
    if spec.target not in TARGETS:
        raise InvalidArgument(f"spec.target: unknown target {spec.target!r} (known: {', '.join(TARGETS)})")
    if not spec.version.strip():
        raise InvalidArgument("spec.version: the version (or image) must not be empty")
    if any(c.isspace() for c in spec.version) or len(spec.version) > 200:
        raise InvalidArgument(f"spec.version: {spec.version!r} must be at most 200 characters without spaces")
    if not (0 < spec.canary_percent < 100) or math.isnan(spec.canary_percent):
        raise InvalidArgument(f"spec.canary_percent: must be in (0, 100), got {spec.canary_percent}")
    if not (spec.bake_s >= 0) or math.isinf(spec.bake_s):
        raise InvalidArgument(f"spec.bake_s: must not be negative, got {spec.bake_s}")
    if not (spec.post_bake_s >= 0) or math.isinf(spec.post_bake_s):
        raise InvalidArgument(f"spec.post_bake_s: must not be negative, got {spec.post_bake_s}")
    if spec.min_requests < 0:
        raise InvalidArgument(f"spec.min_requests: must not be negative, got {spec.min_requests}")
    if spec.instances_per_zone < 0 or spec.instances_per_zone > 100:
        raise InvalidArgument(f"spec.instances_per_zone: must be in [0, 100], got {spec.instances_per_zone}")
    if len(set(spec.zones)) != len(spec.zones) or any(not z.strip() for z in spec.zones):
        raise InvalidArgument(f"spec.zones: must be distinct non-empty names, got {list(spec.zones)}")
    for key in spec.env:
        if not key or "=" in key or not key.replace("_", "a").isalnum():
            raise InvalidArgument(f"spec.env: {key!r} is not a valid environment variable name")


@dataclass(frozen=True)
class Instance:
    """One instance as the target sees it."""

    id: str
    zone: str
    version: str
    ready: bool
    restarts: int = 0
    leaving: bool = False
    """Being drained or stopped (already out of the load balancer, or about to be)."""
    address: str = ""
    """host:port of the instance (also the key of its metrics)."""


@dataclass(frozen=True)
class Observation:
    """Everything the target runs for a service, per zone (zones with nothing running may be missing)."""

    instances: tuple[Instance, ...] = ()

    def zones(self) -> list[str]:
        return sorted({i.zone for i in self.instances})

    def in_zone(self, zone: str) -> list[Instance]:
        return [i for i in self.instances if i.zone == zone]

    def versions(self) -> set[str]:
        return {i.version for i in self.instances if not i.leaving}


@dataclass
class ZoneCount:
    zone: str
    old: int = 0
    new: int = 0
    ready: int = 0


@dataclass
class Rollout:
    id: str
    spec: Spec
    phase: Phase
    created: float
    updated: float
    from_version: str = ""
    capacity: dict[str, int] = field(default_factory=dict)
    """Instances per zone before the rollout: the floor no zone goes below, and what the end state runs."""
    canary: dict[str, int] = field(default_factory=dict)
    """Canary instances per zone."""
    desired: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per zone, per version: instances the current step wants running (what the target converges on)."""
    step_key: str = ""
    """Idempotency key of ``desired``: the engine records the intent under it before acting."""
    attempt: int = 1
    deadline: float = 0.0
    """Absolute time by which the current step must have converged (0: none)."""
    bake_until: float = 0.0
    next_look: float = 0.0
    looks: int = 0
    max_looks: int = 1
    inconclusive: int = 0
    window_start: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per instance address: its counters when the judgment window opened (serialized judge.Counters)."""
    window_opened: float = 0.0
    unready_since: float = 0.0
    verdicts: list[judge.Verdict] = field(default_factory=list)
    last_look: judge.Verdict | None = None
    paused_from: Phase | None = None
    message: str = ""
    zones: list[ZoneCount] = field(default_factory=list)
    history: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def active(self) -> bool:
        return not self.terminal

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": self.spec.to_dict(),
            "phase": self.phase.value,
            "created": self.created,
            "updated": self.updated,
            "from_version": self.from_version,
            "capacity": self.capacity,
            "canary": self.canary,
            "desired": self.desired,
            "step_key": self.step_key,
            "attempt": self.attempt,
            "deadline": self.deadline,
            "bake_until": self.bake_until,
            "next_look": self.next_look,
            "looks": self.looks,
            "max_looks": self.max_looks,
            "inconclusive": self.inconclusive,
            "window_start": self.window_start,
            "window_opened": self.window_opened,
            "unready_since": self.unready_since,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "last_look": self.last_look.to_dict() if self.last_look else None,
            "paused_from": self.paused_from.value if self.paused_from else None,
            "message": self.message,
            "zones": [z.__dict__ for z in self.zones],
            "history": self.history[-200:],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rollout:
        return cls(
            id=d["id"],
            spec=Spec.from_dict(d["spec"]),
            phase=Phase(d["phase"]),
            created=d["created"],
            updated=d["updated"],
            from_version=d.get("from_version", ""),
            capacity=dict(d.get("capacity", {})),
            canary=dict(d.get("canary", {})),
            desired={z: dict(v) for z, v in d.get("desired", {}).items()},
            step_key=d.get("step_key", ""),
            attempt=d.get("attempt", 1),
            deadline=d.get("deadline", 0.0),
            bake_until=d.get("bake_until", 0.0),
            next_look=d.get("next_look", 0.0),
            looks=d.get("looks", 0),
            max_looks=d.get("max_looks", 1),
            inconclusive=d.get("inconclusive", 0),
            window_start=d.get("window_start", {}),
            window_opened=d.get("window_opened", 0.0),
            unready_since=d.get("unready_since", 0.0),
            verdicts=[judge.Verdict.from_dict(v) for v in d.get("verdicts", [])],
            last_look=judge.Verdict.from_dict(d["last_look"]) if d.get("last_look") else None,
            paused_from=Phase(d["paused_from"]) if d.get("paused_from") else None,
            message=d.get("message", ""),
            zones=[ZoneCount(**z) for z in d.get("zones", [])],
            history=list(d.get("history", [])),
        )


@dataclass(frozen=True)
class Settings:
    """The engine-wide knobs the machine needs (from the coordinator's RolloutSettings)."""

    judge_interval_s: float = 5.0
    inconclusive_limit: int = 3
    progress_deadline_s: float = 120.0
    policy: judge.Policy = field(default_factory=judge.Policy)


@dataclass(frozen=True)
class MetricsDown:
    """The metrics source could not be read."""

    reason: str


Metrics = dict[str, judge.Counters]  # instance address → cumulative counters


# ------------------------------------------------------------------------------------------ planning


def plan_canary(capacity: dict[str, int], percent: float) -> dict[str, int]:
    """Canary instances per zone: ``percent`` of the zone's instances rounded up, so at least one per zone;
    a zone with more than one instance keeps at least one old instance (the baseline runs beside it)."""
    out = {}
    for zone, n in capacity.items():
        c = max(1, math.ceil(n * percent / 100.0 - 1e-9))
        out[zone] = min(c, n - 1) if n > 1 else n
    return out


def new_rollout(rollout_id: str, spec: Spec, now: float) -> Rollout:
    r = Rollout(
        id=rollout_id,
        spec=spec,
        phase=Phase.PENDING,
        created=now,
        updated=now,
        message="waiting for the engine to look at the running fleet",
    )
    _note(r, now, f"created: {spec.service} → {spec.version}")
    return r


def _note(r: Rollout, now: float, text: str) -> None:
    r.history.append(f"{now:.3f} {text}")
    r.message = text
    r.updated = now


def _enter(
    r: Rollout,
    phase: Phase,
    now: float,
    text: str,
    settings: Settings,
    *,
    key: str = "",
    desired: dict[str, dict[str, int]] | None = None,
) -> None:
    r.phase = phase
    if desired is not None:
        r.desired = desired
        r.step_key = f"{r.id}/{r.attempt}/{key}"
        r.deadline = now + settings.progress_deadline_s
        r.unready_since = 0.0
    _note(r, now, f"{phase.value}: {text}")


def _all_new(r: Rollout) -> dict[str, dict[str, int]]:
    return {z: {r.spec.version: n} for z, n in r.capacity.items()}


def _all_old(r: Rollout) -> dict[str, dict[str, int]]:
    return {z: {r.from_version: n} for z, n in r.capacity.items()}


def _canary_plan(r: Rollout) -> dict[str, dict[str, int]]:
    out = {}
    for z, n in r.capacity.items():
        c = r.canary.get(z, 0)
        out[z] = {v: k for v, k in ((r.from_version, n - c), (r.spec.version, c)) if k > 0}
    return out


def converged(desired: dict[str, dict[str, int]], obs: Observation) -> bool:
    """Whether every zone runs exactly what ``desired`` asks, all ready, with nothing leaving."""
    for zone in set(desired) | set(obs.zones()):
        want = {v: n for v, n in desired.get(zone, {}).items() if n > 0}
        have: dict[str, int] = {}
        for inst in obs.in_zone(zone):
            if inst.leaving or not inst.ready:
                return False
            have[inst.version] = have.get(inst.version, 0) + 1
        if have != want:
            return False
    return True


def zone_counts(r: Rollout, obs: Observation) -> list[ZoneCount]:
    out = []
    for zone in sorted(set(r.capacity) | set(obs.zones())):
        zc = ZoneCount(zone)
        for inst in obs.in_zone(zone):
            if inst.leaving:
                continue
            if inst.version == r.spec.version:
                zc.new += 1
            else:
                zc.old += 1
            zc.ready += int(inst.ready)
        out.append(zc)
    return out


def _max_looks(r: Rollout, settings: Settings) -> int:
    horizon = r.spec.bake_s * (1 + 0.5 * settings.inconclusive_limit)
    return (
        max(1, math.ceil(horizon / max(settings.judge_interval_s, 0.001))) + settings.inconclusive_limit + 1
    )


# ------------------------------------------------------------------------------------------ the step


def wants_metrics(r: Rollout, now: float) -> bool:
    """Whether :func:`step` needs a metrics sample now (a window opens or a look is due)."""
    if r.phase not in (Phase.BAKING, Phase.POST_BAKE):
        return False
    return not r.window_opened or now >= r.next_look or now >= r.bake_until


def begin(r: Rollout, obs: Observation, now: float, settings: Settings) -> None:
    """PENDING → CANARY (or, for a service with nothing running yet, straight to a first deployment)."""
    if r.phase is not Phase.PENDING:
        return
    running = [i for i in obs.instances if not i.leaving]
    versions = {i.version for i in running}
    if not running:
        zones = r.spec.zones
        n = r.spec.instances_per_zone
        if not zones or n <= 0:
            _enter(
                r,
                Phase.FAILED,
                now,
                f"{r.spec.service} runs nothing and the spec names no zones and "
                "instances for a first deployment",
                settings,
            )
            return
        r.capacity = {z: n for z in zones}
        r.from_version = ""
        r.canary = {}
        _enter(
            r,
            Phase.SURGING,
            now,
            f"first deployment of {r.spec.service}: {n} instance(s) in each of {', '.join(zones)}",
            settings,
            key="first",
            desired=_all_new(r),
        )
        return
    if len(versions) > 1:
        _enter(
            r,
            Phase.FAILED,
            now,
            f"{r.spec.service} runs several versions ({', '.join(sorted(versions))}); "
            "finish or roll back the other change first",
            settings,
        )
        return
    (current,) = versions
    if current == r.spec.version:
        _enter(r, Phase.SUCCEEDED, now, f"{r.spec.service} already runs {current}", settings)
        return
    r.from_version = current
    r.capacity = {z: sum(1 for i in running if i.zone == z) for z in obs.zones()}
    r.capacity = {z: n for z, n in r.capacity.items() if n > 0}
    r.canary = plan_canary(r.capacity, r.spec.canary_percent)
    r.max_looks = _max_looks(r, settings)
    plan = ", ".join(f"{z}: {c}/{r.capacity[z]}" for z, c in sorted(r.canary.items()))
    _enter(
        r,
        Phase.CANARY,
        now,
        f"starting the canary of {r.spec.version} ({plan})",
        settings,
        key="canary",
        desired=_canary_plan(r),
    )


def _new_instances(r: Rollout, obs: Observation) -> list[Instance]:
    return [i for i in obs.instances if i.version == r.spec.version and not i.leaving]


def _unready_for(r: Rollout, instances: list[Instance], now: float) -> float:
    if all(i.ready for i in instances):
        r.unready_since = 0.0
        return 0.0
    if not r.unready_since:
        r.unready_since = now
    return now - r.unready_since


def _rollback(r: Rollout, now: float, reason: str, settings: Settings) -> None:
    if not r.from_version:
        _enter(r, Phase.FAILED, now, f"first deployment failed ({reason}); nothing to roll back to", settings)
        return
    _enter(
        r,
        Phase.ROLLING_BACK,
        now,
        f"rolling back to {r.from_version}: {reason}",
        settings,
        key="rollback",
        desired=_all_old(r),
    )


def _open_window(
    r: Rollout, metrics: Metrics | MetricsDown | None, now: float, until: float, settings: Settings
) -> None:
    r.window_start = {a: c.to_dict() for a, c in metrics.items()} if isinstance(metrics, dict) else {}
    r.window_opened = now
    r.bake_until = until
    r.next_look = now + settings.judge_interval_s
    r.looks = 0


def _window(r: Rollout, metrics: Metrics, obs: Observation) -> tuple[judge.Counters, judge.Counters]:
    canary, baseline = judge.Counters(), judge.Counters()
    by_address = {i.address: i for i in obs.instances}
    for address, counters in metrics.items():
        inst = by_address.get(address)
        if inst is None:
            continue
        start = r.window_start.get(address)
        delta = counters.minus(judge.Counters.from_dict(start) if start else None)
        if inst.version == r.spec.version:
            canary = canary.plus(delta)
        elif inst.version == r.from_version:
            baseline = baseline.plus(delta)
    return canary, baseline


def step(
    r: Rollout, obs: Observation, metrics: Metrics | MetricsDown | None, now: float, settings: Settings
) -> Rollout:
    """Advance ``r`` (in place, and returned) given what the target and the metrics source report now."""
    r.zones = zone_counts(r, obs)
    if r.phase is Phase.PENDING:
        begin(r, obs, now, settings)
        return r
    stage = _STAGES.get(r.phase)
    if stage is None:  # terminal, or paused for an operator
        return r
    return stage(_Tick(r, obs, metrics, now, settings, _new_instances(r, obs)))


@dataclass(frozen=True)
class _Tick:
    """What one step of a running rollout looks at."""

    r: Rollout
    obs: Observation
    metrics: Metrics | MetricsDown | None
    now: float
    settings: Settings
    new: list[Instance]
    """The instances that run the new version."""

    @property
    def converged(self) -> bool:
        return converged(self.r.desired, self.obs)

    def guardrail(self, *, watch_readiness: bool) -> str | None:
        """Crash loops always; readiness too once instances should stay ready (bakes)."""
        s = self.settings
        if not watch_readiness:
            return judge.guardrail(self.new, s.policy, unready_for_s=0, unready_limit_s=math.inf)
        return judge.guardrail(
            self.new,
            s.policy,
            unready_for_s=_unready_for(self.r, self.new, self.now),
            unready_limit_s=max(s.judge_interval_s, 1.0),
        )


def _step_canary(t: _Tick) -> Rollout:
    """Canary instances coming up: bake once they are all ready; fail on a guardrail or the deadline."""
    r, now, settings = t.r, t.now, t.settings
    reason = t.guardrail(watch_readiness=False)
    if reason:
        return _fail(r, now, reason, settings)
    if t.converged:
        r.window_start, r.window_opened = {}, 0.0
        r.bake_until = now + r.spec.bake_s
        r.next_look = now + settings.judge_interval_s
        _enter(
            r,
            Phase.BAKING,
            now,
            f"canary ready; baking for {r.spec.bake_s:g} s and at least {r.spec.min_requests} requests",
            settings,
        )
    elif now >= r.deadline:
        return _fail(
            r,
            now,
            f"progress deadline: the canary was not ready within {settings.progress_deadline_s:g} s",
            settings,
            check="guardrail",
        )
    return r


def _step_baking(t: _Tick) -> Rollout:
    """The canary serves beside the baseline: open the comparison window, then judge at each look."""
    r, now, metrics, settings = t.r, t.now, t.metrics, t.settings
    reason = t.guardrail(watch_readiness=True)
    if reason:
        return _fail(r, now, reason, settings)
    if not r.window_opened:
        if isinstance(metrics, dict):
            _open_window(r, metrics, now, r.bake_until or now + r.spec.bake_s, settings)
        elif isinstance(metrics, MetricsDown) and (now >= r.next_look or now >= r.bake_until):
            return _look(r, t.obs, metrics, now, now >= r.bake_until, settings)
        return r
    if metrics is None:
        return r
    return _look(r, t.obs, metrics, now, now >= r.bake_until, settings)


def _step_surging(t: _Tick) -> Rollout:
    """The rest of the fleet moves to the new version (optionally one zone first), then the post-surge
    bake."""
    r, now, settings = t.r, t.now, t.settings
    reason = t.guardrail(watch_readiness=False)
    if reason:
        return _fail(r, now, reason, settings)
    if t.converged:
        if r.spec.zone_first and r.step_key.endswith("/surge-first"):
            _enter(
                r,
                Phase.SURGING,
                now,
                "first zone surged and ready; surging the other zones",
                settings,
                key="surge-rest",
                desired=_all_new(r),
            )
            return r
        r.window_start = {}
        r.window_opened = 0.0
        r.bake_until = now + r.spec.post_bake_s
        _enter(
            r,
            Phase.POST_BAKE,
            now,
            f"all {sum(r.capacity.values())} instances on {r.spec.version}; "
            f"watching for {r.spec.post_bake_s:g} s",
            settings,
        )
    elif now >= r.deadline:
        return _fail(
            r,
            now,
            f"progress deadline: the surge was not ready within {settings.progress_deadline_s:g} s",
            settings,
            check="guardrail",
        )
    return r


def _step_post_bake(t: _Tick) -> Rollout:
    """The all-new fleet is watched with guardrails only; no metrics at the end pauses for an operator."""
    r, now, metrics, settings = t.r, t.now, t.metrics, t.settings
    reason = t.guardrail(watch_readiness=True)
    if reason:
        return _fail(r, now, reason, settings)
    final = now >= r.bake_until
    if not r.window_opened and isinstance(metrics, dict):
        _open_window(r, metrics, now, r.bake_until or now + r.spec.post_bake_s, settings)
        return r
    if isinstance(metrics, MetricsDown):
        r.last_look = judge.Verdict(
            now, judge.INCONCLUSIVE, f"metrics unavailable: {metrics.reason}", "metrics"
        )
        if final:
            r.verdicts.append(r.last_look)
            r.paused_from = Phase.POST_BAKE
            _enter(
                r,
                Phase.PAUSED,
                now,
                f"post-surge bake ended without metrics ({metrics.reason}); "
                "waiting for an operator: promote, abort or resume",
                settings,
            )
            return r
        r.next_look = now + settings.judge_interval_s
        return r
    if isinstance(metrics, dict):
        canary, _ = _window(r, metrics, t.obs)
        v = judge.judge(canary, None, settings.policy, now=now, final=final, alpha_look=0.0)
        r.last_look = v
        if v.result == judge.FAIL:
            return _fail(r, now, v.reason, settings, verdict=v)
    if final:
        r.verdicts.append(
            judge.Verdict(now, judge.PASS, "post-surge bake finished; guardrails held", "guardrail")
        )
        _enter(r, Phase.SUCCEEDED, now, f"{r.spec.service} runs {r.spec.version} everywhere", settings)
    elif metrics is not None:
        r.next_look = now + settings.judge_interval_s
    return r


def _step_rolling_back(t: _Tick) -> Rollout:
    """Back to the previous version everywhere; a rollback that does not converge needs an operator."""
    r, now, settings = t.r, t.now, t.settings
    if t.converged:
        _enter(
            r, Phase.ROLLED_BACK, now, f"{r.spec.service} runs {r.from_version} everywhere again", settings
        )
    elif now >= r.deadline and r.deadline:
        _enter(
            r,
            Phase.FAILED,
            now,
            f"the rollback to {r.from_version} did not converge within "
            f"{settings.progress_deadline_s:g} s; needs an operator",
            settings,
        )
    return r


_STAGES: dict[Phase, Callable[[_Tick], Rollout]] = {
    Phase.CANARY: _step_canary,
    Phase.BAKING: _step_baking,
    Phase.SURGING: _step_surging,
    Phase.POST_BAKE: _step_post_bake,
    Phase.ROLLING_BACK: _step_rolling_back,
}


def _fail(
    r: Rollout,
    now: float,
    reason: str,
    settings: Settings,
    *,
    check: str = "guardrail",
    verdict: judge.Verdict | None = None,
) -> Rollout:
    r.verdicts.append(verdict or judge.Verdict(now, judge.FAIL, reason, check))
    _rollback(r, now, reason, settings)
    return r


def _look(
    r: Rollout, obs: Observation, metrics: Metrics | MetricsDown, now: float, final: bool, settings: Settings
) -> Rollout:
    r.looks += 1
    r.next_look = now + settings.judge_interval_s
    alpha = judge.per_look_alpha(settings.policy.alpha, r.max_looks)
    if isinstance(metrics, MetricsDown):
        v = judge.Verdict(
            now, judge.INCONCLUSIVE, f"metrics unavailable: {metrics.reason}", "metrics", alpha=alpha
        )
    else:
        canary, baseline = _window(r, metrics, obs)
        policy = replace(settings.policy, min_requests=r.spec.min_requests)
        v = judge.judge(canary, baseline, policy, now=now, final=final, alpha_look=alpha)
        v = replace(v, extra={"look": r.looks, "max_looks": r.max_looks})
    r.last_look = v
    if v.result == judge.FAIL:
        return _fail(r, now, v.reason, settings, verdict=v)
    if not final:
        return r
    if v.result == judge.PASS:
        r.verdicts.append(v)
        return _surge(r, now, settings, "canary passed: " + v.reason)
    r.verdicts.append(v)
    r.inconclusive += 1
    if r.inconclusive >= settings.inconclusive_limit:
        r.paused_from = Phase.BAKING
        _enter(
            r,
            Phase.PAUSED,
            now,
            f"inconclusive {r.inconclusive} times in a row ({v.reason}); waiting for an "
            "operator: promote, abort or resume (bake again)",
            settings,
        )
        return r
    extension = max(r.spec.bake_s / 2, settings.judge_interval_s)
    r.bake_until = now + extension
    _note(
        r,
        now,
        f"baking: inconclusive ({v.reason}); baking {extension:g} s more "
        f"({r.inconclusive}/{settings.inconclusive_limit})",
    )
    return r


def _surge(r: Rollout, now: float, settings: Settings, why: str) -> Rollout:
    if r.spec.zone_first and len(r.capacity) > 1:
        first = sorted(r.capacity)[0]
        desired = _canary_plan(r)
        desired[first] = {r.spec.version: r.capacity[first]}
        _enter(
            r,
            Phase.SURGING,
            now,
            f"{why}; surging zone {first} first",
            settings,
            key="surge-first",
            desired=desired,
        )
    else:
        _enter(
            r,
            Phase.SURGING,
            now,
            f"{why}; surging all zones in parallel",
            settings,
            key="surge",
            desired=_all_new(r),
        )
    return r


# ------------------------------------------------------------------------------------------ operator verbs


def promote(r: Rollout, now: float, reason: str, settings: Settings) -> Rollout:
    """Skip the rest of the bake (or of the post-surge bake)."""
    phase = r.paused_from if r.phase is Phase.PAUSED else r.phase
    why = reason or "no reason given"
    if phase is Phase.BAKING:
        r.paused_from = None
        r.verdicts.append(judge.Verdict(now, judge.PASS, f"promoted by an operator: {why}", "operator"))
        return _surge(r, now, settings, f"promoted by an operator ({why})")
    if phase is Phase.POST_BAKE:
        r.paused_from = None
        r.verdicts.append(judge.Verdict(now, judge.PASS, f"promoted by an operator: {why}", "operator"))
        _enter(r, Phase.SUCCEEDED, now, f"promoted by an operator ({why})", settings)
        return r
    raise FailedPrecondition(
        f"rollout {r.id} is {r.phase.value}: only a baking canary or a post-surge bake can be promoted"
    )


def abort(r: Rollout, now: float, reason: str, settings: Settings) -> Rollout:
    """Roll back now."""
    if r.terminal:
        raise FailedPrecondition(f"rollout {r.id} already ended ({r.phase.value})")
    if r.phase is Phase.ROLLING_BACK:
        return r
    if r.phase is Phase.PENDING or not r.from_version:
        if r.from_version or r.phase is Phase.PENDING:
            _enter(
                r, Phase.ROLLED_BACK, now, f"aborted before it began: {reason or 'no reason given'}", settings
            )
            return r
    r.paused_from = None
    r.verdicts.append(
        judge.Verdict(now, judge.FAIL, f"aborted by an operator: {reason or 'no reason given'}", "operator")
    )
    _rollback(r, now, f"aborted by an operator ({reason or 'no reason given'})", settings)
    return r


def pause(r: Rollout, now: float, reason: str, settings: Settings) -> Rollout:
    if r.phase not in (Phase.PENDING, Phase.CANARY, Phase.BAKING, Phase.SURGING, Phase.POST_BAKE):
        raise FailedPrecondition(
            f"rollout {r.id} is {r.phase.value}: it can be paused only while it moves forward"
        )
    r.paused_from = r.phase
    _enter(
        r,
        Phase.PAUSED,
        now,
        f"paused by an operator ({reason or 'no reason given'}) during {r.phase.value}",
        settings,
    )
    return r


def resume(r: Rollout, now: float, reason: str, settings: Settings) -> Rollout:
    """Resume a paused rollout (a bake starts afresh), or retry one that rolled back or failed."""
    why = reason or "no reason given"
    if r.phase is Phase.PAUSED:
        phase = r.paused_from or Phase.PENDING
        r.paused_from = None
        r.deadline = now + settings.progress_deadline_s
        r.unready_since = 0.0
        if phase in (Phase.BAKING, Phase.POST_BAKE):
            r.inconclusive = 0
            r.window_start, r.window_opened = {}, 0.0
            r.bake_until = now + (r.spec.bake_s if phase is Phase.BAKING else r.spec.post_bake_s)
        _enter(r, phase, now, f"resumed by an operator ({why})", settings)
        return r
    if r.phase in (Phase.ROLLED_BACK, Phase.FAILED):
        r.attempt += 1
        r.inconclusive = 0
        r.window_start, r.window_opened, r.bake_until = {}, 0.0, 0.0
        r.deadline = 0.0
        _enter(r, Phase.PENDING, now, f"retry {r.attempt} requested by an operator ({why})", settings)
        return r
    raise FailedPrecondition(
        f"rollout {r.id} is {r.phase.value}: only a paused, rolled-back or failed rollout can be resumed"
    )
