"""The coordinator's Prometheus metrics, on a registry passed in (tests use a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CoordinatorMetrics:
    # Long on purpose: one declaration per metric, so every name the coordinator exports is in one place.
    def __init__(self, registry: CollectorRegistry) -> None:
        self.builds_submitted = Counter(
            "stoker_coordinator_builds_submitted_total", "Builds accepted by SubmitBuild.", registry=registry
        )
        self.builds_finished = Counter(
            "stoker_coordinator_builds_finished_total",
            "Builds that reached a final state.",
            ["state"],
            registry=registry,
        )
        self.builds_requeued = Counter(
            "stoker_coordinator_builds_requeued_total",
            "Attempts requeued after their node was lost.",
            registry=registry,
        )
        self.placements = Counter(
            "stoker_coordinator_placements_total",
            "Builds and leases placed, by expected warmth.",
            ["warmth"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "stoker_coordinator_cache_hits_total",
            "Finished builds, and placement leases' restores, by the warmth their agent found.",
            ["warmth"],
            registry=registry,
        )
        self.cache_bytes = Counter(
            "stoker_coordinator_cache_bytes_total",
            "Cache bytes of finished builds: restored from a local entry, or fetched from the blob store.",
            ["source"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "stoker_coordinator_placement_decision_seconds",
            "Time the scheduler took per decision.",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "stoker_coordinator_queue_depth",
            "Builds and placement requests waiting for a slot.",
            registry=registry,
        )
        self.nodes = Gauge("stoker_coordinator_nodes", "Nodes by state.", ["state"], registry=registry)
        self.nodes_lost = Counter(
            "stoker_coordinator_nodes_lost_total",
            "Nodes whose stream stayed closed past the lease TTL (their builds were requeued). Lost nodes "
            "stay in the nodes gauge's lost state until the coordinator restarts; this counts each loss.",
            registry=registry,
        )
        self.claims_uncorroborated = Gauge(
            "stoker_coordinator_node_claims_uncorroborated",
            "Cache entries nodes report holding that the coordinator could not corroborate (no build it "
            "assigned restored or saved them there, no prewarm or lease asked for them): they count for no "
            "placement. An honest node's new entry is here for the moment between its save and its build's "
            "end; more, for longer, is a node reporting what it cannot have (inventory: "
            "uncorroborated_entries).",
            registry=registry,
        )
        self.nodes_flagged = Gauge(
            "stoker_coordinator_nodes_flagged",
            "Nodes whose claims the coordinator does not take as sent: with uncorroborated entries "
            "(entries), registered with more slots than nodes.max_slots (slots).",
            ["reason"],
            registry=registry,
        )
        self.slots = Gauge(
            "stoker_coordinator_slots",
            "Build slots of ready nodes: all of them (total), and those a build or lease holds (busy).",
            ["state"],
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "stoker_coordinator_queue_wait_seconds",
            "Time from submission to placement of each build and placement request (a requeued build's "
            "wait counts from its first submission, as its timings' queued_s does).",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.time_to_ready_seconds = Histogram(
            "stoker_coordinator_time_to_ready_seconds",
            "Time from submission until a finished build's command could start (queued + image pull + "
            "cache restore), by the warmth its agent found.",
            ["warmth"],
            buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "stoker_coordinator_build_restore_seconds",
            "Time a finished build's agent (or a placement lease's, for its runner) spent restoring its "
            "cache, by the warmth it found.",
            ["warmth"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.run_seconds = Histogram(
            "stoker_coordinator_build_run_seconds",
            "Time a finished build's command ran, by the warmth its agent found.",
            ["warmth"],
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=registry,
        )
        self.lease_reports = Counter(
            "stoker_coordinator_lease_reports_total",
            "What agents reported doing for runners under placement leases: restored, saved (or a save that "
            "wrote nothing), and refused (a report on a lease the coordinator did not grant to that node).",
            ["kind"],
            registry=registry,
        )
        for kind in ("restored", "saved", "refused"):
            self.lease_reports.labels(kind)
        self.cache_commands = Counter(
            "stoker_coordinator_cache_commands_total",
            "Cache commands sent to agents: prewarm (fetch ahead of need, or touch a held entry to keep it "
            "in the node's LRU order), evict (a superseded entry), and dropped (advice not queued for a "
            "stream already that far behind).",
            ["kind"],
            registry=registry,
        )
        for kind in ("prewarm", "evict", "dropped"):  # each kind exported from the start, at 0
            self.cache_commands.labels(kind)
        self.outbox_commands = Gauge(
            "stoker_coordinator_outbox_commands",
            "Commands queued for agents' streams and not yet sent, all nodes together.",
            registry=registry,
        )
        self.scheduler_tracked = Gauge(
            "stoker_coordinator_scheduler_tracked",
            "Entries the scheduler remembers, by kind (running placements and builds, per-key demand, "
            "workspace arrival rates, recent prewarms, keys being replicated, learned build times); each is "
            "bounded.",
            ["kind"],
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "stoker_coordinator_rpc_seconds",
            "Time the coordinator spent handling each unary RPC, by its status code (refusals included).",
            ["method", "code"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.loop_lag_seconds = Histogram(
            "stoker_coordinator_loop_lag_seconds",
            "How late the event loop ran a 50 ms timer (time a request may wait before its handler starts).",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.gc_pause_seconds = Histogram(
            "stoker_coordinator_gc_pause_seconds",
            "How long each run of Python's cyclic garbage collector stopped the process, by generation.",
            ["generation"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.gc_unreachable = Counter(
            "stoker_coordinator_gc_unreachable_objects_total",
            "Objects the cyclic garbage collector found unreachable (garbage in reference cycles), "
            "by generation.",
            ["generation"],
            registry=registry,
        )
        self.rollouts_active = Gauge(
            "stoker_coordinator_rollouts_active",
            "Rollouts not yet ended, by phase.",
            ["phase"],
            registry=registry,
        )
        self.rollout_verdicts = Counter(
            "stoker_coordinator_rollout_verdicts_total",
            "Final judgments of rollouts' canaries and bakes (operators' promotions and aborts included): "
            "pass, fail or inconclusive. Which check decided is in each rollout's status.",
            ["result"],
            registry=registry,
        )
        self.rollouts_ended = Counter(
            "stoker_coordinator_rollouts_ended_total",
            "Rollouts that reached an end: succeeded, rolled_back or failed.",
            ["phase"],
            registry=registry,
        )
        self.agent_messages = Counter(
            "stoker_coordinator_agent_messages_total",
            "Messages received on agents' streams.",
            ["kind"],
            registry=registry,
        )
