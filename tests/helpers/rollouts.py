"""Fixtures for the rollout tests: a coordinator process with short bakes, and the real system binaries.

HAProxy and Prometheus come from Debian packages; a test that needs one fails (never skips) when it is
missing, saying that ``scripts/system_deps.sh`` installs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stoker.demo import rollouts as demo_rollouts

FAST = {
    "bake_s": 4.0,
    "post_bake_s": 1.5,
    "judge_interval_s": 1.0,
    "min_requests": 60,
    "tick_s": 0.2,
    "progress_deadline_s": 8.0,
    "inconclusive_limit": 2,
    "drain_timeout_s": 5.0,
    "stop_grace_s": 1.5,
    "instances_per_zone": 2,
}


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run scripts/system_deps.sh (installs the Debian packages haproxy "
            "and prometheus), or ./scripts/test.sh, which runs it",
            pytrace=False,
        )
    return path


class RolloutFleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator = None

    def start(self, **overrides):
        settings = {**FAST, **overrides}
        self.coordinator = demo_rollouts.start_coordinator(self.root, settings)
        return self.coordinator

    @property
    def local_dir(self) -> Path:
        return self.root / "coordinator-rollouts"

    def stub(self):
        return demo_rollouts.stub(self.coordinator.address)

    def stop(self) -> None:
        if self.coordinator is not None:
            self.coordinator.kill()
        demo_rollouts.teardown_under(self.root)


@pytest.fixture
def haproxy() -> str:
    return require_binary("haproxy")


@pytest.fixture
def prometheus_binary() -> str:
    return require_binary("prometheus")


@pytest.fixture
def rollout_fleet(tmp_path, haproxy):
    fleet = RolloutFleet(tmp_path)
    yield fleet
    fleet.stop()
