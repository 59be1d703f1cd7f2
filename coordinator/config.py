"""The coordinator's settings: defaults, then a file, then ``STOKER_COORDINATOR_*``, then flags.

``stoker coordinator --help-settings`` prints every field with its variable and default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stoker.common import settings
from stoker.coordinator.scheduler import SchedulerSettings

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
    gc_freeze_every_s: float = 10.0
    """How often what survived the young garbage collections is frozen (never walked again by them)."""
    gc_full_every_s: float = 3600.0
    """How often a full garbage collection runs (at 1,000 nodes x 1,000 keys a pause of ~0.2 s soon after
    start, 0.54 s after an hour of full load: bench/load.py). Cyclic garbage that outlived a young collection
    is freed only then."""


@dataclass(frozen=True)
class SecuritySettings:
    tls_cert: str = ""
    """PEM certificate (chain) of the coordinator. With tls_key, every gRPC port speaks TLS."""
    tls_key: str = ""
    """PEM private key of tls_cert."""
    client_ca: str = ""
    """PEM CA that signs agents' client certificates (their common name is the node name).
    Needs agent_listen: agents get a port of their own that requires mutual TLS."""
    agent_listen: str = ""
    """host:port where agents connect with mutual TLS. Empty: agents use server.listen (open mode)."""
    tokens_file: str = ""
    """JSON file of bearer tokens for CI and operators: {"tokens": [{"name", "role", "sha256"}]}
    (see `stoker token`). Without it (and without client_ca) the coordinator is open."""
    allow_insecure: bool = False
    """Start on a non-loopback address without TLS and authentication (never do this in production)."""


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
    snapshot_intake: int = 32
    """How many streams may be reading and applying their first message (the node's whole inventory) at
    once. When a fleet connects together (the coordinator starting or restarting) the others wait their
    turn, so that a thousand snapshots are not all in memory at the same time."""
    first_message_s: float = 30.0
    """How long a stream has to send its first message; one that takes longer is ended (it would hold
    one of the ``snapshot_intake`` turns)."""


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
class RolloutSettings:
    canary_percent: float = 5.0
    """Share of a service's instances that get the new version first, in (0, 100); at least one per zone."""
    bake_s: float = 60.0
    """Minimum time the canary serves before it is judged (a rollout may ask for another value)."""
    min_requests: int = 200
    """Requests the canary (and the baseline) must serve before a pass is possible; fewer is inconclusive."""
    post_bake_s: float = 30.0
    """After the surge, how long the all-new fleet is watched (guardrails only) before the rollout succeeds."""
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
    """Local target: the instance command; {port}, {instance}, {version} are filled in. Empty: the sample service."""
    drain_timeout_s: float = 10.0
    """Local target: how long a draining instance may take to finish in-flight requests."""
    stop_grace_s: float = 5.0
    """Local target: after SIGTERM, how long before SIGKILL."""
    kube_context: str = ""
    """Kubernetes target: kubeconfig context; empty uses in-cluster config, else the current context."""
    kube_container_port: int = 8080
    """Kubernetes target: the port of the instances' /metrics (scrape provider)."""


@dataclass(frozen=True)
class CoordinatorConfig:
    server: ServerSettings = field(default_factory=ServerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    state: StateSettings = field(default_factory=StateSettings)
    nodes: NodeSettings = field(default_factory=NodeSettings)
    builds: BuildSettings = field(default_factory=BuildSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    rollouts: RolloutSettings = field(default_factory=RolloutSettings)
    log: LogSettings = field(default_factory=LogSettings)


def load(file: str | None = None, overrides: dict | None = None, environ=None) -> CoordinatorConfig:
    return settings.load(CoordinatorConfig, prefix=ENV_PREFIX, environ=environ, file=file, overrides=overrides)
