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


ON_TIMEOUT = ("rollback", "wait", "promote")


@dataclass(frozen=True)
class Step:
    """One step of a plan: a share of every zone on the new version, then a bake; or a pause that waits
    for ``stoker rollout promote``."""

    share: float = 0.0
    """Percent of each zone's instances on the new version, in (0, 100]; 0 for a pause step. Rounded up,
    so at least one instance per zone; below 100 a zone of several keeps at least one old instance."""
    bake_s: float | None = None
    """Minimum bake of this step (None: the spec's ``bake_s``). Unused by the 100 % step (post_bake_s)."""
    min_requests: int | None = None
    """Requests canary and baseline must each serve before a pass (None: the spec's)."""
    zone_first: bool = False
    """Move the first zone (by name) to this step's share, then the others."""
    pause: bool = False
    """A pause step: hold until an operator promotes (or the timeout acts)."""
    timeout_s: float = 0.0
    """Pause step: how long to wait for a promotion (0: forever)."""
    on_timeout: str = "rollback"
    """Pause step: what a timeout does: "rollback", "wait" (keep waiting) or "promote" (go on)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


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
    steps: tuple[Step, ...] = ()
    """The plan (a rollout file's ``plan.steps``); empty: one canary step of ``canary_percent`` with
    ``bake_s`` and ``min_requests``, then 100 % (zone first when ``zone_first``)."""
    analysis: dict[str, Any] = field(default_factory=dict)
    """A rollout file's ``analysis`` (metric names, PromQL templates, guardrails) as loaded and checked by
    ``rollout_file``; empty: the coordinator's metrics settings (the sample service's names)."""
    webhooks: tuple[dict[str, Any], ...] = ()
    """A rollout file's ``notifications.webhooks`` (url, format, events)."""
    source: str = ""
    """Where the spec came from ("file NAME" for a rollout file; empty for flags)."""
    deployment: str = ""
    """Kubernetes: the Deployment family (``<deployment>-<zone>``, label ``stoker.dev/service``) when it is
    not named like the service."""

    @property
    def family(self) -> str:
        return self.deployment or self.service

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in self.__dict__.items()
            if k not in ("steps", "webhooks")
        }
        out["steps"] = [st.to_dict() for st in self.steps]
        out["webhooks"] = [dict(w) for w in self.webhooks]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        data["zones"] = tuple(data.get("zones", ()))
        data["env"] = dict(data.get("env", {}))
        data["steps"] = tuple(Step.from_dict(st) for st in data.get("steps", ()))
        data["analysis"] = dict(data.get("analysis", {}))
        data["webhooks"] = tuple(dict(w) for w in data.get("webhooks", ()))
        return cls(**data)


def plan_steps(spec: Spec) -> tuple[Step, ...]:
    """The steps a rollout of ``spec`` goes through (its plan, or the canary-then-surge default)."""
    if spec.steps:
        return spec.steps
    return (
        Step(share=spec.canary_percent, bake_s=spec.bake_s, min_requests=spec.min_requests),
        Step(share=100.0, zone_first=spec.zone_first),
    )


def validate_steps(steps: tuple[Step, ...], where: str = "spec.steps") -> None:
    """Raise InvalidArgument naming the first bad step: shares in (0, 100], rising, the last one 100."""
    last = 0.0
    shares = [st for st in steps if not st.pause]
    for n, st in enumerate(steps, 1):
        name = f"{where}[{n}]"
        if st.pause:
            if st.share:
                raise InvalidArgument(f"{name}: a pause step has no share")
            if not (st.timeout_s >= 0) or math.isinf(st.timeout_s):
                raise InvalidArgument(f"{name}.timeout: must be a finite number of seconds, not negative")
            if st.on_timeout not in ON_TIMEOUT:
                raise InvalidArgument(f"{name}.on_timeout: must be one of {', '.join(ON_TIMEOUT)}")
            continue
        if not (0 < st.share <= 100):
            raise InvalidArgument(f"{name}.share: must be in (0, 100], got {st.share}")
        if st.share <= last:
            raise InvalidArgument(f"{name}.share: {st.share:g} must be above the previous step's {last:g}")
        last = st.share
        if st.bake_s is not None and (not (st.bake_s >= 0) or math.isinf(st.bake_s)):
            raise InvalidArgument(f"{name}.bake: must be a finite number of seconds, not negative")
        if st.min_requests is not None and st.min_requests < 0:
            raise InvalidArgument(f"{name}.min_requests: must not be negative")
    if steps and (not shares or shares[-1].share != 100):
        raise InvalidArgument(f"{where}: the last step with a share must be 100 (the whole fleet)")
    if steps and steps[-1].pause:
        raise InvalidArgument(f"{where}: a plan cannot end with a pause (nothing would follow it)")


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
    if not spec.steps and (not (0 < spec.canary_percent < 100) or math.isnan(spec.canary_percent)):
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
    validate_steps(spec.steps)
    if spec.deployment and (
        not all(c.isalnum() or c in "-." for c in spec.deployment) or len(spec.deployment) > 50
    ):
        raise InvalidArgument(
            f"spec.deployment: {spec.deployment!r} must be at most 50 letters, digits, '-', '.'"
        )


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
    step_index: int = 0
    """Index of the plan step in progress (``plan_steps(spec)``)."""
    awaiting_promotion: bool = False
    """Paused at a pause step: promote (or resume) goes on to the next step."""
    pause_until: float = 0.0
    """Pause step: absolute time its timeout acts (0: none)."""
    plan: list[str] = field(default_factory=list)
    """The plan with the instance counts it means for this fleet, one line per step."""

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
            "step_index": self.step_index,
            "awaiting_promotion": self.awaiting_promotion,
            "pause_until": self.pause_until,
            "plan": self.plan,
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
            step_index=d.get("step_index", 0),
            awaiting_promotion=d.get("awaiting_promotion", False),
            pause_until=d.get("pause_until", 0.0),
            plan=list(d.get("plan", [])),
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


