"""Wiring for ``stoker agent``: read settings, open the cache, serve health and metrics, connect.

Health: the overall service ("") reports SERVING while the process is alive (liveness); the
service ``stoker.agent.Ready`` reports SERVING only while the agent's stream to the coordinator is
open (readiness), so a wrong coordinator address shows up as not ready with the reason in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from stoker.agent.cache.api import BuildCache
from stoker.agent.config import AgentConfig, default_node_name, in_cluster
from stoker.agent.executors.base import BuildExecutor, ExecutorUnavailable
from stoker.agent.executors.factory import open_executor
from stoker.agent.local_cache import LocalCacheServicer, local_server, open_socket
from stoker.agent.runner import AgentMetrics, CacheCollector
from stoker.agent.session import CoordinatorSession
from stoker.common.serving import (
    GRPC_SERVER_OPTIONS,
    MetricsServer,
    add_health_and_reflection,
    add_port,
    metrics_registry,
    write_ready_file,
)
from stoker.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

READY_SERVICE = "stoker.agent.Ready"
VERSION = "0.1.0"


def open_build_cache(config: AgentConfig) -> BuildCache:
    from stoker.agent.cache import factory

    return factory.open_cache(config.cache, node=config.node.name or default_node_name())


def registration(config: AgentConfig) -> agent_pb2.RegisterRequest:
    """What the node tells the coordinator about itself: configuration, then its Kubernetes Node."""
    node = config.node
    name = node.name or default_node_name()
    req = agent_pb2.RegisterRequest(
        node=name,
        zone=node.zone,
        slots=node.slots,
        disk_capacity_bytes=config.cache.budget_bytes,
        labels=node.labels,
        agent_version=VERSION,
        instance_type=node.instance_type,
        cpus=node.cpus or (os.cpu_count() or 1),
        memory_bytes=node.memory_bytes,
        # The agent's build.* limits are every build's defaults and the most one may ask for.
        maxima=common_pb2.BuildLimits(
            cpus=config.build.cpus,
            memory_bytes=config.build.memory_bytes,
            pids=config.build.pids,
            output_bytes=config.build.output_bytes,
            disk_bytes=config.build.disk_bytes,
        ),
    )
    use_kube = node.kubernetes == "on" or (node.kubernetes == "auto" and in_cluster())
    if use_kube:
        from stoker.agent import kube_node

        try:
            facts = kube_node.read_node_facts(name)
        except kube_node.NodeFactsUnavailable as exc:
            log.warning(
                "cannot read Node %s from the Kubernetes API (%s); registering with configured values only",
                name,
                exc,
            )
        else:
            req.zone = node.zone or facts.zone
            req.instance_type = node.instance_type or facts.instance_type
            req.cpus = node.cpus or facts.cpus
            req.memory_bytes = node.memory_bytes or facts.memory_bytes
            req.taints.extend(facts.taints)
            for k, v in facts.labels.items():
                req.labels.setdefault(k, v)
    return req


async def start_build_executor(config: AgentConfig) -> BuildExecutor:
    """The executor ``build.executor`` names, started, with what crashed builds left behind removed. With
    ``auto``, podman when it can run here, else the process executor and a warning saying why."""
    build_executor = open_executor(config)
    try:
        line = await build_executor.start()
    except ExecutorUnavailable as exc:
        if config.build.executor != "auto":
            raise
        log.warning("builds cannot run in podman here (%s): falling back to the process executor", exc)
        build_executor = open_executor(config, "process")
        line = await build_executor.start()
    if build_executor.name == "process":
        log.warning(
            "%s: builds are NOT isolated from the agent, the node or each other; use it only on trusted "
            "single-tenant nodes (the node reports executor=process in the inventory)",
            line,
        )
    else:
        log.info("%s", line)
    removed = await build_executor.cleanup_leftovers()
    if removed:
        log.warning("removed %d build(s) a crashed agent left running", removed)
    return build_executor


class Agent:
    def __init__(
        self, config: AgentConfig, cache: BuildCache | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = config
        self.registry = registry or metrics_registry()
        self.metrics = AgentMetrics(self.registry)
        self.executor = ThreadPoolExecutor(config.server.executor_threads, thread_name_prefix="agent-io")
        self.cache = cache or open_build_cache(config)
        self.registry.register(CacheCollector(self.cache, config.cache.dir, config.cache.budget_bytes))
        self.server = grpc.aio.server(options=GRPC_SERVER_OPTIONS)
        # READY_SERVICE is a health-check name only (the readiness probe asks for it), not a gRPC service:
        # reflection lists only what it can describe.
        self.health = add_health_and_reflection(self.server, [])
        if config.server.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(config.server.tls_key).read_bytes(), Path(config.server.tls_cert).read_bytes())]
            )
            self.port = add_port(self.server, config.server.listen, credentials)
        else:
            self.port = add_port(self.server, config.server.listen)
        self.metrics_server = MetricsServer(self.registry, config.server.metrics_listen)
        self.session: CoordinatorSession | None = None
        self.local_server: grpc.aio.Server | None = None
        """LocalCache on cache.local_socket, for runners under placement leases (agent/local_cache.py)."""
        self.stop_event = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.cache.open)
        generation, entries = self.cache.inventory()
        log.info("cache store open: %d entries", len(entries))
        req = await loop.run_in_executor(self.executor, registration, self.config)
        build_executor = await start_build_executor(self.config)
        req.executor, req.oci_runtime = build_executor.name, build_executor.runtime
        self.session = CoordinatorSession(
            self.config, req, self.cache, self.executor, self.metrics, build_executor
        )
        removed = await loop.run_in_executor(self.executor, self.session.runner.remove_leftover_workspaces)
        if removed:
            log.warning("cleaned up after a crash: removed %d workspace(s)", removed)
        socket_path = self.config.cache.local_socket
        if socket_path:
            servicer = LocalCacheServicer(
                self.session.leases,
                self.cache,
                self.executor,
                self.config.cache.local_workspace_root,
                self.session.report_lease,
                self.metrics,
            )
            self.local_server = local_server(socket_path, servicer)
            await self.local_server.start()
            open_socket(socket_path)
        await self.server.start()
        self.metrics_server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(READY_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._tasks = [
            asyncio.create_task(self.session.run_forever(self.stop_event)),
            asyncio.create_task(self._track_readiness()),
        ]
        log.info(
            "agent %s: health on port %d, metrics on port %d, coordinator %s, local cache socket %s",
            req.node,
            self.port,
            self.metrics_server.port,
            self.config.coordinator.address,
            socket_path or "off",
        )

    async def _track_readiness(self) -> None:
        assert self.session is not None
        serving = None
        while True:
            now = self.session.connected.is_set()
            if now != serving:
                serving = now
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if now
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.health.set(READY_SERVICE, status)
            await asyncio.sleep(0.2)

    async def stop(self, drain_s: float) -> None:
        """Finish running builds (up to ``drain_s``), then close the stream and the servers."""
        if self.session is not None:
            for task in getattr(self, "_tasks", [])[1:]:
                task.cancel()  # readiness stays NOT_SERVING from here on
            await self.health.set(READY_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
            finished = await self.session.runner.drain(drain_s)
            if not finished:
                log.warning(
                    "builds still running after %.0f s; stopping them (the coordinator requeues them)",
                    drain_s,
                )
                await self.session.runner.kill_all()
            await asyncio.sleep(0.3)  # let the last finished events leave
        self.stop_event.set()
        for task in getattr(self, "_tasks", []):
            task.cancel()
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(1)
        if self.local_server is not None:
            await self.local_server.stop(1)
        self.metrics_server.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)


async def serve(config: AgentConfig, ready_file: str | None = None, drain_s: float = 60.0) -> None:
    agent = Agent(config)
    await agent.start()
    if ready_file:
        write_ready_file(ready_file, {"grpc_port": agent.port, "metrics_port": agent.metrics_server.port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await agent.stop(drain_s)
