"""Build the rollout engine from the coordinator's settings (kept out of server.py's wiring)."""

from __future__ import annotations

from pathlib import Path

from stoker.coordinator.config import CoordinatorConfig
from stoker.coordinator.domain import Clock
from stoker.coordinator.errors import InvalidArgument
from stoker.coordinator.metrics_providers import PrometheusMetrics, ScrapeMetrics
from stoker.coordinator.rollout_engine import RolloutEngine
from stoker.coordinator.rollout_store import open_rollout_store


def local_dir(config: CoordinatorConfig) -> Path:
    """Where the local target keeps its instances: the setting, else beside the state file."""
    if config.rollouts.local_dir:
        return Path(config.rollouts.local_dir)
    if config.state.path == ":memory:":
        return Path("stoker-rollouts")
    state = Path(config.state.path)
    return state.parent / f"{state.stem}-rollouts"


def build_rollout_engine(config: CoordinatorConfig, clock: Clock) -> RolloutEngine:
    s = config.rollouts
    if s.metrics == "scrape":
        metrics = ScrapeMetrics(s.metrics_timeout_s)
    elif s.metrics == "prometheus":
        metrics = PrometheusMetrics(s.prometheus_url, s.metrics_timeout_s)
    else:
        raise InvalidArgument(f"rollouts.metrics: {s.metrics!r} is neither 'scrape' nor 'prometheus'")

    def local():
        from stoker.coordinator.target_local import LocalTarget

        return LocalTarget(local_dir(config), haproxy_binary=s.haproxy_binary, command=s.command,
                           drain_timeout_s=s.drain_timeout_s, stop_grace_s=s.stop_grace_s)

    def kubernetes():
        from stoker.coordinator.target_kubernetes import KubernetesTarget

        return KubernetesTarget.from_settings(s)

    return RolloutEngine(s, open_rollout_store(config.state.path), {"local": local, "kubernetes": kubernetes},
                         metrics, clock)
