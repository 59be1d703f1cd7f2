"""A podman agent on a real loopback fleet: the build names its image and limits in its spec, the pull is a
phase of its own, the node reports its executor and runtime, a spec over the node's maxima or an image that
cannot be pulled fails once with a clear message; and an agent left to choose (``auto``) without podman
says so and reports ``process``. Real podman, a real registry on 127.0.0.1 (tests/helpers/sandbox.py)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2, inventory_pb2, inventory_pb2_grpc
from tests.helpers.fleet import Fleet
from tests.helpers.sandbox import reset_storage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def podman_fleet(podman_settings, local_registry, tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("podman-fleet"))
    storage = Path(tempfile.mkdtemp(prefix="stoker-pf-"))  # podman's run directory must be a short path
    env = {
        "STOKER_AGENT_BUILD_EXECUTOR": "podman",
        "STOKER_AGENT_BUILD_DEFAULT_IMAGE": f"{local_registry}/stoker-test/not-the-default:1",
        "STOKER_AGENT_BUILD_MEMORY_BYTES": str(256 << 20),
        "STOKER_AGENT_PODMAN_DIR": str(storage),
        "STOKER_AGENT_PODMAN_INSECURE_REGISTRIES": local_registry,
    }
    try:
        fleet.start_coordinator()
        fleet.start_agent("p1", env=env)
        fleet.wait_ready("p1")
        with grpc.insecure_channel(fleet.coordinator.address) as channel:
            yield fleet, build_pb2_grpc.BuildsStub(channel), inventory_pb2_grpc.InventoryStub(channel)
    finally:
        fleet.stop()
        reset_storage(replace(podman_settings, dir=str(storage)))


def run(builds, **spec) -> tuple[build_pb2.Finished, list[str]]:
    s = common_pb2.BuildSpec(workspace="web", timeout_s=120, **spec)
    events = list(builds.SubmitBuild(build_pb2.SubmitBuildRequest(spec=s), timeout=180))
    assert events[-1].WhichOneof("kind") == "finished", events[-3:]
    lines = [e.log.text for e in events if e.WhichOneof("kind") == "log"]
    return events[-1].finished, lines


def test_the_spec_names_the_image_and_the_pull_is_a_phase_of_its_own(podman_fleet, sandbox_image):
    _, builds, inventory = podman_fleet
    first, lines = run(builds, image=sandbox_image, command=["sh", "-c", "cat /etc/passwd | head -1"])
    assert first.state == build_pb2.BUILD_STATE_SUCCEEDED, (first.message, lines)
    assert any(f"pulling image {sandbox_image}" in line for line in lines)  # progress, as build events
    assert first.timings.pull_s > 0 and first.timings.run_s > 0
    again, _ = run(builds, image=sandbox_image, command=["true"])
    assert again.state == build_pb2.BUILD_STATE_SUCCEEDED
    assert again.timings.pull_s < first.timings.pull_s  # held now: only the check that it is there
    [node] = inventory.QueryInventory(
        inventory_pb2.QueryInventoryRequest(summary_only=True), timeout=10
    ).nodes
    assert (node.executor, node.oci_runtime) == ("podman", "runc")


def test_a_spec_within_the_nodes_maxima_gets_its_limits_and_one_over_them_is_refused_at_submit(
    podman_fleet, sandbox_image
):
    _, builds, _ = podman_fleet
    # The container's memory limit is what the spec asked for (below the node's 256 MiB).
    limited, lines = run(
        builds,
        image=sandbox_image,
        limits=common_pb2.BuildLimits(memory_bytes=128 << 20, pids=64),
        command=["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"],
    )
    assert limited.state == build_pb2.BUILD_STATE_SUCCEEDED, (limited.message, lines)
    assert [str(128 << 20), "64"] == [line for line in lines if not line.startswith("stoker:")][-2:]
    # The node registered its maxima (its build.memory_bytes, 256 MiB): the coordinator refuses more.
    with pytest.raises(grpc.RpcError) as refused:
        run(
            builds,
            image=sandbox_image,
            limits=common_pb2.BuildLimits(memory_bytes=512 << 20),
            command=["true"],
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        f"spec.limits.memory_bytes: {512 << 20} is more than any registered node allows "
        f"(the largest maximum is {256 << 20})"
    )


def test_an_image_that_cannot_be_pulled_fails_the_build_once_with_the_registrys_message(
    podman_fleet, local_registry
):
    _, builds, _ = podman_fleet
    missing = f"{local_registry}/stoker-test/nope:1"
    events = list(
        builds.SubmitBuild(
            build_pb2.SubmitBuildRequest(
                spec=common_pb2.BuildSpec(workspace="web", image=missing, command=["true"], timeout_s=60)
            ),
            timeout=180,
        )
    )
    kinds = [e.WhichOneof("kind") for e in events]
    assert "retrying" not in kinds and kinds.count("placed") == 1  # no requeue loop
    finished = events[-1].finished
    assert finished.state == build_pb2.BUILD_STATE_ERROR, finished  # the build's input, not its command
    assert f"cannot pull image {missing}" in finished.message and "manifest unknown" in finished.message


def test_an_agent_left_to_choose_without_podman_says_why_and_reports_process(tmp_path):
    fleet = Fleet(tmp_path)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    try:
        fleet.start_coordinator()
        agent = fleet.start_agent("a1", env={"STOKER_AGENT_BUILD_EXECUTOR": "auto", "PATH": str(empty)})
        [node] = fleet.wait_ready("a1").nodes
        assert (node.executor, node.oci_runtime) == ("process", "")
        log = agent.log_path.read_text()
        assert "builds cannot run in podman here" in log and "install the Debian package podman" in log
        assert "builds are NOT isolated" in log
    finally:
        fleet.stop()