def current_step(r: Rollout) -> Step:
    steps = plan_steps(r.spec)
    return steps[min(r.step_index, len(steps) - 1)]


def _bake_s(r: Rollout) -> float:
    st = current_step(r)
    return r.spec.bake_s if st.bake_s is None else st.bake_s


def _min_requests(r: Rollout) -> int:
    st = current_step(r)
    return r.spec.min_requests if st.min_requests is None else st.min_requests


def describe_plan(r: Rollout) -> list[str]:
    """Each step with the instance counts it means for this fleet (``capacity``)."""
    lines = []
    steps = plan_steps(r.spec)
    previous: dict[str, int] = {}
    for n, st in enumerate(steps, 1):
        if st.pause:
            wait = f"up to {st.timeout_s:g} s, then {st.on_timeout}" if st.timeout_s else "no timeout"
            lines.append(f"step {n}/{len(steps)}: pause for `stoker rollout promote` ({wait})")
            continue
        counts = plan_canary(r.capacity, st.share) if st.share < 100 else dict(r.capacity)
        where = ", ".join(f"{z} {counts[z]}/{r.capacity[z]}" for z in sorted(r.capacity))
        first = ", first zone first" if st.zone_first and len(r.capacity) > 1 else ""
        if st.share >= 100:
            bake = f"post-bake {r.spec.post_bake_s:g} s"
        else:
            bake_s = r.spec.bake_s if st.bake_s is None else st.bake_s
            need = r.spec.min_requests if st.min_requests is None else st.min_requests
            bake = f"bake {bake_s:g} s and >= {need} requests" if need else f"bake {bake_s:g} s"
        same = " (the same counts as the step before)" if counts == previous else ""
        previous = counts
        lines.append(f"step {n}/{len(steps)}: {st.share:g} % ({where}){same}{first}; {bake}")
    return lines


def _max_looks(r: Rollout, settings: Settings) -> int:
    horizon = _bake_s(r) * (1 + 0.5 * settings.inconclusive_limit)
    return (
        max(1, math.ceil(horizon / max(settings.judge_interval_s, 0.001))) + settings.inconclusive_limit + 1
    )


# ------------------------------------------------------------------------------------------ the step


def wants_metrics(r: Rollout, now: float) -> bool:
    """Whether :func:`step` needs a metrics sample now (a window opens or a look is due)."""
    if r.phase is Phase.PAUSED and r.awaiting_promotion:
        return now >= r.next_look  # the canary waiting at a pause step is still watched (guardrails)
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
    r.plan = describe_plan(r)
    for line in r.plan:
        _note(r, now, f"plan: {line}")
    r.step_index = 0
    _enter_step(r, now, settings, f"starting {r.spec.version}")


