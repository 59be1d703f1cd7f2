"""Placement-only mode uses the node's cache (issue 17, item 3), end to end: a coordinator with TLS and ci
tokens, two agents each serving LocalCache on its own unix socket, and a runner that is not stoker — a Python
script run without site-packages' path hooks (``-I -S``), importing only grpc, protobuf and stubs generated
here from the .proto files — that restores into its workspace, runs a real command there and saves. The
next placement of the key is warm on that node, and the coordinator's inventory and metrics show the entry
and the runner's restores. Then what must be refused is: a wrong secret, a lease on another node's socket,
a released lease, workspaces outside the root or through a symlink, and a pull request's save reaching the
protected scope."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from stoker.agent.cache.safe_open import Root, open_dir, pinned
from stoker.agent.local_cache import Leases, Refused, open_workspace
from stoker.cli.history import runs_from_pb
from stoker.coordinator.planning.history import from_history
from stoker.coordinator.planning.trace import Build
from stoker.v1 import (
    agent_pb2,
    build_pb2,
    build_pb2_grpc,
    common_pb2,
    history_pb2,
    history_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
)
from tests.coordinator.test_tenancy import Tenancy
from tests.helpers.net import free_port
from tests.helpers.pki import tls_channel

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNNER_UID = 4242
"""The runner's user: owns the workspaces; what a restore writes must end up its."""

RUNNER = r"""
import json, os, subprocess, sys
stubs, site, sock, op, lease, secret, ws, command = sys.argv[1:9]
sys.path[:0] = [stubs, site]
import grpc
from stoker.v1 import local_cache_pb2 as pb, local_cache_pb2_grpc as rpc
import stoker
assert all(p.startswith(stubs) for p in stoker.__path__), "the runner must not reach stoker's own code"
stub = rpc.LocalCacheStub(grpc.insecure_channel("unix:" + sock))
req = pb.LocalCacheRequest(lease_id=lease, lease_secret=secret, workspace=ws)
out = {}
try:
    if "restore" in op:
        r = stub.Restore(req, timeout=60)
        out["restore"] = {"hit": r.cache_hit, "warmth": r.cache.warmth, "key": r.cache.restored_key,
                          "files": r.cache.files_restored, "seconds": r.seconds}
        os.environ["STOKER_CACHE_HIT"] = r.cache_hit
    if command:
        subprocess.run(["sh", "-c", command], cwd=ws, check=True)
    if "save" in op:
        s = stub.Save(req, timeout=60)
        out["save"] = {"key": s.key, "saved": s.saved, "message": s.message}
except grpc.RpcError as exc:
    out["error"] = [exc.code().name, exc.details()]
print(json.dumps(out))
"""


class LocalFleet(Tenancy):
    """The tenancy fleet, each agent serving its local socket and a workspace root of its own."""

    def __init__(self, tmp: Path) -> None:
        # A unix socket's path has room for ~100 bytes: pytest's temporary directories can be longer.
        self.sockets = Path(tempfile.mkdtemp(prefix="stk-", dir="/tmp"))
        self.roots = {n: tmp / "runners" / n for n in ("n1", "n2")}

        def env(node: str) -> dict[str, str]:
            return {
                "STOKER_AGENT_CACHE_LOCAL_SOCKET": self.socket(node),
                "STOKER_AGENT_CACHE_LOCAL_WORKSPACE_ROOT": str(self.roots[node]),
            }

        super().__init__(tmp, free_port, agent_env=env)
        self.tmp = tmp
        self.stubs = tmp / "stubs"
        self.stubs.mkdir()
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos"),
             f"--python_out={self.stubs}", f"--grpc_python_out={self.stubs}",
             "stoker/v1/local_cache.proto", "stoker/v1/common.proto"],
            check=True, cwd=ROOT,
        )  # fmt: skip
        self.runner = tmp / "runner.py"
        self.runner.write_text(RUNNER)
        self.jobs = 0

    def socket(self, node: str) -> str:
        return str(self.sockets / f"{node}.sock")

    def place(self, who: str, key: str = "web/deps-1", lease_s: float = 120) -> build_pb2.Placement:
        spec = common_pb2.BuildSpec(
            workspace="web",
            cache=common_pb2.CacheSpec(
                key=key, restore_keys=["web/deps-"], paths=["deps"], ref="pull/7" if who == "pr" else ""
            ),
        )
        with tls_channel(self.coordinator.address, self.pki, self.tokens[who]) as ch:
            return build_pb2_grpc.BuildsStub(ch).PlaceBuild(
                build_pb2.PlaceBuildRequest(spec=spec, lease_s=lease_s), timeout=30
            )

    def release(self, who: str, lease_id: str) -> bool:
        with tls_channel(self.coordinator.address, self.pki, self.tokens[who]) as ch:
            return (
                build_pb2_grpc.BuildsStub(ch)
                .ReleasePlacement(build_pb2.ReleasePlacementRequest(lease_id=lease_id), timeout=10)
                .released
            )

    def workspace(self, node: str) -> Path:
        """A fresh job directory under ``node``'s root, owned by the runner's user."""
        self.jobs += 1
        ws = self.roots[node] / f"job{self.jobs}"
        ws.mkdir(parents=True)
        os.chown(ws, RUNNER_UID, RUNNER_UID)
        return ws

    def run(self, op: str, placement, workspace, command: str = "", node: str = "", secret: str = "") -> dict:
        """The runner, as a process of its own that is not stoker: (restore|save|restore+save)."""
        site = os.path.dirname(os.path.dirname(grpc.__file__))
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(self.runner), str(self.stubs), site,
             self.socket(node or placement.node), op, placement.lease_id, secret or placement.lease_secret,
             str(workspace), command],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def holders(self, key: str) -> set[str]:
        with tls_channel(self.coordinator.address, self.pki, self.tokens["ops"]) as ch:
            reply = inventory_pb2_grpc.InventoryStub(ch).QueryInventory(
                inventory_pb2.QueryInventoryRequest(key_prefix=key), timeout=10
            )
        return {n.node for n in reply.nodes if any(e.key == key for e in n.entries)}

    def metric(self, name: str) -> float:
        port = self.coordinator.metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.sockets, ignore_errors=True)


