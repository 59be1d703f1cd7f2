"""The rollout subsystem's settings: the ``[rollouts]`` table of the coordinator's configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NoReturn

from stoker.common.settings import SettingsError

METRICS_PROVIDERS = ("scrape", "prometheus")


@dataclass(frozen=True)
class RolloutSettings:
    canary_percent: float = 5.0
    """Share of a service's instances that get the new version first, in (0, 100); at least one per zone."""
    bake_s: float = 60.0
    """Minimum time the canary serves before it is judged (a rollout may ask for another value)."""
    min_requests: int = 200
    """Requests the canary (and the baseline) must serve before a pass is possible; fewer is inconclusive."""
    post_bake_s: float = 30.0
    """After the surge, how long the all-new fleet is watched (guardrails only) before the rollout
    succeeds."""
    judge_interval_s: float = 5.0
    """How often the canary is checked during the bake (guardrails every tick; statistics this often)."""
    inconclusive_limit: int = 3
    """Inconclusive verdicts in a row (each extends the bake by half a bake) before the rollout pauses."""
    progress_deadline_s: float = 120.0
    """New instances (canary, surge, rollback) must be ready within this long, else the step fails."""
    max_restarts: int = 0
    """Canary restarts tolerated; one more is a crash loop and fails the canary."""
    error_rate_cap: float = 0.10
    """Absolute error-rate guardrail: a canary above it fails without any statistics."""
    alpha: float = 0.01
    """False-alarm budget of the whole sequential comparison (split over all its looks)."""
    min_error_rate_increase: float = 0.002
    """Effect-size floor for errors: the canary's error rate must exceed the baseline's by this much."""
    latency_floor_ms: float = 10.0
    """Effect-size floor for latency: a slower canary fails only when its median is this much slower..."""
    latency_floor_ratio: float = 0.2
    """...and at least this fraction slower than the baseline's median."""
    tick_s: float = 0.5
    """How often the engine observes each running rollout."""
    metrics: str = "scrape"
    """Where canary and baseline figures come from: "scrape" (each instance's /metrics) or "prometheus"."""
    prometheus_url: str = "http://127.0.0.1:9090"
    """Prometheus base URL (metrics = "prometheus")."""
    metrics_timeout_s: float = 3.0
    """Timeout of one metrics scrape or PromQL query."""
    local_dir: str = ""
    """Local target: where instances, logs and the load balancer live. Empty: beside the state file."""
    haproxy_binary: str = "haproxy"
    """Local target: the HAProxy executable (Debian package haproxy; scripts/system_deps.sh installs it)."""
    zones: tuple[str, ...] = ("zone-a", "zone-b")
    """Local target: zones of a service deployed for the first time (a rollout spec may name others)."""
    instances_per_zone: int = 4
    """Local target: instances per zone of a service deployed for the first time."""
    command: tuple[str, ...] = ()
    """Local target: the instance command; {port}, {instance}, {version} are filled in. Empty: the sample
    service."""
    drain_timeout_s: float = 10.0
    """Local target: how long a draining instance may take to finish in-flight requests."""
    stop_grace_s: float = 5.0
    """Local target: after SIGTERM, how long before SIGKILL."""
    kube_context: str = ""
    """Kubernetes target: kubeconfig context; empty uses in-cluster config, else the current context."""
    kube_container_port: int = 8080
    """Kubernetes target: the port of the instances' /metrics (scrape provider)."""
    time_scale: float = 1.0
    """Multiplies every bake, post-bake and pause timeout a rollout asks for (its file or flags): tests and
    demos run real plans faster with a small value. 1 in production."""
    webhook_url_prefixes: tuple[str, ...] = ()
    """URL prefixes a rollout file's webhooks may post to (e.g. "https://hooks.slack.com/services/"); a
    webhook outside them is not called (the rollout's history says so). Empty: none. A rollout file comes
    from a service's repository, so the coordinator posts only where its operator allowed."""
    webhook_attempts: int = 6
    """Attempts per notification before it is dropped (retried with exponential backoff)."""
    webhook_backoff_s: float = 0.5
    """First retry delay of a failed notification; doubles per attempt, at most 30 s."""
    webhook_timeout_s: float = 3.0
    """Timeout of one webhook POST."""

    def __post_init__(self) -> None:
        """Refuse, when the configuration loads, a value that would otherwise fail only later: an unknown
        metrics provider, or a default that every rollout asking for none would be refused for (the spec
        checks of ``machine.validate_spec``, which would blame the request's field)."""
        if self.metrics not in METRICS_PROVIDERS:
            _bad("metrics", f"{self.metrics!r} is neither 'scrape' nor 'prometheus'")
        if not 0 < self.canary_percent < 100:  # NaN fails too
            _bad("canary_percent", f"must be in (0, 100), got {self.canary_percent}")
        for name in ("bake_s", "post_bake_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                _bad(name, f"must be a finite number of seconds, not negative, got {value}")
        if self.min_requests < 0:
            _bad("min_requests", f"must not be negative, got {self.min_requests}")
        if not 0 <= self.instances_per_zone <= 100:
            _bad("instances_per_zone", f"must be in [0, 100], got {self.instances_per_zone}")
        if not (0 < self.time_scale <= 1000):
            _bad("time_scale", f"must be in (0, 1000], got {self.time_scale}")
        if self.webhook_attempts < 1:
            _bad("webhook_attempts", f"must be at least 1, got {self.webhook_attempts}")
        if len(set(self.zones)) != len(self.zones) or any(not z.strip() for z in self.zones):
            _bad("zones", f"must be distinct non-empty names, got {list(self.zones)}")


def _bad(name: str, problem: str) -> NoReturn:
    raise SettingsError(f"setting rollouts.{name}: {problem}")
