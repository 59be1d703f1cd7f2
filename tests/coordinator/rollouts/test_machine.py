"""The pure rollout state machine on a fake clock, with an in-memory fleet that converges when asked."""

from __future__ import annotations

import math

import pytest

from stoker.coordinator.core.errors import FailedPrecondition, InvalidArgument
from stoker.coordinator.rollouts import machine as m
from stoker.coordinator.rollouts.judge import Counters, Policy

SETTINGS = m.Settings(
    judge_interval_s=1.0,
    inconclusive_limit=2,
    progress_deadline_s=10.0,
    policy=Policy(min_requests=100, max_restarts=0),
)


class Fleet:
    """Instances per zone; ``converge`` makes them match a desired state (new ones ready at once unless
    told)."""

    def __init__(self, zones: dict[str, int], version: str = "v1") -> None:
        self.instances: list[m.Instance] = []
        self.n = 0
        self.broken: dict[str, str] = {}  # version → "crash" | "unready"
        for zone, count in zones.items():
            for _ in range(count):
                self._add(zone, version)

    def _add(self, zone: str, version: str) -> None:
        self.n += 1
        fault = self.broken.get(version)
        self.instances.append(
            m.Instance(
                id=f"i{self.n}",
                zone=zone,
                version=version,
                ready=fault is None,
                restarts=3 if fault == "crash" else 0,
                address=f"127.0.0.1:{1000 + self.n}",
            )
        )

    def converge(self, desired: dict[str, dict[str, int]]) -> None:
        for zone, want in desired.items():
            for version, n in want.items():
                have = [i for i in self.instances if i.zone == zone and i.version == version]
                for _ in range(n - len(have)):
                    self._add(zone, version)
            ready_ok = all(
                sum(1 for i in self.instances if i.zone == zone and i.version == v and i.ready) >= n
                for v, n in want.items()
            )
            if not ready_ok:
                continue
            for version in {i.version for i in self.instances if i.zone == zone}:
                have = [i for i in self.instances if i.zone == zone and i.version == version]
                for inst in have[: len(have) - want.get(version, 0)]:
                    self.instances.remove(inst)

    def observe(self) -> m.Observation:
        return m.Observation(tuple(self.instances))

    def metrics(self, per_instance: dict[str, tuple[int, int, float]]) -> dict[str, Counters]:
        """version → (requests, errors, latency seconds) for each instance of that version."""
        out = {}
        for inst in self.instances:
            n, e, lat = per_instance.get(inst.version, (0, 0, 0.001))
            buckets = tuple((b, n if lat <= b else 0) for b in (0.005, 0.05, 0.1, math.inf))
            out[inst.address] = Counters(n, e, buckets)
        return out


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0


def drive(r, fleet, clock, traffic, *, until, steps=400, dt=0.5):
    """Tick the machine like the engine does, growing traffic per tick, until ``until(r)``."""
    served: dict[str, list[int]] = {}
    for _ in range(steps):
        if until(r):
            return r
        clock.t += dt
        metrics = None
        if m.wants_metrics(r, clock.t):
            if traffic == "down":
                metrics = m.MetricsDown("connection refused")
            else:
                for version, (rps, err) in traffic.items():
                    tot = served.setdefault(version, [0, 0])
                    tot[0] += int(rps * dt * 4)
                    tot[1] += int(err * rps * dt * 4)
                metrics = fleet.metrics(
                    {v: (n, e, 0.06 if v == "slow" else 0.001) for v, (n, e) in served.items()}
                )
        m.step(r, fleet.observe(), metrics, clock.t, SETTINGS)
        if r.desired:
            fleet.converge(r.desired)
    raise AssertionError(f"did not get there: {r.phase} {r.message}")


def start(fleet, clock, version="v2", **kw):
    spec = m.Spec(
        service="web", version=version, bake_s=kw.pop("bake_s", 5.0), min_requests=100, post_bake_s=2.0, **kw
    )
    m.validate_spec(spec)
    return m.new_rollout("r1", spec, clock.t)


def test_plan_canary_is_a_share_with_at_least_one_per_zone():
    assert m.plan_canary({"a": 10, "b": 10}, 5) == {"a": 1, "b": 1}
    assert m.plan_canary({"a": 20, "b": 20}, 10) == {"a": 2, "b": 2}
    assert m.plan_canary({"a": 1, "b": 3}, 50) == {"a": 1, "b": 2}
    assert m.plan_canary({"a": 2, "b": 5}, 99) == {"a": 1, "b": 4}
    assert m.plan_canary({"a": 30, "b": 10}, 20) == {"a": 6, "b": 2}


