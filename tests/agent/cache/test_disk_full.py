"""The agent's disk fills: eviction frees space under the cache budget, and a real full filesystem (a tiny
tmpfs, as root) makes the save fail with a clear reason, never a half-written entry; the agent keeps
serving."""

from __future__ import annotations

import os
import subprocess

import pytest

from stoker.v1 import build_pb2
from tests.helpers.faults import builds_stub, inventory, spec, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

MB = 1 << 20


def write_random(mb: float) -> str:
    return f"mkdir -p out && head -c {int(mb * MB)} /dev/urandom > out/blob && echo wrote"


def keys_on(address: str, node: str) -> list[str]:
    return [e.key for e in inventory(address, node=node).nodes[0].entries]


def test_budget_evicts_least_recently_used_and_refuses_what_cannot_fit(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1", extra=["--budget-bytes", str(int(3.5 * MB))])
    fleet.wait_ready("n1")
    stub = builds_stub(c.address)
    for key in ("web/k1", "web/k2", "web/k3"):  # 1.5 MB each, incompressible: three do not fit 3.5 MB
        events = list(
            stub.SubmitBuild(
                build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", write_random(1.5)], key=key)), timeout=60
            )
        )
        assert (
            events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED and events[-1].finished.cache.saved
        )

    def held_once_k3_is_in() -> list[str] | None:
        keys = keys_on(c.address, "n1")
        return keys if "web/k3" in keys else None

    def node_once_eviction_reported():
        node = inventory(c.address, node="n1").nodes[0]
        return node if node.evicted_bytes_total else None

    held = wait_until(held_once_k3_is_in, message="web/k3 in the inventory")
    assert held == ["web/k2", "web/k3"], held  # the least recently used went
    node = wait_until(node_once_eviction_reported, message="a heartbeat with the evicted bytes")
    assert node.evicted_bytes_total >= int(1.5 * MB) and 0 < node.disk_used_bytes <= int(3.5 * MB)
    # An entry larger than the whole budget: the build still succeeds, the reason is clear, nothing half-kept.
    events = list(
        stub.SubmitBuild(
            build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", write_random(5)], key="web/huge")), timeout=60
        )
    )
    fin = events[-1].finished
    assert fin.state == build_pb2.BUILD_STATE_SUCCEEDED and "cache budget" in fin.message, fin.message
    assert "web/huge" not in keys_on(c.address, "n1")
    staging = fleet.root / "n1" / "cache" / "staging"
    assert not any(staging.iterdir())


def test_full_filesystem_fails_the_save_clearly_and_publishes_nothing(fleet):
    if os.geteuid() != 0:
        pytest.fail(
            "this test mounts a 12 MiB tmpfs as the agent's disk: run it as root (or in a container "
            "with CAP_SYS_ADMIN)"
        )
    disk = fleet.root / "n1"
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], check=True)
    try:
        c = fleet.start_coordinator()
        fleet.start_agent("n1", extra=["--budget-bytes", str(1 << 30)])  # the budget does not protect it
        fleet.wait_ready("n1")
        stub = builds_stub(c.address)
        events = list(
            stub.SubmitBuild(
                build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", write_random(7)], key="web/too-big")),
                timeout=60,
            )
        )
        fin = events[-1].finished
        assert "No space left on device" in fin.message, fin
        assert not fin.cache.saved
        assert "web/too-big" not in keys_on(c.address, "n1")
        assert not any((disk / "cache" / "staging").iterdir()), "staging leftovers on the full disk"
        assert not list((disk / "cache" / "entries").iterdir())
        # The agent keeps serving: a small build runs and saves once space is back.
        events = list(
            stub.SubmitBuild(
                build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", write_random(0.5)], key="web/small")),
                timeout=60,
            )
        )
        assert (
            events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED and events[-1].finished.cache.saved
        )
        wait_until(lambda: "web/small" in keys_on(c.address, "n1"), message="web/small in the inventory")
    finally:
        fleet.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
