"""The cache boundary through a real loopback fleet: builds (submitted over gRPC to a coordinator, run by an
agent process) that plant symlinks where the agent's save reads the workspace back.

The secret is a stand-in for the node's ``/etc/stoker/tls`` (random bytes the agent can read, outside
every workspace). Every case: the build succeeds, the save is refused with a message in the build's events
naming the path and the symlink (or, for a link that stays in the tree, the link is stored as a link), and
the secret's bytes and digest reach neither the agent's store nor the blob store. The agent runs the
``process`` executor: the save reads what the build left the same way under either executor, and a
process executor lets a build leave a ``setsid`` process running through the save (the race below).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.blobs import encode_key
from stoker.demo import local_fleet
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2
from tests.helpers.hostile import holding, stored_manifest

pytestmark = [pytest.mark.integration, pytest.mark.hostile]


class Node:
    """A coordinator and one agent, with the node's secret beside them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tls = root / "etc" / "stoker" / "tls"
        self.tls.mkdir(parents=True)
        self.secret = b"-----BEGIN PRIVATE KEY-----\n" + os.urandom(3000).hex().encode() + b"\n"
        (self.tls / "tls.key").write_bytes(self.secret)
        (self.tls / "tls.crt").write_bytes(b"certificate\n")
        self.blobs = root / "blobs"
        self.coordinator = local_fleet.start_coordinator(root)
        self.agent = local_fleet.start_agent(root, "n1", self.coordinator.address, blobs=self.blobs)
        local_fleet.wait_for_nodes(self.coordinator.address, ["n1"])
        self.channel = grpc.insecure_channel(self.coordinator.address)
        self.builds = build_pb2_grpc.BuildsStub(self.channel)
        self.n = 0

    def build(self, script: str, *paths: str) -> tuple[str, build_pb2.Finished, list[str]]:
        """Run ``sh -c script`` saving ``paths``: (its cache key, its finished event, its stderr lines)."""
        self.n += 1
        key = f"web/boundary-{self.n}"
        spec = common_pb2.BuildSpec(
            workspace="web",
            command=["sh", "-c", script],
            timeout_s=60,
            cache=common_pb2.CacheSpec(key=key, paths=list(paths)),
        )
        events = list(self.builds.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=90))
        err = (build_pb2.LogLine.STREAM_STDERR, build_pb2.LogLine.STREAM_STOKER)
        stderr = [e.log.text for e in events if e.HasField("log") and e.log.stream in err]
        return key, events[-1].finished, stderr

    def leaked(self) -> list[str]:
        return holding(self.secret, self.root / "n1" / "cache", self.blobs)

    def assert_refused(self, key: str, fin: build_pb2.Finished, stderr: list[str], *needles: str) -> None:
        assert self.leaked() == [], "the secret reached the store"
        assert fin.state == build_pb2.BUILD_STATE_SUCCEEDED, fin
        assert not fin.cache.saved and "cache save failed" in fin.message, fin
        said = [line for line in stderr if "cache save failed" in line]
        assert said, stderr
        for needle in needles:
            assert needle in fin.message and needle in said[0], (needle, fin.message)
        assert not (self.blobs / "keys" / encode_key(key)).exists()

    def close(self) -> None:
        self.channel.close()
        self.agent.stop()
        self.coordinator.stop()


@pytest.fixture
def node(tmp_path: Path):
    """A fleet per test: a secret that reached one test's store must not fail the next one."""
    n = Node(tmp_path)
    try:
        yield n
    finally:
        n.close()


def test_a_cache_path_that_is_a_symlink_to_the_nodes_tls_dir(node: Node):
    key, fin, err = node.build(f"ln -s {node.tls} node_modules", "node_modules")
    node.assert_refused(key, fin, err, "node_modules", "symlink")


@pytest.mark.parametrize(
    "script, path, named",
    [
        ("ln -s {etc} certs", "certs/tls", "certs"),  # `--path certs/tls`, certs -> /etc/stoker
        ("mkdir web && ln -s {etc} web/conf", "web/conf/tls", "web/conf"),  # a parent below a real dir
        ("ln -s {etc}/.. web", "web/stoker/tls", "web"),  # a parent two levels above the cache path
    ],
)
def test_a_parent_of_a_cache_path_that_is_a_symlink(node: Node, script, path, named):
    key, fin, err = node.build(script.format(etc=node.tls.parent), path)
    node.assert_refused(key, fin, err, named, "symlink")


def test_a_directory_of_the_tree_replaced_by_a_symlink(node: Node):
    script = (
        "mkdir -p node_modules/foo node_modules/bar && echo x > node_modules/bar/index.js && "
        f"echo y > node_modules/foo/tls.key && rm -r node_modules/foo && ln -s {node.tls} node_modules/foo"
    )
    key, fin, err = node.build(script, "node_modules")
    node.assert_refused(key, fin, err, "node_modules/foo", "symlink")


def test_a_symlink_to_the_key_inside_the_tree(node: Node):
    script = f"mkdir -p node_modules/foo && ln -s {node.tls}/tls.key node_modules/foo/key.pem"
    key, fin, err = node.build(script, "node_modules")
    node.assert_refused(key, fin, err, "node_modules/foo/key.pem", "symlink")


def test_a_symlink_that_stays_in_the_tree_is_saved_as_a_symlink(node: Node):
    script = (
        "mkdir -p node_modules/foo node_modules/.bin && echo 'console.log(1)' > node_modules/foo/cli.js && "
        "ln -s ../foo/cli.js node_modules/.bin/foo"
    )
    key, fin, _ = node.build(script, "node_modules")
    assert fin.state == build_pb2.BUILD_STATE_SUCCEEDED and fin.cache.saved, fin
    files = {f.path: f for f in stored_manifest(node.blobs, key).files}
    link = files["node_modules/.bin/foo"]
    assert (link.type, link.target, link.chunks) == (mf.SYMLINK, "../foo/cli.js", ())
    assert node.leaked() == []


def test_a_process_left_running_swaps_a_directory_while_the_save_reads(node: Node):
    """A ``setsid`` loop the build leaves behind flips ``node_modules/foo`` (holding a ``tls.key`` of the
    key's size) between a directory and a symlink to the node's tls directory while the agent saves, build
    after build. The saves may succeed (with the build's own files) or be refused; the key never moves."""
    pidfile = node.root / "flipper.pid"
    decoy = "0" * (len(node.secret) - 1)
    script = (
        f"mkdir -p node_modules/foo && echo {decoy} > node_modules/foo/tls.key && echo c > "
        f"node_modules/foo/tls.crt && ln -s {node.tls} evil && setsid sh -c 'echo $$ > {pidfile}; "
        "while :; do mv -T node_modules/foo stash; mv -T evil node_modules/foo; "
        "mv -T node_modules/foo evil; mv -T stash node_modules/foo; done' "
        "</dev/null >/dev/null 2>&1 & sleep 0.3"
    )
    outcomes = []
    try:
        for _ in range(6):
            key, fin, _ = node.build(script, "node_modules")
            _stop(pidfile)
            assert fin.state == build_pb2.BUILD_STATE_SUCCEEDED, fin
            assert node.leaked() == [], f"the secret reached the store (after {outcomes})"
            outcomes.append("saved" if fin.cache.saved else fin.message)
    finally:
        _stop(pidfile)


def _stop(pidfile: Path) -> None:
    """Kill the loop the build left (by the pid it wrote), if it is still running."""
    deadline = time.monotonic() + 5
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink()
