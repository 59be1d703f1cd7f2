"""The agent's settings: defaults, then a file, then ``STOKER_AGENT_*`` variables, then flags.

Every field is documented here; ``stoker agent --help-settings`` prints them with their variables.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stoker.common import settings

ENV_PREFIX = "STOKER_AGENT_"


@dataclass(frozen=True)
class NodeSettings:
    name: str = ""
    """Unique node name. Empty: the Kubernetes node name when in a cluster, else the host name."""
    zone: str = ""
    """Failure domain. Empty: the node's topology.kubernetes.io/zone label when in a cluster."""
    slots: int = 2
    """How many builds run at once on this node."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels builds can constrain on, as k=v,k2=v2."""
    instance_type: str = ""
    """Instance type, informational. Read from the Node in a cluster."""
    cpus: int = 0
    """Allocatable CPU cores, informational. 0: from the Node in a cluster, else os.cpu_count()."""
    memory_bytes: int = 0
    """Allocatable memory, informational. 0: from the Node in a cluster."""
    kubernetes: str = "auto"
    """Read zone, instance type, resources and taints from this node's Kubernetes Node object:
    auto (when KUBERNETES_SERVICE_HOST is set), on, or off."""


@dataclass(frozen=True)
class CoordinatorLink:
    address: str = "127.0.0.1:7070"
    """host:port of the coordinator's gRPC endpoint (on Kubernetes, its Service DNS name)."""
    reconnect_initial_s: float = 0.2
    """First delay before reconnecting after the stream drops; doubles up to reconnect_max_s, with jitter."""
    reconnect_max_s: float = 10.0
    """Longest delay between reconnection attempts."""
    tls_ca: str = ""
    """PEM CA that signed the coordinator's certificate. Set: the agent connects over TLS."""
    tls_cert: str = ""
    """PEM client certificate whose common name is this node's name (mutual TLS)."""
    tls_key: str = ""
    """PEM private key of tls_cert."""


@dataclass(frozen=True)
class CacheSettings:
    dir: str = "/var/lib/stoker/cache"
    """The node's cache store (on its SSD). Entries, content and staging directories live here."""
    budget_bytes: int = 50 * 1024**3
    """Bytes the store may use; least recently used entries are evicted beyond it."""
    tenant_budget_bytes: int = 0
    """Bytes of the store each tenant keeps against the others (0: none, one LRU for all). When a
    restore or save of a tenant's entry needs room, that tenant's own entries go first; another tenant's
    entries go only while that tenant holds more than this. A tenant's entries are the keys in its scopes
    (``~TENANT/...``); keys without a scope belong to no tenant and are never protected. Keep the sum
    over the tenants a node serves below ``budget_bytes``."""
    blobs: str = "file:///var/lib/stoker/blobs"
    """The shared blob store: file:///path for a local directory, s3://bucket/prefix for S3."""
    s3_endpoint_url: str = ""
    """S3 endpoint for S3-compatible stores (MinIO, SeaweedFS, R2). Empty: AWS."""
    s3_region: str = ""
    """S3 region. Empty: from the usual AWS chain."""
    workers: int = 0
    """Threads for decompressing and writing files. 0: one per core."""
    syncfs: bool = False
    """Call syncfs once before publishing a restored entry (no per-file fsync either way)."""
    ready_trees: int = 1
    """Entries kept also unpacked as a *ready tree*, made in the background at nice 19 after a restore or
    save: the next restore of that key is a rename, and one of a newer key under the same prefix writes
    only what changed. Each costs the entry's unpacked size on disk; 0 turns them off."""
    writer: str = "auto"
    """Which code writes restored files: compiled (agent/cache/_fastio.c, on threads with the GIL released),
    python-processes (the Python writer, forking workers - 1 helpers for each restore), python-threads (the
    Python writer on threads), or auto (compiled where it is built, else python-processes). The old
    STOKER_CACHE_WRITER=python still selects python-processes."""
    local_socket: str = "/var/lib/stoker/run/cache.sock"
    """Unix socket on which runners on this node ask the agent to restore and save their workspace's cache
    under a placement lease (placement-only mode: the LocalCache service, ``stoker lease restore/save``).
    Mode 0666: the lease's secret, which only the holder of the placement has, is the authorization; no
    network port. Under the agent's data directory by default: on Kubernetes the agent and the runner pods
    share that one hostPath. Empty: not served."""
    local_workspace_root: str = "/var/lib/stoker/runners"
    """Runners' workspaces must be directories beneath it, reached through no symlink (on Kubernetes, the
    runner pods' hostPath work directory). Restored files are given to the workspace directory's owner. On
    the cache's filesystem, a warm restore moves the entry's ready tree into the workspace (a rename);
    elsewhere it writes the files."""


