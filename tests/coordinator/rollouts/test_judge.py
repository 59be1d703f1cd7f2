"""The judge's statistics, checked against exact values and against the behaviour the rollouts rely on."""

from __future__ import annotations

import math
import random

import pytest

from stoker.coordinator.rollouts import judge
from stoker.coordinator.rollouts.judge import Counters, Policy

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)


def histogram(latencies_s) -> tuple[tuple[float, int], ...]:
    return tuple((b, sum(1 for x in latencies_s if x <= b)) for b in BOUNDS)


def counters(n: int, errors: int, latency_ms: float = 1.0, jitter: float = 0.3, seed: int = 1) -> Counters:
    rng = random.Random(seed)
    lat = [max(0.0001, (latency_ms + rng.uniform(-jitter, jitter) * latency_ms) / 1000) for _ in range(n)]
    return Counters(n, errors, histogram(lat))


def test_fisher_matches_the_hypergeometric_tail():
    # 3 of 3 events in group A (size 5) out of 10: C(5,3)/C(10,3) = 10/120
    assert judge.fisher_greater(3, 5, 0, 5) == pytest.approx(10 / 120)
    # symmetric table: P(X >= 1) with 2 events, 2 + 2 → 1 - C(2,0)C(2,2)/C(4,2) = 5/6
    assert judge.fisher_greater(1, 2, 1, 2) == pytest.approx(5 / 6)
    assert judge.fisher_greater(0, 100, 0, 100) == 1.0
    assert judge.fisher_greater(5, 0, 0, 10) == 1.0


def test_mann_whitney_detects_a_shift_and_not_a_copy():
    fast = histogram([0.001 + 0.0001 * i for i in range(200)])
    slow = histogram([0.051 + 0.0001 * i for i in range(200)])
    assert judge.mann_whitney_greater(slow, fast) < 1e-10
    assert judge.mann_whitney_greater(fast, slow) > 0.99
    assert 0.3 < judge.mann_whitney_greater(fast, fast) < 0.7


def test_histogram_quantile_interpolates_inside_the_bucket():
    assert judge.histogram_quantile(0.5, ((0.01, 0), (0.02, 10), (math.inf, 10))) == pytest.approx(0.015)
    assert judge.histogram_quantile(0.5, ()) == 0.0


def test_counters_difference_survives_a_restart():
    before = Counters(100, 2, ((0.01, 90), (math.inf, 100)))
    after = Counters(150, 3, ((0.01, 130), (math.inf, 150)))
    assert after.minus(before) == Counters(50, 1, ((0.01, 40), (math.inf, 50)))
    restarted = Counters(10, 0, ((0.01, 10), (math.inf, 10)))
    assert restarted.minus(before) == restarted
    assert Counters.from_dict(after.to_dict()) == after


def test_good_canary_passes_only_at_the_end_of_the_bake():
    policy = Policy(min_requests=200)
    canary, baseline = counters(400, 0, seed=1), counters(4000, 2, seed=2)
    v = judge.judge(canary, baseline, policy, now=1.0, final=False, alpha_look=0.001)
    assert v.result == judge.INCONCLUSIVE
    v = judge.judge(canary, baseline, policy, now=1.0, final=True, alpha_look=0.001)
    assert v.result == judge.PASS and v.canary_requests == 400 and v.baseline_errors == 2


def test_too_little_data_is_inconclusive_never_pass_or_fail():
    v = judge.judge(
        counters(20, 0), counters(2000, 0), Policy(min_requests=200), now=0, final=True, alpha_look=0.001
    )
    assert v.result == judge.INCONCLUSIVE and v.check == "data" and "too little data" in v.reason
    v = judge.judge(Counters(), Counters(), Policy(), now=0, final=True, alpha_look=0.001)
    assert v.result == judge.INCONCLUSIVE


@pytest.mark.parametrize("rate,n", [(0.05, 400), (0.01, 1500)])
def test_error_increase_fails_with_the_fisher_test(rate, n):
    v = judge.judge(
        counters(n, int(n * rate)),
        counters(n * 6, 0),
        Policy(min_requests=200),
        now=0,
        final=False,
        alpha_look=0.0005,
    )
    assert v.result == judge.FAIL and v.check == "errors" and v.p_value < 0.0005


def test_error_rate_above_the_cap_fails_as_a_guardrail():
    v = judge.judge(
        counters(40, 10), counters(400, 0), Policy(error_rate_cap=0.1), now=0, final=False, alpha_look=1e-9
    )
    assert v.result == judge.FAIL and v.check == "guardrail"


def test_a_tiny_error_increase_below_the_floor_does_not_fail():
    # 0.1 % vs 0 % on huge traffic is significant, but below the 0.2 point floor
    v = judge.judge(
        counters(100_000, 100), counters(1_000_000, 0), Policy(), now=0, final=True, alpha_look=0.001
    )
    assert v.result == judge.PASS


def test_latency_regression_needs_significance_and_the_effect_floor():
    policy = Policy(min_requests=200)
    slow = counters(400, 0, latency_ms=51)
    v = judge.judge(slow, counters(4000, 0, latency_ms=1), policy, now=0, final=False, alpha_look=0.0005)
    assert v.result == judge.FAIL and v.check == "latency" and v.canary_p50_ms > 40
    # 2 ms slower: significant, but under the 10 ms floor
    v = judge.judge(
        counters(400, 0, latency_ms=3, jitter=0.05),
        counters(4000, 0, latency_ms=1, jitter=0.05),
        policy,
        now=0,
        final=True,
        alpha_look=0.0005,
    )
    assert v.result == judge.PASS


def test_sequential_looks_keep_false_alarms_under_alpha():
    """A/A simulation: the same error rate on both sides, looked at 10 times; alpha split over the looks."""
    rng = random.Random(7)
    alpha, looks, runs, alarms = 0.05, 10, 300, 0
    for _ in range(runs):
        c_n = c_e = b_n = b_e = 0
        for _ in range(looks):
            for _ in range(60):
                c_n += 1
                c_e += rng.random() < 0.02
            for _ in range(600):
                b_n += 1
                b_e += rng.random() < 0.02
            if judge.fisher_greater(c_e, c_n, b_e, b_n) < judge.per_look_alpha(alpha, looks):
                alarms += 1
                break
    assert alarms / runs <= alpha


def test_guardrails():
    class Inst:
        def __init__(self, id, ready=True, restarts=0):
            self.id, self.ready, self.restarts = id, ready, restarts

    policy = Policy(max_restarts=1)
    assert judge.guardrail(
        [Inst("a"), Inst("b", restarts=2)], policy, unready_for_s=0, unready_limit_s=1
    ).startswith("crash loop")
    assert judge.guardrail([Inst("a", ready=False)], policy, unready_for_s=0.5, unready_limit_s=1) is None
    assert "readiness" in judge.guardrail(
        [Inst("a", ready=False)], policy, unready_for_s=2, unready_limit_s=1
    )
