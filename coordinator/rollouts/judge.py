"""Judging a canary against the baseline running beside it: pure statistics, no I/O.

Order of checks, each of which can end the judgment:

1. **Guardrails** (no statistics needed): a canary instance that crash-loops (restarts past a limit), one
   that stays not ready, or an error rate above an absolute cap (with at least a handful of requests).
2. **Too little data** is INCONCLUSIVE: the canary or the baseline served fewer than ``min_requests`` in the
   window. Never a pass, never a failure.
3. **Error rate**: a one-sided Fisher exact test (hypergeometric tail) of "the canary's error rate is higher
   than the baseline's", which fails the canary only when it is significant *and* the difference is at least
   ``min_error_rate_increase`` (an effect-size floor, so a huge baseline cannot make a 0.01 % bump fail).
4. **Latency**: a one-sided Mann–Whitney U test on the two latency histograms (ties within a bucket handled by
   the tie correction, normal approximation — both sides have ``min_requests`` observations), which fails
   only when significant *and* the canary's median is slower by at least ``latency_floor_ms`` and by
   ``latency_floor_ratio`` of the baseline's median.

**Sequential looks.** The engine looks at the canary every ``judge_interval_s`` during the bake so a bad
canary is caught early. Every look is a fresh test on the data so far, so each look gets only a share of the
false-alarm budget: ``alpha / max_looks`` (a Bonferroni split, valid whatever the correlation between the
looks). With the number of looks bounded by the bake, its extensions and the interval, the probability that
*any* look raises a false alarm on a good canary stays below ``alpha``. A pass is only given at the end of
the bake; a failure may come at any look.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

Buckets = tuple[tuple[float, int], ...]
"""A cumulative latency histogram: (upper bound in seconds, requests at or below it), ascending."""


class Watched(Protocol):
    """What the guardrails read of an instance."""

    @property
    def id(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def restarts(self) -> int: ...


class _Figures(TypedDict):
    """The figures every verdict of one look carries."""

    canary_requests: int
    canary_errors: int
    baseline_requests: int
    baseline_errors: int
    canary_p50_ms: float
    baseline_p50_ms: float
    alpha: float


PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one instance (or a sum of instances), as exposed on /metrics.

    ``buckets`` are (upper bound in seconds, cumulative count) pairs of the latency histogram, ending with
    ``inf``; all instances of a service share the same bounds.
    """

    requests: int = 0
    errors: int = 0
    buckets: tuple[tuple[float, int], ...] = ()

    def minus(self, earlier: Counters | None) -> Counters:
        """The increase since ``earlier``; a counter that went down (the instance restarted) counts from 0."""
        if earlier is None or self.requests < earlier.requests or self.errors < earlier.errors:
            return self
        before = dict(earlier.buckets)
        buckets = []
        for bound, count in self.buckets:
            prev = before.get(bound, 0)
            if count < prev:
                return self
            buckets.append((bound, count - prev))
        return Counters(self.requests - earlier.requests, self.errors - earlier.errors, tuple(buckets))

    def plus(self, other: Counters) -> Counters:
        merged: dict[float, int] = dict(self.buckets)
        for bound, count in other.buckets:
            merged[bound] = merged.get(bound, 0) + count
        return Counters(
            self.requests + other.requests, self.errors + other.errors, tuple(sorted(merged.items()))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "buckets": [["inf" if math.isinf(b) else b, c] for b, c in self.buckets],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counters:
        return cls(
            int(data["requests"]),
            int(data["errors"]),
            tuple((math.inf if b == "inf" else float(b), int(c)) for b, c in data.get("buckets", [])),
        )


@dataclass(frozen=True)
class Policy:
    """How strict the judge is (filled from the coordinator's rollout settings)."""

    min_requests: int = 200
    alpha: float = 0.01
    error_rate_cap: float = 0.10
    min_error_rate_increase: float = 0.002
    latency_floor_ms: float = 10.0
    latency_floor_ratio: float = 0.2
    max_restarts: int = 0
    cap_min_requests: int = 20
    """The absolute error-rate cap applies once the canary served at least this many requests."""


@dataclass(frozen=True)
class Verdict:
    """One judgment with everything it was based on."""

    time: float
    result: str
    reason: str
    check: str = ""
    """Which check decided: guardrail, data, errors, latency, metrics, operator, or all (a pass)."""
    canary_requests: int = 0
    canary_errors: int = 0
    baseline_requests: int = 0
    baseline_errors: int = 0
    canary_p50_ms: float = 0.0
    baseline_p50_ms: float = 0.0
    p_value: float = 1.0
    alpha: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------------------ statistics


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(a_events: int, a_total: int, b_events: int, b_total: int) -> float:
    """One-sided Fisher exact p-value that group A's event rate is higher than group B's.

    Under the null hypothesis (same rate), given the total number of events, A's count follows a
    hypergeometric distribution; the p-value is P(X >= a_events).
    """
    if a_total <= 0 or b_total <= 0:
        return 1.0
    total = a_total + b_total
    events = a_events + b_events
    if events == 0:
        return 1.0
    lo = max(a_events, 0)
    hi = min(events, a_total)
    log_denominator = _log_choose(total, events)
    terms = [
        _log_choose(a_total, x) + _log_choose(b_total, events - x) - log_denominator
        for x in range(lo, hi + 1)
    ]
    if not terms:
        return 0.0
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _per_bucket(buckets: Buckets) -> list[tuple[float, int]]:
    out, prev = [], 0
    for bound, cumulative in sorted(buckets):
        out.append((bound, max(0, cumulative - prev)))
        prev = max(prev, cumulative)
    return out


def histogram_quantile(q: float, buckets: tuple[tuple[float, int], ...]) -> float:
    """The q-quantile in seconds, interpolated linearly inside its bucket (as PromQL's histogram_quantile)."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return 0.0
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0
    for bound, cumulative in ordered:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower_bound
            width = cumulative - lower_count
            if width <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / width
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def mann_whitney_greater(a_buckets: Buckets, b_buckets: Buckets) -> float:
    """One-sided Mann–Whitney U p-value that A's values tend to be larger than B's, from histograms.

    Observations in the same bucket are ties (tie-corrected variance, continuity correction, normal
    approximation — adequate for the sample sizes the judge requires).
    """
    a = dict(_per_bucket(a_buckets))
    b = dict(_per_bucket(b_buckets))
    bounds = sorted(set(a) | set(b))
    n1, n2 = sum(a.values()), sum(b.values())
    if n1 == 0 or n2 == 0:
        return 1.0
    u, below, tie_term = 0.0, 0, 0.0
    for bound in bounds:
        ca, cb = a.get(bound, 0), b.get(bound, 0)
        u += ca * (below + 0.5 * cb)
        below += cb
        t = ca + cb
        tie_term += t**3 - t
    n = n1 + n2
    mean = n1 * n2 / 2.0
    variance = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0
    z = (u - mean - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


# ------------------------------------------------------------------------------------------ judgment


def per_look_alpha(alpha: float, max_looks: int) -> float:
    return alpha / max(1, max_looks)


def guardrail(
    instances: Iterable[Watched], policy: Policy, *, unready_for_s: float, unready_limit_s: float
) -> str | None:
    """A reason to fail the given (canary or new) instances without statistics, or None.

    ``instances`` are objects with ``id``, ``ready`` and ``restarts``; ``unready_for_s`` is how long some of
    them have been continuously not ready.
    """
    looping = [i for i in instances if i.restarts > policy.max_restarts]
    if looping:
        worst = max(looping, key=lambda i: i.restarts)
        return (
            f"crash loop: instance {worst.id} restarted {worst.restarts} times (limit {policy.max_restarts})"
        )
    if unready_for_s >= unready_limit_s:
        unready = [i.id for i in instances if not i.ready]
        if unready:
            return f"readiness: {', '.join(unready)} not ready for {unready_for_s:.1f} s"
    return None


# Long on purpose: the checks read top to bottom in the order in which they may decide (cap, errors,
# latency, data, pass), each returning its verdict; split up, that order would have to be re-assembled.
def judge(
    canary: Counters, baseline: Counters | None, policy: Policy, *, now: float, final: bool, alpha_look: float
) -> Verdict:
    """Judge one window of canary figures against the baseline's over the same window.

    ``baseline`` None means there is no baseline to compare with (after the surge): only the absolute cap
    applies. Returns FAIL at any look when a check fails; PASS only when ``final``; INCONCLUSIVE otherwise.
    """
    base = baseline or Counters()
    c_p50 = histogram_quantile(0.5, canary.buckets) * 1000
    b_p50 = histogram_quantile(0.5, base.buckets) * 1000
    figures = _Figures(
        canary_requests=canary.requests,
        canary_errors=canary.errors,
        baseline_requests=base.requests,
        baseline_errors=base.errors,
        canary_p50_ms=round(c_p50, 3),
        baseline_p50_ms=round(b_p50, 3),
        alpha=alpha_look,
    )
    c_rate = canary.errors / canary.requests if canary.requests else 0.0
    b_rate = base.errors / base.requests if base.requests else 0.0
    if canary.requests >= policy.cap_min_requests and c_rate > policy.error_rate_cap:
        return Verdict(
            now,
            FAIL,
            f"error rate {c_rate:.2%} above the cap {policy.error_rate_cap:.2%} "
            f"({canary.errors}/{canary.requests})",
            "guardrail",
            **figures,
        )
    if baseline is None:
        if final:
            return Verdict(
                now,
                PASS,
                f"error rate {c_rate:.2%} within the cap {policy.error_rate_cap:.2%}",
                "guardrail",
                **figures,
            )
        return Verdict(now, INCONCLUSIVE, "watching", "guardrail", **figures)

    # Errors: a significant increase past the floor fails at any look, even before min_requests.
    p_err = fisher_greater(canary.errors, canary.requests, base.errors, base.requests)
    if p_err < alpha_look and c_rate - b_rate >= policy.min_error_rate_increase:
        return Verdict(
            now,
            FAIL,
            f"error rate {c_rate:.2%} vs baseline {b_rate:.2%} (Fisher p={p_err:.2g} < {alpha_look:.2g})",
            "errors",
            p_value=p_err,
            **figures,
        )
    # Latency: likewise, significant and past both floors.
    enough_latency = (
        sum(c for _, c in _per_bucket(canary.buckets)) > 0
        and sum(c for _, c in _per_bucket(base.buckets)) > 0
    )
    p_lat = mann_whitney_greater(canary.buckets, base.buckets) if enough_latency else 1.0
    floor = max(policy.latency_floor_ms, policy.latency_floor_ratio * b_p50)
    if p_lat < alpha_look and c_p50 - b_p50 >= floor:
        return Verdict(
            now,
            FAIL,
            f"median latency {c_p50:.1f} ms vs baseline {b_p50:.1f} ms "
            f"(+{c_p50 - b_p50:.1f} ms >= {floor:.1f} ms; Mann-Whitney p={p_lat:.2g} "
            f"< {alpha_look:.2g})",
            "latency",
            p_value=p_lat,
            **figures,
        )
    p = min(p_err, p_lat)
    if canary.requests < policy.min_requests or base.requests < policy.min_requests:
        return Verdict(
            now,
            INCONCLUSIVE,
            f"too little data: canary {canary.requests}, baseline "
            f"{base.requests} requests (need {policy.min_requests} each)",
            "data",
            p_value=p,
            **figures,
        )
    if not final:
        return Verdict(
            now, INCONCLUSIVE, "no significant difference so far; baking", "all", p_value=p, **figures
        )
    return Verdict(
        now,
        PASS,
        f"errors {c_rate:.2%} vs {b_rate:.2%} (p={p_err:.2g}), median "
        f"{c_p50:.1f} vs {b_p50:.1f} ms (p={p_lat:.2g}): no significant regression",
        "all",
        p_value=p,
        **figures,
    )