def _enter_step(r: Rollout, now: float, settings: Settings, why: str) -> Rollout:
    """Begin plan step ``r.step_index``: a pause, a partial share (canary, then bake) or the 100 % surge."""
    steps = plan_steps(r.spec)
    st = steps[r.step_index]
    label = f"step {r.step_index + 1}/{len(steps)}"
    r.inconclusive = 0
    r.window_start, r.window_opened, r.bake_until = {}, 0.0, 0.0
    if st.pause:
        r.awaiting_promotion = True
        r.paused_from = Phase.BAKING
        r.pause_until = now + st.timeout_s if st.timeout_s else 0.0
        wait = f"within {st.timeout_s:g} s, else {st.on_timeout}" if st.timeout_s else "no timeout"
        _enter(
            r,
            Phase.PAUSED,
            now,
            f"{why}; {label}: waiting for `stoker rollout promote` ({wait})",
            settings,
        )
        return r
    if st.share >= 100:
        return _surge(r, now, settings, f"{why}; {label}")
    r.canary = plan_canary(r.capacity, st.share)
    r.max_looks = _max_looks(r, settings)
    plan = ", ".join(f"{z}: {c}/{r.capacity[z]}" for z, c in sorted(r.canary.items()))
    key = "canary" if r.step_index == 0 else f"step-{r.step_index + 1}"
    desired = _canary_plan(r)
    if st.zone_first and len(r.capacity) > 1:
        first = sorted(r.capacity)[0]
        before = {z: dict(v) for z, v in r.desired.items()} or _all_old(r)
        before[first] = desired[first]
        _enter(
            r,
            Phase.CANARY,
            now,
            f"{why}; {label}: {st.share:g} % of {r.spec.version} in zone {first} first ({plan})",
            settings,
            key=f"{key}-first",
            desired=before,
        )
        return r
    _enter(
        r,
        Phase.CANARY,
        now,
        f"{why}; {label}: {st.share:g} % of {r.spec.version} ({plan})",
        settings,
        key=key,
        desired=desired,
    )
    return r


def _next_step(r: Rollout, now: float, settings: Settings, why: str) -> Rollout:
    r.step_index += 1
    r.awaiting_promotion = False
    r.pause_until = 0.0
    r.paused_from = None
    return _enter_step(r, now, settings, why)


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
        # A key is an instance's address, or a track's group ("@canary@zone-a") when a query's series
        # carry no instance label.
        inst = by_address.get(address)
        if inst is not None:
            version = inst.version
        elif address.startswith("@canary@"):
            version = r.spec.version
        elif address.startswith("@baseline@") and r.from_version:
            version = r.from_version
        else:
            continue
        start = r.window_start.get(address)
        delta = counters.minus(judge.Counters.from_dict(start) if start else None)
        if version == r.spec.version:
            canary = canary.plus(delta)
        elif version == r.from_version:
            baseline = baseline.plus(delta)
    return canary, baseline


