"""The coordinator's settings: defaults, then a file, then ``STOKER_COORDINATOR_*``, then flags.

``stoker coordinator --help-settings`` prints every field with its variable and default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stoker.common import settings
from stoker.coordinator.placement.domain import PROCESS_NODES
from stoker.coordinator.placement.scheduler import SchedulerSettings
from stoker.coordinator.rollouts.settings import RolloutSettings

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
    """How often a full garbage collection runs. Cyclic garbage that outlived a young collection is freed only
    then; each one pauses the process (its length at fleet scale: bench/RESULTS.md, "Coordinator load")."""


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
    max_slots: int = 32
    """The most builds the coordinator sends one node at once, whatever slots the node registers with (a
    node registering with more is bounded to this and flagged in the inventory). 0: no bound."""
    check_claims: bool = True
    """Count a node's reported cache entries for placement only as far as the coordinator can corroborate
    them: entries its own builds (the ones assigned to it) restored or saved there, and entries it was asked
    to prewarm or granted a lease for (docs/security.md, "Node claims"). The rest make no node warm and
    are flagged. false: every report counts as sent (a fleet whose every node is trusted; bench/load.py,
    whose simulated agents run no builds to corroborate their entries)."""
    claim_window_s: float = 3600.0
    """How long after a prewarm is asked (or a lease ends) the node's claim of its key is corroborated."""


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
    max_cpus: float = 64.0
    """Most CPU cores a build may ask for (spec.limits.cpus); more is refused at submit. Keep it at most the
    agents' own maximum (agent setting build.max_cpus), which the node enforces again."""
    max_memory_bytes: int = 256 * 1024**3
    """Most memory a build may ask for (spec.limits.memory_bytes)."""
    max_pids: int = 65536
    """Most processes and threads a build may ask for (spec.limits.pids)."""
    max_output_bytes: int = 1024**3
    """Most output a build may ask to write (spec.limits.output_bytes)."""
    max_disk_bytes: int = 1024**4
    """Most workspace bytes a build may ask for (spec.limits.disk_bytes)."""
    history_days: float = 30.0
    """Finished builds (their records, events and output) are kept this long, then deleted. 0: forever."""
    max_log_bytes: int = 16 * 1024 * 1024
    """Output of one build the coordinator keeps (in memory while it runs, in its database after) and
    streams. Past it, lines are counted, not kept; the last max_log_tail_bytes of them are sent at the end
    with a note saying how much was dropped, and the build's message says so."""
    max_log_tail_bytes: int = 64 * 1024
    """Of the output past max_log_bytes, how much of its end is kept (the end is where a failure shows)."""
    max_queued_per_principal: int = 1000
    """Most builds and placements one caller (a token's principal) may have waiting at once; past it
    SubmitBuild and PlaceBuild answer RESOURCE_EXHAUSTED, so one token cannot fill the coordinator's memory
    and database with queued work. Idempotent retries of a queued build still answer. 0: no bound (and
    callers without a token are never bounded)."""
    process_nodes: str = "when_asked"
    """Which builds may run on nodes whose executor is ``process`` (no sandbox: the build shares the agent's
    uid and files): ``never``; ``when_asked``: builds whose spec sets allow_unsandboxed (the caller vouches
    for the code); ``always``: any build, as on a trusted single-tenant fleet. A build naming an image, a
    CPU, memory or pids limit or network none never goes to such a node: only a sandbox keeps those."""

    def __post_init__(self) -> None:
        if self.process_nodes not in PROCESS_NODES:
            raise settings.SettingsError(
                f"setting builds.process_nodes: {self.process_nodes!r} is not one of "
                f"{', '.join(PROCESS_NODES)}"
            )


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    """debug, info, warning or error."""
    format: str = "auto"
    """text, json, or auto (json in a cluster, text at a terminal)."""


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
    return settings.load(
        CoordinatorConfig, prefix=ENV_PREFIX, environ=environ, file=file, overrides=overrides
    )