def test_good_rollout_goes_canary_bake_surge_post_bake_succeeded():
    fleet, clock = Fleet({"a": 4, "b": 4}), Clock()
    r = start(fleet, clock)
    phases = []
    while not r.terminal:
        drive(
            r,
            fleet,
            clock,
            {"v1": (50, 0), "v2": (50, 0)},
            until=lambda r, p=r.phase: r.phase != p or r.terminal,
        )
        phases.append(r.phase)
    assert phases == [m.Phase.CANARY, m.Phase.BAKING, m.Phase.SURGING, m.Phase.POST_BAKE, m.Phase.SUCCEEDED]
    assert {(i.zone, i.version) for i in fleet.instances} == {("a", "v2"), ("b", "v2")} and len(
        fleet.instances
    ) == 8
    assert [v.result for v in r.verdicts] == ["pass", "pass"]
    assert r.verdicts[0].canary_requests >= 100 and r.verdicts[0].baseline_requests >= 100


def test_canary_errors_roll_back_before_the_surge():
    fleet, clock = Fleet({"a": 4, "b": 4}), Clock()
    r = start(fleet, clock)
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0.05)}, until=lambda r: r.terminal)
    assert r.phase is m.Phase.ROLLED_BACK
    assert r.verdicts[-1].result == "fail" and r.verdicts[-1].check == "errors"
    assert all(i.version == "v1" for i in fleet.instances) and len(fleet.instances) == 8
    assert not any("surg" in h for h in r.history)


def test_slow_canary_rolls_back_on_latency():
    fleet, clock = Fleet({"a": 4, "b": 4}), Clock()
    r = start(fleet, clock, version="slow")
    drive(r, fleet, clock, {"v1": (50, 0), "slow": (50, 0)}, until=lambda r: r.terminal)
    assert r.phase is m.Phase.ROLLED_BACK and r.verdicts[-1].check == "latency"


@pytest.mark.parametrize("fault,word", [("crash", "crash loop"), ("unready", "deadline")])
def test_broken_canary_rolls_back_and_keeps_the_old_instances(fault, word):
    fleet, clock = Fleet({"a": 2, "b": 2}), Clock()
    fleet.broken["v2"] = fault
    r = start(fleet, clock)
    drive(r, fleet, clock, {"v1": (50, 0)}, until=lambda r: r.phase is m.Phase.ROLLING_BACK)
    assert word in r.verdicts[-1].reason
    assert sum(1 for i in fleet.instances if i.version == "v1") == 4  # the floor held throughout
    drive(r, fleet, clock, {"v1": (50, 0)}, until=lambda r: r.terminal)
    assert r.phase is m.Phase.ROLLED_BACK


def test_no_traffic_is_inconclusive_then_paused_never_passed():
    fleet, clock = Fleet({"a": 2, "b": 2}), Clock()
    r = start(fleet, clock)
    drive(r, fleet, clock, {}, until=lambda r: r.phase is m.Phase.PAUSED)
    assert [v.result for v in r.verdicts] == ["inconclusive", "inconclusive"]
    assert r.paused_from is m.Phase.BAKING
    for _ in range(10):  # paused stays paused
        clock.t += 5
        m.step(r, fleet.observe(), None, clock.t, SETTINGS)
    assert r.phase is m.Phase.PAUSED


def test_metrics_down_pauses_and_never_passes():
    fleet, clock = Fleet({"a": 2, "b": 2}), Clock()
    r = start(fleet, clock)
    drive(r, fleet, clock, "down", until=lambda r: r.phase is m.Phase.PAUSED)
    assert all(v.result == "inconclusive" and v.check == "metrics" for v in r.verdicts)


