"""Wiring: build the coordinator's parts from its settings and serve them.

``create_server(config, ...)`` returns a started-ready :class:`Coordinator` whose ``port`` is known
(bind to port 0 in tests); ``serve(config)`` runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry

from stoker.common.serving import (
    GRPC_SERVER_OPTIONS,
    MetricsServer,
    add_health_and_reflection,
    add_port,
    is_loopback,
    metrics_registry,
    set_serving,
    write_ready_file,
)
from stoker.coordinator.config import CoordinatorConfig
from stoker.coordinator.core.clock import Clock, SystemClock
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.core.state import MemoryStateStore, SqliteStateStore, StateStore
from stoker.coordinator.placement.build_queue import BuildQueue
from stoker.coordinator.placement.claims import ClaimChecker
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.placement.scheduler import Scheduler
from stoker.coordinator.rollouts.engine import RolloutEngine
from stoker.coordinator.rollouts.wiring import build_rollout_engine
from stoker.coordinator.rpc.agents import AgentGatewayServicer
from stoker.coordinator.rpc.auth import Authenticator, AuthInterceptor, load_tokens, server_credentials
from stoker.coordinator.rpc.builds import BuildsServicer
from stoker.coordinator.rpc.history import HistoryServicer
from stoker.coordinator.rpc.inventory import InventoryServicer
from stoker.coordinator.rpc.rollouts import RolloutsServicer
from stoker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    build_pb2,
    build_pb2_grpc,
    history_pb2,
    history_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
)

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Settings that would make the coordinator unsafe or unable to work."""


SERVICE_NAMES = [
    agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"].full_name,
    build_pb2.DESCRIPTOR.services_by_name["Builds"].full_name,
    inventory_pb2.DESCRIPTOR.services_by_name["Inventory"].full_name,
    history_pb2.DESCRIPTOR.services_by_name["History"].full_name,
    rollout_pb2.DESCRIPTOR.services_by_name["Rollouts"].full_name,
]

TICK_S = 0.5


class GcPauses:
    """Times each run of the cyclic garbage collector (a ``gc.callbacks`` hook).

    The hook only appends to a list: it runs inside whatever allocation triggered the collection, where
    taking a metric's lock could deadlock. The loop-lag probe moves the pauses into the histogram."""

    def __init__(self) -> None:
        self._started = 0.0
        self.pending: list[tuple[int, float, int]] = []
        """(generation, seconds, unreachable objects found) per run not yet drained."""

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pending.append(
                (
                    info["generation"],
                    time.perf_counter() - self._started,
                    info["collected"] + info["uncollectable"],
                )
            )

    def drain(self) -> list[tuple[int, float, int]]:
        pauses, self.pending = self.pending, []
        return pauses


class GcPolicy:
    """Keeps the cyclic garbage collector's long passes off the serving path (the coordinator process only).

    At fleet scale the inventory once held a million named tuples that CPython tracks for life, so every
    automatic full collection walked them all and stopped the process long enough to dominate the placement
    p99; entries are now exact tuples the collector stops tracking (see ``EntryRecord``). And each
    generation-1 collection walked every object that had survived the young collections since the last one,
    every few seconds under load. (The pauses, measured: bench/RESULTS.md, "Coordinator load".) So:

    - automatic collections are limited to generation 0 (thresholds 700 / 10^6 / 10^6): none walks more
      than the objects allocated since the previous one;
    - every ``freeze_every_s`` what survived is frozen (``gc.freeze``: moved to the permanent generation
      without walking it; reference counting still frees those objects when they are released, so entries
      replaced by deltas go as before);
    - cyclic garbage that had survived a young collection
      waits for the full collection every ``full_every_s`` (once an hour by default).

    Tests do not run it: it changes process-wide state."""

    def __init__(self, freeze_every_s: float = 10.0, full_every_s: float = 3600.0) -> None:
        self.freeze_every_s = freeze_every_s
        self.full_every_s = full_every_s
        self._last_full = time.monotonic()

    THRESHOLDS = (700, 1_000_000, 1_000_000)

    def step(self) -> str:
        """One round: "full" (unfreeze everything and collect it all) when due, else "freeze" (nothing is
        walked); then freeze what is alive."""
        if time.monotonic() - self._last_full >= self.full_every_s:
            gc.unfreeze()
            began = time.monotonic()
            found = gc.collect()
            self._last_full = time.monotonic()
            log.info(
                "full garbage collection: %d unreachable objects, %.0f ms",
                found,
                1000 * (self._last_full - began),
            )
            done = "full"
        else:
            done = "freeze"
        gc.freeze()
        return done

    async def run(self) -> None:
        gc.set_threshold(*self.THRESHOLDS)
        while True:
            await asyncio.sleep(self.freeze_every_s)
            self.step()


