"""Build the rollout engine from its settings and the state file (kept out of server.py's wiring)."""

from __future__ import annotations

from pathlib import Path

from stoker.coordinator.core.clock import Clock
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.rollouts.engine import MetricsProvider, RolloutEngine
from stoker.coordinator.rollouts.machine import Spec
from stoker.coordinator.rollouts.metrics_providers import PrometheusMetrics, ScrapeMetrics, provider_for
from stoker.coordinator.rollouts.notify import Notifier
from stoker.coordinator.rollouts.settings import RolloutSettings
from stoker.coordinator.rollouts.store import open_rollout_store


def local_dir(settings: RolloutSettings, state_path: str) -> Path:
    """Where the local target keeps its instances: the setting, else beside the state file."""
    if settings.local_dir:
        return Path(settings.local_dir)
    if state_path == ":memory:":
        return Path("stoker-rollouts")
    state = Path(state_path)
    return state.parent / f"{state.stem}-rollouts"


def build_rollout_engine(
    s: RolloutSettings, state_path: str, clock: Clock, telemetry: CoordinatorMetrics | None = None
) -> RolloutEngine:
    metrics: MetricsProvider
    if s.metrics == "prometheus":
        metrics = PrometheusMetrics(s.prometheus_url, s.metrics_timeout_s)
    else:  # "scrape": RolloutSettings admits no other value
        metrics = ScrapeMetrics(s.metrics_timeout_s)

    def metrics_for(spec: Spec) -> MetricsProvider:
        return provider_for(spec.analysis, s.metrics, s.prometheus_url, s.metrics_timeout_s)

    def local():
        from stoker.coordinator.rollouts.targets.local import LocalTarget

        return LocalTarget(
            local_dir(s, state_path),
            haproxy_binary=s.haproxy_binary,
            command=s.command,
            drain_timeout_s=s.drain_timeout_s,
            stop_grace_s=s.stop_grace_s,
        )

    def kubernetes():
        from stoker.coordinator.rollouts.targets.kubernetes import KubernetesTarget

        return KubernetesTarget.from_settings(s)

    notifier = Notifier(
        allowed_prefixes=tuple(s.webhook_url_prefixes),
        attempts=s.webhook_attempts,
        backoff_s=s.webhook_backoff_s,
        timeout_s=s.webhook_timeout_s,
    )
    return RolloutEngine(
        s,
        open_rollout_store(state_path),
        {"local": local, "kubernetes": kubernetes},
        metrics,
        clock,
        notifier,
        metrics_for,
        telemetry=telemetry,
    )