def test_operator_verbs():
    fleet, clock = Fleet({"a": 2, "b": 2}), Clock()
    r = start(fleet, clock, bake_s=100)
    with pytest.raises(FailedPrecondition):
        m.promote(r, clock.t, "", SETTINGS)
    drive(r, fleet, clock, {}, until=lambda r: r.phase is m.Phase.BAKING)
    m.pause(r, clock.t, "look", SETTINGS)
    assert r.phase is m.Phase.PAUSED
    with pytest.raises(FailedPrecondition):
        m.pause(r, clock.t, "", SETTINGS)
    m.resume(r, clock.t, "", SETTINGS)
    assert r.phase is m.Phase.BAKING and r.bake_until == clock.t + 100
    m.promote(r, clock.t, "urgent fix", SETTINGS)
    assert r.phase is m.Phase.SURGING and r.verdicts[-1].check == "operator"
    m.abort(r, clock.t, "changed my mind", SETTINGS)
    assert r.phase is m.Phase.ROLLING_BACK
    drive(r, fleet, clock, {}, until=lambda r: r.terminal)
    assert r.phase is m.Phase.ROLLED_BACK
    with pytest.raises(FailedPrecondition):
        m.abort(r, clock.t, "", SETTINGS)
    m.resume(r, clock.t, "retry", SETTINGS)
    assert r.phase is m.Phase.PENDING and r.attempt == 2
    drive(r, fleet, clock, {}, until=lambda r: r.phase is m.Phase.BAKING)
    assert r.step_key == "r1/2/canary"


def test_zone_first_surges_one_zone_then_the_rest():
    fleet, clock = Fleet({"a": 2, "b": 2}), Clock()
    r = start(fleet, clock, zone_first=True)
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0)}, until=lambda r: r.phase is m.Phase.SURGING)
    assert (
        r.step_key.endswith("/surge-first")
        and r.desired["a"] == {"v2": 2}
        and r.desired["b"] == {"v1": 1, "v2": 1}
    )
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0)}, until=lambda r: r.step_key.endswith("/surge-rest"))
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0)}, until=lambda r: r.terminal)
    assert r.phase is m.Phase.SUCCEEDED


def test_first_deployment_and_deadlines_are_absolute_and_survive_serialization():
    fleet, clock = Fleet({}), Clock()
    r = start(fleet, clock, zones=("a", "b"), instances_per_zone=2)
    m.step(r, fleet.observe(), None, clock.t, SETTINGS)
    assert r.phase is m.Phase.SURGING and r.deadline == clock.t + SETTINGS.progress_deadline_s
    copy = m.Rollout.from_dict(r.to_dict())
    assert copy.to_dict() == r.to_dict()
    fleet.converge(copy.desired)
    drive(copy, fleet, clock, {"v2": (10, 0)}, until=lambda r: r.terminal)
    assert copy.phase is m.Phase.SUCCEEDED


def test_a_service_already_on_the_version_or_on_two_versions():
    fleet, clock = Fleet({"a": 2}), Clock()
    r = start(fleet, clock, version="v1")
    m.step(r, fleet.observe(), None, clock.t, SETTINGS)
    assert r.phase is m.Phase.SUCCEEDED and "already runs" in r.message
    fleet._add("a", "v3")
    r = start(fleet, clock)
    m.step(r, fleet.observe(), None, clock.t, SETTINGS)
    assert r.phase is m.Phase.FAILED and "several versions" in r.message


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(target="nomad"), "target"),
        (dict(canary_percent=0.0), "canary_percent"),
        (dict(canary_percent=100.0), "canary_percent"),
        (dict(bake_s=-1.0), "bake_s"),
        (dict(version=""), "version"),
        (dict(service=""), "service"),
        (dict(zones=("a", "a")), "zones"),
        (dict(env={"A=B": "1"}), "env"),
        (dict(canary_percent=float("nan")), "canary_percent"),
    ],
)
def test_validation_names_the_field(kw, field):
    base = dict(service="web", version="v2", canary_percent=5.0)
    with pytest.raises(InvalidArgument, match=field):
        m.validate_spec(m.Spec(**{**base, **kw}))


PLAN = (
    m.Step(share=5, bake_s=4.0, min_requests=100),
    m.Step(share=25, bake_s=6.0, min_requests=150, zone_first=True),
    m.Step(pause=True, timeout_s=30.0, on_timeout="rollback"),
    m.Step(share=100),
)