@dataclass
class Coordinator:
    config: CoordinatorConfig
    server: grpc.aio.Server
    port: int
    metrics_server: MetricsServer
    builds: BuildQueue
    registry: NodeRegistry
    inventory: InventoryIndex
    store: StateStore
    health: object
    builds_metrics: CoordinatorMetrics
    rollouts: RolloutEngine | None = None
    agent_port: int = 0
    claims: ClaimChecker | None = None
    """What nodes report goes through it (``placement.claims``)."""
    _lag_probe: asyncio.Task | None = None
    _ticker: asyncio.Task | None = None
    _gc_pauses: GcPauses = field(default_factory=GcPauses)

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port

    async def start(self) -> None:
        await self.server.start()
        self.metrics_server.start()
        await set_serving(self.health, SERVICE_NAMES, True)
        self._ticker = asyncio.create_task(self._tick_forever())
        gc.callbacks.append(self._gc_pauses)
        self._lag_probe = asyncio.create_task(self._measure_loop_lag())
        if self.rollouts is not None:
            self.rollouts.recover()
        log.info("coordinator serving gRPC on port %d, metrics on port %d", self.port, self.metrics_port)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.builds.tick()
            except Exception:
                log.exception("periodic tick failed")

    async def _measure_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.05
            await asyncio.sleep(0.05)
            self.builds_metrics.loop_lag_seconds.observe(max(0.0, loop.time() - due))
            for generation, seconds, found in self._gc_pauses.drain():
                self.builds_metrics.gc_pause_seconds.labels(str(generation)).observe(seconds)
                self.builds_metrics.gc_unreachable.labels(str(generation)).inc(found)

    async def stop(self, grace_s: float | None = None) -> None:
        await set_serving(self.health, SERVICE_NAMES, False)
        if self._ticker is not None:
            self._ticker.cancel()
        if self._lag_probe is not None:
            self._lag_probe.cancel()
        if self._gc_pauses in gc.callbacks:
            gc.callbacks.remove(self._gc_pauses)
        if self.rollouts is not None:
            await self.rollouts.close()
        for link in list(self.builds.links().values()):
            link.close()
        ended = self.builds.close_streams()
        if ended:
            log.info("ended %d open build streams with UNAVAILABLE: their clients reattach", ended)
        await self.server.stop(self.config.server.grace_s if grace_s is None else grace_s)
        self.metrics_server.stop()
        self.store.close()
        if self.rollouts is not None:
            self.rollouts.store.close()


def open_store(config: CoordinatorConfig) -> StateStore:
    if config.state.path == ":memory:":
        return MemoryStateStore()
    return SqliteStateStore(config.state.path)


