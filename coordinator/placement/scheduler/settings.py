"""The scheduler's settings: one frozen dataclass, each field documented (``stoker coordinator
--help-settings`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerSettings:
    load_factor: float = 1.25
    """c in the bound ⌈c·(L+1)/N⌉ on the builds one node runs at once."""
    aging_s: float = 120.0
    """A queued request gains one priority level for every this many seconds it waits."""
    tenant_share: float = 0.5
    """While other tenants wait, one tenant holds at most this share of the fleet's slots (at least 1)."""
    warmth_ttl_s: float = 60.0
    """Inventory reports from a node not heard from for this long stop counting as warmth."""
    fetch_bps: float = 100e6
    """Blob-store fetch bandwidth per node until learned from agents' reports (bytes/s)."""
    extract_bps: float = 300e6
    """Decompress-and-write rate until learned (bytes/s)."""
    materialize_bps: float = 2e9
    """Rate of materializing a locally present entry into a workspace (bytes/s)."""
    pull_bps: float = 50e6
    """Rate at which a node pulls and unpacks an image it does not hold, until learned (bytes/s)."""
    build_s: float = 300.0
    """Build duration assumed until learned (per key, then per workspace, then fleet-wide)."""
    default_similarity: float = 0.9
    """Share of an entry assumed unchanged from the older entry under its restore prefix, when the
    entries' sketches cannot tell."""
    ewma_alpha: float = 0.2
    """Weight of each new observation in the learned rates."""
    prewarm_replicas: int = 1
    """How many extra nodes a hot key is prewarmed onto at a time."""

    hot_window_s: float = 900.0
    """Demand for a key counts as recent for this long."""
    hot_builds: int = 3
    """Builds of one key within the window that make it hot."""
    prewarm_cooldown_s: float = 120.0
    """Do not ask the same node to prewarm the same key again within this time."""
    explain_candidates: int = 3
    """How many candidates each decision lists with their estimates."""
    costly_restore_s: float = 8.0
    """A key whose cold restore (fetch and extract) is estimated at least this long is *costly*: it keeps
    a free holder, its replicas are touched as it is used, and cold builds avoid its last free holders."""
    spare_holders: int = 2
    """Free holders a costly key keeps while its builds overlap often (see ``spare_busy``); one otherwise."""
    spare_busy: float = 0.2
    """Expected concurrent builds of a workspace (arrival rate × build time) from which its costly key keeps
    ``spare_holders`` free holders."""
    touch_replicas: int = 8
    """How many of a costly key's holders (first in its rendezvous order) are touched when it is used."""
    cold_candidates: int = 8
    """How many free nodes in the key's rendezvous order a cold build chooses among (by what taking each
    costs costly keys)."""
    guarded_keys: int = 32
    """At most this many costly keys (the most recently used) are looked at when weighing that cost."""
    demand_window_s: float = 900.0
    """Time constant of each workspace's learned arrival rate."""
    max_tracked_keys: int = 100_000
    """At most this many keys' learned build times and recent demand are remembered (least recently
    seen forgotten first); a forgotten key falls back to its workspace's and the fleet's figures."""
    max_warm_candidates: int = 16
    """At most this many holders of one key are estimated per decision (free ones first), so a
    decision never scans a large fleet's whole inventory."""
    two_level_from: int = 256
    """From this many ready nodes on, the rendezvous order has two levels (√N buckets, then nodes) so a
    decision costs about √N hashes instead of N."""
    max_prefix_keys: int = 32
    """At most this many of the newest keys under a restore prefix are looked at per decision."""
    older_free_candidates: int = 3
    """When the first ``max_warm_candidates`` holders of entries under a restore prefix include fewer than
    this many free ones, the holders of older entries under it (of the ``max_prefix_keys`` newest) are looked
    at further, for free ones only, until this many are found."""
    ready_tie_s: float = 0.25
    """Free candidates whose estimated ready times fall in the same slice of this many seconds count as
    equally ready; between them, what taking each costs costly keys, its load and its heat decide. (Waiting
    candidates are compared by their estimates as they are.)"""
    evict_superseded: bool = True
    """When a build of a key finishes on a node, ask the node to evict its older entries under the key's
    restore prefixes: they are superseded there, and under a small disk budget they would otherwise push
    other workspaces' only copies out of the node's LRU order."""
