"""Images are cache: the podman executor reports what it holds and keeps it under its budget, least recently
used out first; the coordinator hears of them in heartbeats and shows them in the inventory. Real podman, a
real registry on 127.0.0.1 (tests/helpers/sandbox.py) and, for the inventory, a real loopback fleet."""

from __future__ import annotations

import asyncio
import io
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from stoker.agent.executors.podman import PodmanExecutor
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2, inventory_pb2, inventory_pb2_grpc
from tests.helpers.fleet import Fleet
from tests.helpers.sandbox import _podman, busybox_rootfs_tar, fresh_settings, job, reset_storage, run_one

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def other_image(local_registry, tmp_path_factory) -> str:
    """A second image, of different content (busybox plus one file), in the local registry."""
    work = tmp_path_factory.mktemp("other-image")
    rootfs = io.BytesIO(busybox_rootfs_tar())
    out = io.BytesIO()
    with tarfile.open(fileobj=rootfs) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        extra = b"the other image\n" * 4096
        info = tarfile.TarInfo("etc/other")
        info.size = len(extra)
        dst.addfile(info, io.BytesIO(extra))
    (work / "rootfs.tar").write_bytes(out.getvalue())
    ref = f"{local_registry}/stoker-test/other:1"
    for args in (("import", str(work / "rootfs.tar"), ref), ("push", "--tls-verify=false", ref)):
        done = _podman(work, *args)
        assert done.returncode == 0, f"podman {args[0]} failed: {done.stderr[-2000:]}"
    _podman(work, "system", "reset", "--force")
    return ref


def by_reference(images, reference):
    found = [i for i in images if reference in i.references]
    assert len(found) == 1, (reference, images)
    return found[0]


def test_held_images_are_reported_and_the_least_recently_used_goes_over_the_budget(
    podman_settings, sandbox_image, other_image, tmp_path
):
    settings = fresh_settings(podman_settings, Path(tempfile.mkdtemp(prefix="stoker-im-")))

    async def run_in(executor: PodmanExecutor, image: str, name: str) -> None:
        outcome, out = await run_one(executor, job(tmp_path / name, image, "true"))
        assert outcome.succeeded, out.text

    async def first_agent():
        executor = PodmanExecutor(settings)  # the default budget: both images fit
        await executor.start()
        assert executor.images() == ()
        await run_in(executor, sandbox_image, "a")
        await run_in(executor, other_image, "b")
        return executor.images()

    async def restarted_agent(budget: int):
        executor = PodmanExecutor(replace(settings, image_budget_bytes=budget))
        await executor.start()
        before = executor.images()
        await run_in(executor, other_image, "c")  # the other image is the most recently used again
        deadline = time.monotonic() + 60
        while len(executor.images()) == len(before) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the budget is enforced in the background after the build
        return before, executor.images()

    try:
        started = time.time()
        held = asyncio.run(first_agent())
        busybox, other = by_reference(held, sandbox_image), by_reference(held, other_image)
        assert busybox.digest.startswith("sha256:") and busybox.digest != other.digest
        assert busybox.bytes > 0 and other.bytes > busybox.bytes  # the other image carries 64 KiB more
        assert started <= busybox.last_used <= other.last_used <= time.time()

        # Room for the larger image only: the one used least recently goes, the one just used stays. The
        # order survives the agent's restart (its record of uses is on disk beside podman's storage).
        before, after = asyncio.run(restarted_agent(other.bytes + 1))
        assert {i.digest for i in before} == {busybox.digest, other.digest}
        assert [i.digest for i in after] == [other.digest], after
        assert _podman(Path(settings.dir), "image", "exists", sandbox_image).returncode == 1
    finally:
        reset_storage(settings)


def test_the_coordinator_shows_the_images_a_podman_agent_holds(
    podman_settings, sandbox_image, local_registry, tmp_path
):
    fleet = Fleet(tmp_path)
    storage = Path(tempfile.mkdtemp(prefix="stoker-if-"))  # podman's run directory must be a short path
    env = {
        "STOKER_AGENT_BUILD_EXECUTOR": "podman",
        "STOKER_AGENT_BUILD_DEFAULT_IMAGE": sandbox_image,
        "STOKER_AGENT_PODMAN_DIR": str(storage),
        "STOKER_AGENT_PODMAN_INSECURE_REGISTRIES": local_registry,
        "STOKER_AGENT_SERVER_HEARTBEAT_INTERVAL_S": "0.5",
    }
    try:
        fleet.start_coordinator()
        fleet.start_agent("n1", env=env)
        fleet.wait_ready("n1")
        with grpc.insecure_channel(fleet.coordinator.address) as channel:
            builds = build_pb2_grpc.BuildsStub(channel)
            spec = common_pb2.BuildSpec(workspace="web", command=["true"])
            events = list(builds.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=120))
            finished = events[-1].finished
            assert events[-1].WhichOneof("kind") == "finished" and finished.exit_code == 0, events[-3:]
            inventory = inventory_pb2_grpc.InventoryStub(channel)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                [node] = inventory.QueryInventory(inventory_pb2.QueryInventoryRequest(), timeout=10).nodes
                if node.images:
                    break
                time.sleep(0.2)
        [image] = node.images
        assert sandbox_image in image.references and image.digest.startswith("sha256:")
        assert image.bytes > 0 and (node.image_count, node.image_bytes) == (1, image.bytes)
        assert image.last_used.seconds > 0
    finally:
        fleet.stop()
        reset_storage(replace(podman_settings, dir=str(storage)))