def test_a_multi_step_plan_moves_share_by_share_and_waits_at_its_pause_step():
    fleet, clock = Fleet({"a": 8, "b": 8}), Clock()
    r = start(fleet, clock, steps=PLAN)
    ok = {"v1": (50, 0), "v2": (50, 0)}
    drive(r, fleet, clock, ok, until=lambda r: r.phase is m.Phase.BAKING)
    assert r.plan == [
        "step 1/4: 5 % (a 1/8, b 1/8); bake 4 s and >= 100 requests",
        "step 2/4: 25 % (a 2/8, b 2/8), first zone first; bake 6 s and >= 150 requests",
        "step 3/4: pause for `stoker rollout promote` (up to 30 s, then rollback)",
        "step 4/4: 100 % (a 8/8, b 8/8); post-bake 2 s",
    ]
    assert r.desired == {"a": {"v1": 7, "v2": 1}, "b": {"v1": 7, "v2": 1}}
    drive(r, fleet, clock, ok, until=lambda r: r.step_index == 1)
    # zone first: zone a takes its 25 % while zone b still runs step 1's share
    assert r.step_key == "r1/1/step-2-first" and r.desired == {
        "a": {"v1": 6, "v2": 2},
        "b": {"v1": 7, "v2": 1},
    }
    drive(r, fleet, clock, ok, until=lambda r: r.phase is m.Phase.BAKING)
    assert r.step_key == "r1/1/step-2" and r.bake_until - clock.t == pytest.approx(6.0, abs=0.6)
    drive(r, fleet, clock, ok, until=lambda r: r.phase is m.Phase.PAUSED)
    assert r.awaiting_promotion and r.step_index == 2 and [v.result for v in r.verdicts] == ["pass", "pass"]
    assert r.verdicts[1].canary_requests >= 150
    for _ in range(20):  # waits (guardrails still looked at, below)
        clock.t += 1
        m.step(
            r, fleet.observe(), fleet.metrics({}) if m.wants_metrics(r, clock.t) else None, clock.t, SETTINGS
        )
    assert r.phase is m.Phase.PAUSED
    m.promote(r, clock.t, "looks good", SETTINGS)
    assert r.phase is m.Phase.SURGING and r.step_index == 3
    drive(r, fleet, clock, {"v2": (50, 0)}, until=lambda r: r.terminal)
    assert r.phase is m.Phase.SUCCEEDED and {i.version for i in fleet.instances} == {"v2"}
    assert m.Rollout.from_dict(r.to_dict()).to_dict() == r.to_dict()


@pytest.mark.parametrize(
    "on_timeout,phase",
    [("rollback", m.Phase.ROLLED_BACK), ("wait", m.Phase.PAUSED), ("promote", m.Phase.SUCCEEDED)],
)
def test_a_pause_step_timeout_rolls_back_waits_or_goes_on_as_configured(on_timeout, phase):
    fleet, clock = Fleet({"a": 2, "b": 2}), Clock()
    steps = (
        m.Step(share=50, bake_s=2.0),
        m.Step(pause=True, timeout_s=5.0, on_timeout=on_timeout),
        m.Step(100),
    )
    r = start(fleet, clock, steps=steps)
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0)}, until=lambda r: r.awaiting_promotion)
    paused_at = clock.t
    drive(r, fleet, clock, {"v2": (50, 0)}, until=lambda r: r.terminal or clock.t > paused_at + 20)
    assert r.phase is phase
    if on_timeout == "rollback":
        assert r.verdicts[-1].check == "pause" and "no promotion within 5 s" in r.verdicts[-1].reason
        assert r.verdicts[-1].time - paused_at == pytest.approx(5.0, abs=1.0)
        assert {i.version for i in fleet.instances} == {"v1"}
    if on_timeout == "wait":
        assert r.awaiting_promotion and any("still waiting" in h for h in r.history)


def test_a_fault_at_the_second_step_rolls_back_within_that_steps_bake():
    fleet, clock = Fleet({"a": 8, "b": 8}), Clock()
    r = start(fleet, clock, steps=(m.Step(5, bake_s=3.0), m.Step(50, bake_s=20.0), m.Step(100)))
    drive(
        r,
        fleet,
        clock,
        {"v1": (50, 0), "v2": (50, 0)},
        until=lambda r: r.step_index == 1 and r.phase is m.Phase.BAKING,
    )
    opened = clock.t
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0.2)}, until=lambda r: r.terminal)
    fail = r.verdicts[-1]
    assert r.phase is m.Phase.ROLLED_BACK and fail.result == "fail" and fail.check in ("errors", "guardrail")
    assert fail.time - opened < 20.0


