"""Which nodes a build may go to by what runs it there (podman or process) and by the nodes' maxima:
``builds.process_nodes``, ``BuildSpec.allow_unsandboxed`` and the maxima agents report (issue 15, items 1
and 4). The BuildQueue in process with fake agent links, as in test_build_queue.py."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from stoker.common import settings
from stoker.coordinator.config import BuildSettings
from stoker.coordinator.core.errors import FailedPrecondition, InvalidArgument
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.core.state import MemoryStateStore
from stoker.coordinator.placement.build_queue import AgentLink, BuildQueue
from stoker.coordinator.placement.domain import NO_LIMITS, NodeInfo, Resources, needs_sandbox
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.placement.scheduler import Scheduler
from stoker.coordinator.rpc import convert
from stoker.v1 import agent_pb2, common_pb2
from tests.helpers.clock import FakeClock

GIB = 1024**3


class Fleet:
    def __init__(self, process_nodes: str = "when_asked") -> None:
        clock = FakeClock()
        self.registry = NodeRegistry(clock, lease_ttl_s=10)
        inventory = InventoryIndex()
        self.queue = BuildQueue(
            BuildSettings(process_nodes=process_nodes),
            self.registry,
            inventory,
            Scheduler(inventory, clock),
            MemoryStateStore(),
            clock,
            CoordinatorMetrics(CollectorRegistry()),
        )
        self.links: dict[str, AgentLink] = {}

    def add(self, name: str, executor: str, maxima: Resources = NO_LIMITS) -> None:
        rec = self.registry.register(NodeInfo(name=name, zone="a", slots=4, executor=executor, maxima=maxima))
        self.registry.attach(name, rec.session_id)
        self.links[name] = AgentLink(name, rec.session_id)
        self.queue.attach(self.links[name])
        self.queue.heartbeat(name, rec.session_id, agent_pb2.Heartbeat())

    def placed_on(self, spec: common_pb2.BuildSpec) -> str:
        """Submit and return the node the build was sent to."""
        build_id = self.queue.submit(spec)
        for name, link in self.links.items():
            while not link.outbox.empty():
                cmd = link.outbox.get_nowait()
                if cmd is not None and cmd.run_build.build_id == build_id:
                    return name
        raise AssertionError(f"build {build_id} was sent to no node")


_workspaces = itertools.count()


def spec(**kwargs) -> common_pb2.BuildSpec:
    """A build of a workspace of its own (so that no tenant's fair share holds one back in the queue)."""
    return common_pb2.BuildSpec(workspace=f"w{next(_workspaces)}", command=["true"], **kwargs)


def run(body) -> None:
    async def wrapped():
        body()

    asyncio.run(wrapped())


def test_by_default_a_build_goes_to_a_process_node_only_when_it_asks():
    def body():
        f = Fleet()
        f.add("p", "process")
        with pytest.raises(FailedPrecondition) as refused:
            f.placed_on(spec())
        message = str(refused.value)
        assert "a sandboxing executor (podman)" in message and "executors process" in message
        assert "--allow-unsandboxed" in message  # says what to do
        assert f.placed_on(spec(allow_unsandboxed=True)) == "p"

    run(body)


def test_with_a_podman_node_in_the_fleet_builds_that_do_not_ask_go_there():
    def body():
        f = Fleet()
        f.add("p", "process")
        f.add("s", "podman")
        assert {f.placed_on(spec()) for _ in range(2)} == {"s"}

    run(body)


@pytest.mark.parametrize(
    "policy, asked, allowed",
    [
        ("never", False, False),
        ("never", True, False),
        ("when_asked", True, True),
        ("always", False, True),
    ],
)
def test_the_setting_decides_for_builds_that_need_no_sandbox(policy, asked, allowed):
    def body():
        f = Fleet(policy)
        f.add("p", "process")
        if allowed:
            assert f.placed_on(spec(allow_unsandboxed=asked)) == "p"
        else:
            with pytest.raises(FailedPrecondition):
                f.placed_on(spec(allow_unsandboxed=asked))

    run(body)


@pytest.mark.parametrize(
    "need",
    [
        {"image": "registry.example/ci/node:20"},
        {"limits": common_pb2.BuildLimits(memory_bytes=GIB)},
        {"limits": common_pb2.BuildLimits(cpus=1.5)},
        {"limits": common_pb2.BuildLimits(pids=100)},
        {"limits": common_pb2.BuildLimits(network="none")},
    ],
)
def test_what_only_a_sandbox_keeps_never_goes_to_a_process_node_even_where_every_build_may(need):
    def body():
        f = Fleet("always")
        f.add("p", "process")
        with pytest.raises(FailedPrecondition, match="sandboxing executor"):
            f.placed_on(spec(allow_unsandboxed=True, **need))
        f.add("s", "podman")
        assert f.placed_on(spec(allow_unsandboxed=True, **need)) == "s"

    run(body)


def test_output_and_disk_limits_do_not_need_a_sandbox():
    """Every executor keeps those two (the agent counts output and measures the workspace)."""
    assert not needs_sandbox(
        image="",
        limits=Resources(output_bytes=GIB, disk_bytes=GIB),
        network_none=False,
        allowed=False,
        policy="always",
    )


def test_a_limit_above_every_nodes_maximum_is_invalid_argument_naming_the_field():
    def body():
        f = Fleet()
        f.add("small", "podman", Resources(memory_bytes=4 * GIB, pids=512))
        f.add("big", "podman", Resources(memory_bytes=16 * GIB, pids=512))
        f.add("proc", "process", Resources())  # no maxima, but cannot run a memory limit at all
        with pytest.raises(InvalidArgument) as refused:
            f.placed_on(spec(limits=common_pb2.BuildLimits(memory_bytes=32 * GIB)))
        assert str(refused.value).startswith("spec.limits.memory_bytes: 34359738368 is more than any")
        assert "the largest maximum is 17179869184" in str(refused.value)
        # Within one node's maximum: only that node is admitted, every time.
        wants_8g = common_pb2.BuildLimits(memory_bytes=8 * GIB)
        assert {f.placed_on(spec(limits=wants_8g)) for _ in range(3)} == {"big"}
        # A field no node limits (0: no maximum) admits any value.
        assert f.placed_on(spec(limits=common_pb2.BuildLimits(disk_bytes=1024 * GIB))) in {"small", "big"}

    run(body)


def test_limits_no_one_node_admits_together_are_failed_precondition():
    def body():
        f = Fleet()
        f.add("mem", "podman", Resources(memory_bytes=16 * GIB, pids=100))
        f.add("pids", "podman", Resources(memory_bytes=2 * GIB, pids=10_000))
        both = spec(limits=common_pb2.BuildLimits(memory_bytes=8 * GIB, pids=5000))
        with pytest.raises(FailedPrecondition, match="maxima admitting memory_bytes=8589934592, pids=5000"):
            f.placed_on(both)

    run(body)


def test_the_maxima_a_node_registers_with_are_in_its_inventory():
    req = agent_pb2.RegisterRequest(
        node="n1",
        slots=1,
        executor="podman",
        maxima=common_pb2.BuildLimits(cpus=4, memory_bytes=GIB, pids=64),
    )
    info = convert.node_info(req)
    assert info.sandboxed and info.maxima == Resources(cpus=4, memory_bytes=GIB, pids=64)
    assert not replace(info, executor="").sandboxed  # an agent too old to say runs builds as processes


def test_an_unknown_process_nodes_setting_is_refused_naming_it():
    with pytest.raises(settings.SettingsError, match="builds.process_nodes: 'sometimes' is not one of never"):
        BuildSettings(process_nodes="sometimes")


def test_builds_only_one_node_admits_fill_its_slots_while_the_rest_of_the_fleet_is_idle():
    """The load bound spreads builds over the nodes a build may use, not over the whole fleet: three builds
    that need a sandbox all start on the one podman node (4 slots) beside three idle process nodes."""

    def body():
        f = Fleet()
        for name in ("p1", "p2", "p3"):
            f.add(name, "process")
        f.add("s", "podman")
        assert [f.placed_on(spec()) for _ in range(3)] == ["s", "s", "s"]

    run(body)