def create_server(
    config: CoordinatorConfig, *, clock: Clock | None = None, registry: CollectorRegistry | None = None
) -> Coordinator:
    clock = clock or SystemClock()
    registry = registry or metrics_registry()
    metrics = CoordinatorMetrics(registry)
    nodes = NodeRegistry(clock, config.nodes.lease_ttl_s, config.nodes.max_slots)
    inventory = InventoryIndex()
    store = open_store(config)
    claims = ClaimChecker(
        inventory, clock, store, enabled=config.nodes.check_claims, window_s=config.nodes.claim_window_s
    )
    scheduler = Scheduler(inventory, clock, config.scheduler)
    authenticator = security_check(config)
    builds = BuildQueue(
        config.builds,
        nodes,
        inventory,
        scheduler,
        store,
        clock,
        metrics,
        slot_caps=authenticator.slot_caps(),
        claims=claims,
    )
    builds.recover()
    limit = config.server.max_message_bytes
    interceptor = AuthInterceptor(
        authenticator, observe=lambda m, code, s: metrics.rpc_seconds.labels(m, code).observe(s)
    )
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            *GRPC_SERVER_OPTIONS,
        ],
    )
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(
        AgentGatewayServicer(config, nodes, claims, builds, metrics), server
    )
    build_pb2_grpc.add_BuildsServicer_to_server(BuildsServicer(config, builds), server)
    inventory_pb2_grpc.add_InventoryServicer_to_server(
        InventoryServicer(nodes, inventory, builds, claims), server
    )
    history_pb2_grpc.add_HistoryServicer_to_server(HistoryServicer(store, nodes, scheduler), server)
    rollouts = build_rollout_engine(config.rollouts, config.state.path, clock, metrics)
    rollout_pb2_grpc.add_RolloutsServicer_to_server(RolloutsServicer(rollouts), server)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    port, agent_port = _add_ports(server, config)
    metrics_server = MetricsServer(registry, config.server.metrics_listen)
    return Coordinator(
        config=config,
        server=server,
        port=port,
        metrics_server=metrics_server,
        builds=builds,
        registry=nodes,
        inventory=inventory,
        claims=claims,
        store=store,
        health=health,
        rollouts=rollouts,
        agent_port=agent_port,
        builds_metrics=metrics,
    )


def security_check(config: CoordinatorConfig) -> Authenticator:
    """Refuse unsafe combinations of settings; say plainly when the coordinator is open."""
    sec = config.security
    if bool(sec.tls_cert) != bool(sec.tls_key):
        raise ConfigError("security.tls_cert and security.tls_key go together")
    if sec.client_ca and not (sec.agent_listen and sec.tls_cert):
        raise ConfigError(
            "security.client_ca needs security.agent_listen and a TLS certificate: agents get a "
            "port of their own that requires mutual TLS"
        )
    if sec.agent_listen and not sec.client_ca:
        raise ConfigError("security.agent_listen needs security.client_ca to verify agents' certificates")
    if sec.tokens_file and not sec.client_ca:
        raise ConfigError(
            "security.tokens_file needs security.client_ca: with tokens required, agents must "
            "authenticate with client certificates"
        )
    tokens = load_tokens(sec.tokens_file) if sec.tokens_file else {}
    open_access = not tokens and not sec.client_ca
    exposed = [a for a in (config.server.listen, sec.agent_listen) if a and not is_loopback(a)]
    if exposed and (open_access or not sec.tls_cert):
        if not sec.allow_insecure:
            raise ConfigError(
                f"refusing to listen on {', '.join(exposed)} without TLS and authentication: set "
                f"security.tls_cert/tls_key, client_ca, agent_listen and tokens_file, or "
                f"security.allow_insecure=true to accept the risk"
            )
        log.warning(
            "INSECURE: listening on %s without TLS and authentication (security.allow_insecure)",
            ", ".join(exposed),
        )
    elif open_access:
        log.warning(
            "open coordinator: no TLS and no authentication, on loopback only (%s)", config.server.listen
        )
    return Authenticator(tokens, open_access=open_access)


def _add_ports(server: grpc.aio.Server, config: CoordinatorConfig) -> tuple[int, int]:
    sec = config.security
    credentials = server_credentials(sec.tls_cert, sec.tls_key) if sec.tls_cert else None
    port = add_port(server, config.server.listen, credentials)
    agent_port = 0
    if sec.agent_listen:
        agent_port = add_port(
            server, sec.agent_listen, server_credentials(sec.tls_cert, sec.tls_key, sec.client_ca)
        )
    return port, agent_port


async def serve(config: CoordinatorConfig, ready_file: str | None = None) -> None:
    coordinator = create_server(config)
    await coordinator.start()
    collector = GcPolicy(config.server.gc_freeze_every_s, config.server.gc_full_every_s)
    gc_policy = asyncio.create_task(collector.run())
    if ready_file:
        write_ready_file(
            ready_file,
            {
                "grpc_port": coordinator.port,
                "metrics_port": coordinator.metrics_port,
                "agent_port": coordinator.agent_port,
            },
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    gc_policy.cancel()
    log.info("shutting down: finishing in-flight calls (up to %.0f s)", config.server.grace_s)
    await coordinator.stop()