@pytest.mark.parametrize(
    "steps,word",
    [
        ((m.Step(0), m.Step(100)), "share: must be in (0, 100]"),
        ((m.Step(150),), "share: must be in (0, 100]"),
        ((m.Step(50), m.Step(20), m.Step(100)), "must be above the previous"),
        ((m.Step(50),), "last step with a share must be 100"),
        ((m.Step(100), m.Step(pause=True)), "cannot end with a pause"),
        ((m.Step(pause=True, on_timeout="explode"), m.Step(100)), "on_timeout"),
    ],
)
def test_bad_plans_are_refused_by_step(steps, word):
    with pytest.raises(
        InvalidArgument,
        match=word.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]"),
    ):
        m.validate_spec(m.Spec(service="web", version="v2", steps=steps))


def test_a_window_that_opens_late_still_gets_the_whole_bake():
    """Metrics that arrive seconds after the canary (a Prometheus discovering it) delay the bake; they do
    not shorten it."""
    fleet, clock = Fleet({"a": 4, "b": 4}), Clock()
    r = start(fleet, clock, bake_s=5.0)
    drive(r, fleet, clock, {}, until=lambda r: r.phase is m.Phase.BAKING)
    entered = clock.t
    for _ in range(6):  # 3 s without a readable source
        clock.t += 0.5
        m.step(r, fleet.observe(), m.MetricsDown("no series yet"), clock.t, SETTINGS)
    assert not r.window_opened and r.phase is m.Phase.BAKING
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0)}, until=lambda r: r.window_opened)
    assert r.bake_until >= r.window_opened + 5.0 > entered + 5.0
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0)}, until=lambda r: r.phase is not m.Phase.BAKING)
    assert r.phase is m.Phase.SURGING and r.verdicts[-1].result == "pass"


def test_a_multi_step_plan_survives_a_restart_at_every_tick():
    """Every tick starts from the stored record (what a restarted coordinator loads): the same step keys,
    in the same order, each once, and the same end."""
    keys: list[str] = []
    fleet, clock = Fleet({"a": 8, "b": 8}), Clock()
    r = start(fleet, clock, steps=PLAN)
    served = {"v1": [0, 0], "v2": [0, 0]}
    for _ in range(600):
        if r.terminal:
            break
        r = m.Rollout.from_dict(r.to_dict())  # a restart
        clock.t += 0.5
        metrics = None
        if m.wants_metrics(r, clock.t):
            for tot in served.values():
                tot[0] += 100
            metrics = fleet.metrics({v: (n, e, 0.001) for v, (n, e) in served.items()})
        m.step(r, fleet.observe(), metrics, clock.t, SETTINGS)
        if r.awaiting_promotion:
            m.promote(r, clock.t, "", SETTINGS)
        if r.step_key and (not keys or keys[-1] != r.step_key):
            keys.append(r.step_key)
        if r.desired:
            fleet.converge(r.desired)
    assert r.phase is m.Phase.SUCCEEDED
    assert [k.split("/")[-1] for k in keys] == ["canary", "step-2-first", "step-2", "surge"]


def test_a_guardrail_breach_while_waiting_at_a_pause_step_rolls_back():
    fleet, clock = Fleet({"a": 2, "b": 2}), Clock()
    steps = (m.Step(share=50, bake_s=2.0), m.Step(pause=True), m.Step(100))
    r = start(fleet, clock, steps=steps)
    drive(r, fleet, clock, {"v1": (50, 0), "v2": (50, 0)}, until=lambda r: r.awaiting_promotion)
    looks = 0
    for _ in range(10):  # waiting: metrics are asked for once per judge interval, for the guardrails
        clock.t += 0.5
        if m.wants_metrics(r, clock.t):
            looks += 1
            m.step(r, fleet.observe(), fleet.metrics({}), clock.t, SETTINGS)
        else:
            m.step(r, fleet.observe(), None, clock.t, SETTINGS)
    assert r.phase is m.Phase.PAUSED and looks == 5
    clock.t += 1.0
    assert m.wants_metrics(r, clock.t)
    m.step(r, fleet.observe(), fleet.metrics({}), clock.t, SETTINGS, ("queue depth: 80 above its max 50",))
    assert r.phase is m.Phase.ROLLING_BACK and "guardrail queue depth: 80" in r.verdicts[-1].reason