@pytest.fixture(scope="module")
def lf(tmp_path_factory):
    fleet = LocalFleet(tmp_path_factory.mktemp("local-cache"))
    yield fleet
    fleet.stop()


def wait_for(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def test_a_runner_restores_runs_and_saves_and_the_next_placement_is_warm_there(lf):
    first = lf.place("main")
    assert first.lease_secret and first.expected_warmth == common_pb2.WARMTH_COLD
    ws = lf.workspace(first.node)
    out = lf.run(
        "restore+save",
        first,
        ws,
        "mkdir -p deps/sub && echo built-by-main > deps/who && echo $STOKER_CACHE_HIT > hit",
    )
    assert out["restore"]["hit"] == "none" and out["restore"]["warmth"] == common_pb2.WARMTH_COLD
    assert out["save"] == {"key": "~web/protected/web/deps-1", "saved": True, "message": ""}
    assert (ws / "hit").read_text() == "none\n"
    assert lf.release("main", first.lease_id)
    # The coordinator learned the new entry from the agent's report and corroborates the node's claim of it.
    wait_for(
        lambda: first.node in lf.holders("~web/protected/web/deps-1"), "the saved entry in the inventory"
    )

    second = lf.place("main")
    assert (second.node, second.expected_warmth) == (first.node, common_pb2.WARMTH_WARM), second.reason
    ws2 = lf.workspace(second.node)
    out = lf.run("restore+save", second, ws2, "cat deps/who > seen")
    assert out["restore"]["hit"] == "exact" and out["restore"]["warmth"] == common_pb2.WARMTH_WARM
    assert out["restore"]["key"] == "~web/protected/web/deps-1" and out["restore"]["files"] >= 1
    assert out["save"]["saved"] is False and "matched exactly" in out["save"]["message"]
    assert (ws2 / "seen").read_text() == "built-by-main\n"
    # What the restore wrote belongs to the runner's user, not to the agent's.
    for path in (ws2 / "deps", ws2 / "deps" / "sub", ws2 / "deps" / "who"):
        assert (path.lstat().st_uid, path.lstat().st_gid) == (RUNNER_UID, RUNNER_UID), path
    assert lf.release("main", second.lease_id)
    # The runner's restores reached the coordinator's figures: one cold, one warm.
    assert lf.metric('stoker_coordinator_cache_hits_total{warmth="warm"}') >= 1
    assert lf.metric('stoker_coordinator_build_restore_seconds_count{warmth="cold"}') >= 1
    assert lf.metric('stoker_coordinator_lease_reports_total{kind="saved"}') >= 2
    assert lf.metric('stoker_coordinator_lease_reports_total{kind="refused"}') == 0

    # stoker's own CLI speaks the same socket, and says in one line what stands in the way.
    third = lf.place("main")
    ws3 = lf.workspace(third.node)
    cli = [sys.executable, "-m", "stoker.cli.main", "lease", "restore", "--lease", third.lease_id,
           "--workspace", str(ws3), "--socket", lf.socket(third.node)]  # fmt: skip
    env = {**os.environ, "STOKER_LEASE_SECRET": third.lease_secret}
    done = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and "STOKER_CACHE_HIT=exact" in done.stdout, done.stderr
    assert (ws3 / "deps" / "who").read_text() == "built-by-main\n"
    done = subprocess.run(cli[:-1] + [str(lf.sockets / "gone.sock")], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and done.stderr.count("\n") == 1
    assert "no stoker agent serves" in done.stderr and "gone.sock" in done.stderr
    assert lf.release("main", third.lease_id)
    # A released lease is dropped on the node: its secret opens nothing any more.
    wait_for(lambda: "error" in lf.run("restore", third, lf.workspace(third.node)), "the lease dropped")


def test_what_a_lease_does_not_allow_is_refused(lf):
    lease = lf.place("main", key="web/deps-2")
    other = "n2" if lease.node == "n1" else "n1"
    ws = lf.workspace(lease.node)

    wrong = lf.run("restore", lease, ws, secret="not-the-secret")
    assert wrong["error"][0] == "PERMISSION_DENIED"
    unknown = lf.run("restore", build_pb2.Placement(lease_id="l-nope", lease_secret="x"), ws, node=lease.node)
    # The same words whether the lease exists or not: a caller learns nothing about other leases.
    assert wrong["error"][1].replace(lease.lease_id, "?") == unknown["error"][1].replace("l-nope", "?")
    # The right secret on another node's socket: that agent was never granted the lease.
    elsewhere = lf.run("restore", lease, lf.workspace(other), node=other)
    assert elsewhere["error"][0] == "PERMISSION_DENIED"

    outside = lf.tmp / "outside"
    outside.mkdir()
    link = lf.roots[lease.node] / "link"
    link.symlink_to(outside)
    for bad in (outside, link, link / "x", lf.roots[lease.node], Path(f"{lf.roots[lease.node]}/../n1x")):
        out = lf.run("restore+save", lease, bad)
        assert out["error"][0] == "INVALID_ARGUMENT", (bad, out)
    assert list(outside.iterdir()) == []
    assert lf.release("main", lease.lease_id)


def test_a_pull_requests_lease_reads_the_protected_scope_but_saves_only_into_its_own(lf):
    main = lf.place("main", key="web/deps-3")
    lf.run("restore+save", main, lf.workspace(main.node), "mkdir -p deps && echo main > deps/who")
    assert lf.release("main", main.lease_id)

    pr = lf.place("pr", key="web/deps-3")
    ws = lf.workspace(pr.node)
    out = lf.run("restore+save", pr, ws, "echo planted-by-a-pull-request > deps/who")
    assert out["restore"]["key"] == "~web/protected/web/deps-3" and out["restore"]["hit"] == "exact"
    assert out["save"]["saved"] and out["save"]["key"] == "~web/untrusted/pull/7/web/deps-3"
    assert lf.release("pr", pr.lease_id)

    again = lf.place("main", key="web/deps-3")
    ws = lf.workspace(again.node)
    lf.run("restore", again, ws)
    assert (ws / "deps" / "who").read_text() == "main\n"
    assert lf.release("main", again.lease_id)


def test_ended_leases_are_in_the_build_history_that_planning_replays(lf):
    cold = lf.place("main", key="web/deps-4")
    lf.run("restore+save", cold, lf.workspace(cold.node), "mkdir -p deps && echo 4 > deps/n && sleep 0.3")
    assert lf.release("main", cold.lease_id)
    warm = lf.place("main", key="web/deps-4")
    lf.run("restore", warm, lf.workspace(warm.node))
    assert lf.release("main", warm.lease_id)

    with tls_channel(lf.coordinator.address, lf.pki, lf.tokens["ops"]) as ch:
        history = history_pb2_grpc.HistoryStub(ch).ExportHistory(
            history_pb2.ExportHistoryRequest(since_s=3600), timeout=30
        )
    jobs = {b.id: b for b in history.builds if b.placement_only}
    first, second = jobs[cold.lease_id], jobs[warm.lease_id]
    assert first.key == second.key == "~web/protected/web/deps-4" and first.node == cold.node
    # The first one restored an older entry by prefix when an earlier test left one, else nothing.
    expected = common_pb2.WARMTH_PARTIAL if first.cache.restored_key else common_pb2.WARMTH_COLD
    assert (first.cache.warmth, second.cache.warmth) == (expected, common_pb2.WARMTH_WARM)
    assert first.cache.saved and first.cache.bytes_uploaded > 0 and second.cache.bytes_restored > 0
    assert first.state == build_pb2.BUILD_STATE_SUCCEEDED and first.timings.restore_s > 0
    assert first.timings.run_s >= 0.3 and first.timings.total_s >= first.timings.run_s
    assert 0 <= first.placed_after_s <= first.timings.total_s and first.started_after_s == -1
    # Planning sees them as the jobs they were: each held a slot on its node, the second one warm.
    runs, changes = runs_from_pb(history)
    replayed = {b.observed["node"]: b for b in from_history(runs, changes).records if isinstance(b, Build)}
    assert cold.node in replayed and sum(r.ran for r in runs if r.id in jobs) == len(jobs)
    # A placement is not a build: the builds' own listing does not show it.
    with tls_channel(lf.coordinator.address, lf.pki, lf.tokens["main"]) as ch:
        listed = build_pb2_grpc.BuildsStub(ch).ListBuilds(build_pb2.ListBuildsRequest(), timeout=10)
    assert not {b.id for b in listed.builds} & set(jobs)


# -- the agent's pieces, without a fleet ----------------------------------------------------------------
def test_a_lease_opens_only_to_its_secret_and_only_until_it_expires():
    now = [100.0]
    leases = Leases(clock=lambda: now[0])
    grant = agent_pb2.GrantLeaseCommand(
        lease_id="l-1", secret_sha256=hashlib.sha256(b"s3cret").digest(), expires_in_s=60
    )
    leases.grant(grant)
    assert leases.check("l-1", "s3cret").lease_id == "l-1"
    for lease_id, secret in (("l-1", "wrong"), ("l-1", ""), ("l-2", "s3cret")):
        with pytest.raises(Refused) as refused:
            leases.check(lease_id, secret)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    now[0] += 61
    with pytest.raises(Refused):
        leases.check("l-1", "s3cret")
    leases.grant(grant)
    leases.drop("l-1", "released")
    with pytest.raises(Refused):
        leases.check("l-1", "s3cret")


def test_a_workspace_swapped_for_a_symlink_after_it_was_opened_still_leads_only_to_itself(tmp_path):
    """The agent checks a workspace once and reaches it only through the descriptor it opened then: a
    runner that renames it and plants a symlink in its place changes nothing outside the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "job").mkdir(parents=True)
    outside.mkdir()
    fd = open_workspace(str(root), str(root / "job"))
    try:
        (root / "job").rename(root / "moved")
        (root / "job").symlink_to(outside)
        reached = open_dir(pinned(fd))
        try:
            assert os.fstat(reached).st_ino == (root / "moved").stat().st_ino
        finally:
            os.close(reached)
        with Root(pinned(fd), None) as opened:  # what a save and a restore open
            assert os.fstat(opened.fd).st_ino == (root / "moved").stat().st_ino
    finally:
        os.close(fd)
    with pytest.raises(Refused, match="symlink"):
        open_workspace(str(root), str(root / "job"))


def test_after_a_reconnect_only_the_leases_the_coordinator_grants_again_stay():
    leases = Leases()
    secret = hashlib.sha256(b"s").digest()
    for lease_id in ("l-kept", "l-forgotten"):
        leases.grant(agent_pb2.GrantLeaseCommand(lease_id=lease_id, secret_sha256=secret, expires_in_s=60))
    stream = leases.new_stream()  # a coordinator that restarted knows only one of them
    leases.grant(agent_pb2.GrantLeaseCommand(lease_id="l-kept", secret_sha256=secret, expires_in_s=60))
    assert leases.check("l-forgotten", "s")  # until the coordinator has had its chance to grant it again
    leases.forget_unconfirmed(stream)
    assert leases.check("l-kept", "s").lease_id == "l-kept"
    with pytest.raises(Refused):
        leases.check("l-forgotten", "s")


def test_handing_restored_files_to_the_runner_never_reaches_outside_its_workspace(tmp_path):
    """The agent (root) gives what it restored to the workspace's owner. A runner owning the workspace can
    swap a directory on the way to a cached path (the spec names the path: `etc/shadow`, say) for a symlink
    to a directory of the node's: not a file outside the workspace may change hands, nor a symlink's
    target inside it."""
    from stoker.agent.local_cache import give_to_owner

    outside = tmp_path / "node-etc"
    outside.mkdir()
    (outside / "shadow").write_text("root's\n")
    (outside / "sub").mkdir()
    (outside / "sub" / "f").write_text("root's\n")
    ws = tmp_path / "ws"
    (ws / "deps" / "inner").mkdir(parents=True)
    (ws / "deps" / "inner" / "file").write_text("restored\n")
    (ws / "deps" / "link").symlink_to(outside / "shadow")
    (ws / "etc").symlink_to(outside)  # swapped in by the runner after the restore
    os.chown(ws, 12345, 12345)
    fd = os.open(ws, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        give_to_owner(fd, ["etc/shadow", "etc/sub", "deps"])
    finally:
        os.close(fd)
    for path in (outside, outside / "shadow", outside / "sub", outside / "sub" / "f"):
        assert path.stat().st_uid == 0, path
    for path in (ws / "deps", ws / "deps" / "inner", ws / "deps" / "inner" / "file"):
        assert path.stat().st_uid == 12345, path
    assert os.lstat(ws / "deps" / "link").st_uid == 12345  # the link itself, not its target