@dataclass(frozen=True)
class BuildSettings:
    work_dir: str = "/var/lib/stoker/work"
    """Where fresh build workspaces are created (same filesystem as the cache for cheap materializing)."""
    default_timeout_s: float = 3600.0
    """Timeout for builds that do not set one."""
    kill_grace_s: float = 5.0
    """After SIGTERM to a build's process group, how long before SIGKILL."""
    keep_workspaces: bool = False
    """Keep workspaces after builds finish (for debugging)."""
    pass_env: tuple[str, ...] = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")
    """Variables of the agent's own environment a build inherits (comma-separated). Nothing else
    passes: the agent's credentials (for example AWS_* for the blob store) stay out of builds."""
    executor: str = "auto"
    """What runs a build's command: ``podman`` (each build in its own container; settings under
    ``podman``), ``process`` (a plain child process of the agent, NOT isolated: trusted nodes only), or
    ``auto``: podman wherever it can run, else process with a warning saying why."""
    default_image: str = "docker.io/library/debian:bookworm-slim"
    """OCI image a build runs in when it names none (podman executor)."""
    cpus: float = 0.0
    """CPU cores one build may use (podman executor). 0: no limit. Like the three below, it is both the
    limit of a build that asks for none and the most a build may ask for (spec.limits)."""
    memory_bytes: int = 0
    """Memory one build may use, tmpfs /tmp and HOME included (podman executor). 0: no limit."""
    pids: int = 4096
    """Processes and threads one build may have at once (podman executor). 0: no limit."""
    output_bytes: int = 0
    """Bytes of stdout+stderr a build may write before it is stopped. 0: no limit."""
    disk_bytes: int = 0
    """Bytes a build's workspace may hold (restored cache included) before it is stopped. 0: no limit."""
    network: str = "default"
    """Network of builds: ``default`` (podman's own network) or ``none`` (loopback only)."""


@dataclass(frozen=True)
class PodmanSettings:
    binary: str = "podman"
    """The podman command (Debian package podman)."""
    dir: str = "/var/lib/stoker/podman"
    """podman's image and container storage (--root) and run state (--runroot) for the agent's builds,
    apart from the host's own podman storage. Put it on the node's SSD."""
    runtime: str = "auto"
    """OCI runtime: ``auto`` (runc on cgroup v1/hybrid hosts, where crun refuses; else podman's
    default), ``runc`` or ``crun``."""
    uid_base: int = 200000
    """First host uid (and gid) of the range a build's user namespace maps onto; nothing of the agent's
    may be owned by an id in the range."""
    uid_count: int = 65536
    """Size of that range."""
    nofile: int = 16384
    """Open-file limit inside builds; lowered to the agent's own hard limit when above it."""
    kill_grace_s: float = 5.0
    """After a build's container gets SIGTERM (cancel, timeout), how long before SIGKILL."""
    insecure_registries: tuple[str, ...] = ()
    """Registries (host:port) pulled over plain HTTP, for a local registry (comma-separated). The host's
    /etc/containers/registries.conf.d applies as well."""
    auth_file: str = ""
    """Registry credentials for private images (podman's auth.json format; a mounted Secret on
    Kubernetes). Builds never see it."""
    pull_timeout_s: float = 900.0
    """Longest an image pull may take."""
    image_budget_bytes: int = 20 * 1024**3
    """Most bytes the build images may take in podman's storage: past it, the least recently used images no
    build runs in are removed after a build. 0: no budget."""
    network_subnet: str = "10.89.0.0/24"
    """Subnet of the builds' own network (a build's network "default"): a bridge (stoker0) the agent creates
    for its builds. Builds on it reach the internet, but not this machine: the agent drops their packets to
    any of the machine's own addresses (iptables INPUT), the agent's ports included, and to
    network_blocked."""
    network_blocked: tuple[str, ...] = ("169.254.0.0/16",)
    """Further destinations builds may not reach (comma-separated CIDRs): link-local by default (a cloud's
    instance metadata service, which hands out the node's credentials). On Kubernetes add the node's IP and
    the cluster's pod and service ranges."""
    network_guard: bool = True
    """Install those iptables rules at start (they need iptables and CAP_NET_ADMIN). Off: builds on network
    "default" can reach this machine's services; only for nodes whose network is guarded otherwise."""


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:7071"
    """Where the agent serves grpc.health.v1 and reflection (Kubernetes probes)."""
    metrics_listen: str = "127.0.0.1:9101"
    """Where the agent serves Prometheus metrics (/metrics). Port 0 picks a free port."""
    heartbeat_interval_s: float = 0.0
    """Heartbeat interval. 0: what the coordinator asks for at registration."""
    executor_threads: int = 8
    """Threads for blocking work (cache I/O, blob store calls)."""
    tls_cert: str = ""
    """PEM certificate for the agent's own gRPC port (health). Note: Kubernetes gRPC probes do not speak
    TLS; with this set, probe with grpc_health_probe -tls or an exec probe."""
    tls_key: str = ""
    """PEM private key of tls_cert."""


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    """debug, info, warning or error."""
    format: str = "auto"
    """text, json, or auto (json in a cluster, text at a terminal)."""


@dataclass(frozen=True)
class AgentConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    coordinator: CoordinatorLink = field(default_factory=CoordinatorLink)
    cache: CacheSettings = field(default_factory=CacheSettings)
    build: BuildSettings = field(default_factory=BuildSettings)
    podman: PodmanSettings = field(default_factory=PodmanSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    log: LogSettings = field(default_factory=LogSettings)


LEGACY_WRITER_VARIABLE = "STOKER_CACHE_WRITER"
"""Before cache.writer existed, ``STOKER_CACHE_WRITER=python`` chose the Python writer (forked processes)."""


def load(
    file: str | None = None, overrides: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    environ = os.environ if environ is None else environ
    writer_variable = f"{ENV_PREFIX}CACHE_WRITER"
    if environ.get(LEGACY_WRITER_VARIABLE) == "python" and writer_variable not in environ:
        environ = {**environ, writer_variable: "python-processes"}
    return settings.load(AgentConfig, prefix=ENV_PREFIX, environ=environ, file=file, overrides=overrides)


in_cluster = settings.in_cluster


def default_node_name() -> str:
    return socket.gethostname()


def cache_root(config: AgentConfig) -> Path:
    return Path(config.cache.dir)