def step(
    r: Rollout,
    obs: Observation,
    metrics: Metrics | MetricsDown | None,
    now: float,
    settings: Settings,
    breaches: tuple[str, ...] = (),
) -> Rollout:
    """Advance ``r`` (in place, and returned) given what the target and the metrics source report now;
    ``breaches`` are the rollout's own guardrails (thresholds on its queries) that the canary broke."""
    r.zones = zone_counts(r, obs)
    if r.phase is Phase.PENDING:
        begin(r, obs, now, settings)
        return r
    stage = _STAGES.get(r.phase)
    if stage is None:  # terminal
        return r
    return stage(_Tick(r, obs, metrics, now, settings, _new_instances(r, obs), breaches))


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
    breaches: tuple[str, ...] = ()

    @property
    def converged(self) -> bool:
        return converged(self.r.desired, self.obs)

    def guardrail(self, *, watch_readiness: bool) -> str | None:
        """The rollout's own guardrails and crash loops always; readiness too once instances should stay
        ready (bakes)."""
        if self.breaches:
            return "guardrail " + "; ".join(self.breaches[:3])
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
    if t.converged and r.step_key.endswith("-first"):
        _enter(
            r,
            Phase.CANARY,
            now,
            "first zone ready; the other zones follow",
            settings,
            key=r.step_key.rsplit("/", 1)[1].removesuffix("-first"),
            desired=_canary_plan(r),
        )
    elif t.converged:
        r.window_start, r.window_opened = {}, 0.0
        r.bake_until = now + _bake_s(r)
        r.next_look = now + settings.judge_interval_s
        _enter(
            r,
            Phase.BAKING,
            now,
            f"step {r.step_index + 1} ready; baking for {_bake_s(r):g} s and at least "
            f"{_min_requests(r)} requests",
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
            # The bake is judged data: a window that opens late (a Prometheus that discovers and scrapes
            # new instances seconds after they start) still gets the whole bake.
            _open_window(r, metrics, now, max(r.bake_until, now + _bake_s(r)), settings)
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
        if r.step_key.endswith("/surge-first"):
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


def _step_paused(t: _Tick) -> Rollout:
    """Held. At a pause step the canary is still watched for crash loops, and the step's timeout acts."""
    r, now, settings = t.r, t.now, t.settings
    if not r.awaiting_promotion:
        return r  # paused by an operator or by inconclusive verdicts: only a verb moves it
    reason = t.guardrail(watch_readiness=False)
    if reason and r.from_version:
        r.awaiting_promotion = False
        r.paused_from = None
        return _fail(r, now, reason, settings)
    if t.metrics is not None:
        r.next_look = now + settings.judge_interval_s
    if not r.pause_until or now < r.pause_until:
        return r
    st = current_step(r)
    waited = f"no promotion within {st.timeout_s:g} s"
    if st.on_timeout == "promote":
        return _next_step(r, now, settings, f"{waited}; going on as configured")
    if st.on_timeout == "wait":
        r.pause_until = 0.0
        _note(r, now, f"paused: {waited}; still waiting for `stoker rollout promote` as configured")
        return r
    r.awaiting_promotion = False
    r.paused_from = None
    return _fail(r, now, f"{waited} at step {r.step_index + 1}", settings, check="pause")


_STAGES: dict[Phase, Callable[[_Tick], Rollout]] = {
    Phase.PAUSED: _step_paused,
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
        policy = replace(settings.policy, min_requests=_min_requests(r))
        v = judge.judge(canary, baseline, policy, now=now, final=final, alpha_look=alpha)
        v = replace(v, extra={"look": r.looks, "max_looks": r.max_looks})
    r.last_look = v
    if v.result == judge.FAIL:
        return _fail(r, now, v.reason, settings, verdict=v)
    if not final:
        return r
    if v.result == judge.PASS:
        r.verdicts.append(v)
        return _next_step(r, now, settings, f"step {r.step_index + 1} passed: " + v.reason)
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
    extension = max(_bake_s(r) / 2, settings.judge_interval_s)
    r.bake_until = now + extension
    _note(
        r,
        now,
        f"baking: inconclusive ({v.reason}); baking {extension:g} s more "
        f"({r.inconclusive}/{settings.inconclusive_limit})",
    )
    return r


def _surge(r: Rollout, now: float, settings: Settings, why: str) -> Rollout:
    if current_step(r).zone_first and len(r.capacity) > 1:
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
    if r.phase is Phase.PAUSED and r.awaiting_promotion:
        return _next_step(r, now, settings, f"promoted by an operator ({why})")
    if phase is Phase.BAKING:
        r.paused_from = None
        r.verdicts.append(judge.Verdict(now, judge.PASS, f"promoted by an operator: {why}", "operator"))
        return _next_step(r, now, settings, f"promoted by an operator ({why})")
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
    r.awaiting_promotion = False
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
    if r.phase is Phase.PAUSED and r.awaiting_promotion:
        return _next_step(r, now, settings, f"resumed by an operator ({why})")
    if r.phase is Phase.PAUSED:
        phase = r.paused_from or Phase.PENDING
        r.paused_from = None
        r.deadline = now + settings.progress_deadline_s
        r.unready_since = 0.0
        if phase in (Phase.BAKING, Phase.POST_BAKE):
            r.inconclusive = 0
            r.window_start, r.window_opened = {}, 0.0
            r.bake_until = now + (_bake_s(r) if phase is Phase.BAKING else r.spec.post_bake_s)
        _enter(r, phase, now, f"resumed by an operator ({why})", settings)
        return r
    if r.phase in (Phase.ROLLED_BACK, Phase.FAILED):
        return retry(r, now, reason, settings)
    raise FailedPrecondition(
        f"rollout {r.id} is {r.phase.value}: only a paused, rolled-back or failed rollout can be resumed"
    )


def retry(r: Rollout, now: float, reason: str, settings: Settings) -> Rollout:
    """Start a rolled-back or failed rollout again, as the next attempt, from its first step."""
    why = reason or "no reason given"
    if r.phase in (Phase.ROLLED_BACK, Phase.FAILED):
        r.attempt += 1
        r.step_index = 0
        r.awaiting_promotion, r.pause_until, r.paused_from = False, 0.0, None
        r.inconclusive = 0
        r.window_start, r.window_opened, r.bake_until = {}, 0.0, 0.0
        r.deadline = 0.0
        _enter(r, Phase.PENDING, now, f"retry {r.attempt} requested by an operator ({why})", settings)
        return r
    raise FailedPrecondition(
        f"rollout {r.id} is {r.phase.value}: only a rolled-back or failed rollout can be retried"
    )
