"""The coordinator's settings: defaults, then a file, then ``STOKER_COORDINATOR_*``, then flags.

``stoker coordinator --help-settings`` prints every field with its variable and default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stoker.common import settings

ENV_PREFIX = "STOKER_COORDINATOR_"


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:7070"
    """host:port of the gRPC endpoint (agents, CI, operators). Port 0 picks a free port."""
    metrics_listen: str = "127.0.0.1:9100"
    """host:port of the Prometheus /metrics endpoint. Port 0 picks a free port."""
    grace_s: float = 10.0
    """On SIGTERM: how long in-flight RPCs may take to finish before the server stops."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest gRPC message accepted (inventory snapshots of big nodes are the largest)."""


@dataclass(frozen=True)
class StateSettings:
    path: str = "stoker-coordinator.db"
    """SQLite file for builds and their event history. ":memory:" keeps nothing across restarts."""


@dataclass(frozen=True)
class NodeSettings:
    lease_ttl_s: float = 15.0
    """A node whose stream stays gone this long is lost; its running builds are requeued."""
    heartbeat_interval_s: float = 2.0
    """How often agents send heartbeats (told to them at registration)."""


@dataclass(frozen=True)
class BuildSettings:
    default_timeout_s: float = 3600.0
    """Timeout of builds that set none."""
    max_timeout_s: float = 24 * 3600.0
    """Longest timeout a build may ask for."""
    placement_lease_s: float = 600.0
    """How long a placement-only lease holds its slot unless released."""
    max_attempts: int = 3
    """How often a build is run before it fails for good when its nodes keep getting lost."""
    max_files_bytes: int = 4 * 1024 * 1024
    """Largest total size of a build's inline input files."""


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    """debug, info, warning or error."""
    format: str = "auto"
    """text, json, or auto (json in a cluster, text at a terminal)."""


@dataclass(frozen=True)
class CoordinatorConfig:
    server: ServerSettings = field(default_factory=ServerSettings)
    state: StateSettings = field(default_factory=StateSettings)
    nodes: NodeSettings = field(default_factory=NodeSettings)
    builds: BuildSettings = field(default_factory=BuildSettings)
    log: LogSettings = field(default_factory=LogSettings)


def load(file: str | None = None, overrides: dict | None = None, environ=None) -> CoordinatorConfig:
    return settings.load(CoordinatorConfig, prefix=ENV_PREFIX, environ=environ, file=file, overrides=overrides)
