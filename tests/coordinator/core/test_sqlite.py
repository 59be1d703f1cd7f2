"""A failing SQLite file is a backend that is down: UNAVAILABLE from both stores, never INTERNAL.

Real SQLite files in ``tmp_path``: one locked by another connection (as another process holding a write
transaction would), one that is not a database at all. The build case goes through a real coordinator over
gRPC on 127.0.0.1, so the store, the build queue and the status table are all on the path.
"""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest
from prometheus_client import CollectorRegistry

from stoker.coordinator import config as coordinator_config
from stoker.coordinator.core import sqlite as core_sqlite
from stoker.coordinator.core.errors import Unavailable
from stoker.coordinator.core.state import SqliteStateStore
from stoker.coordinator.rollouts.machine import Spec, new_rollout
from stoker.coordinator.rollouts.store import SqliteRolloutStore
from stoker.coordinator.rpc.status import status_for
from stoker.coordinator.server import create_server
from stoker.v1 import agent_pb2, agent_pb2_grpc, build_pb2, build_pb2_grpc, common_pb2

BUSY_MS = 200
"""The stores' busy timeout in these tests (5 s in production): how long a write waits for the lock."""


@pytest.fixture
def short_busy_timeout(monkeypatch):
    monkeypatch.setattr(core_sqlite, "BUSY_TIMEOUT_MS", BUSY_MS)


def hold_write_lock(path) -> sqlite3.Connection:
    """Another connection that takes the database's write lock and keeps it until closed."""
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


async def _submit_while_locked(tmp_path) -> tuple[grpc.StatusCode, str, grpc.StatusCode]:
    db = tmp_path / "state" / "coordinator.db"
    config = coordinator_config.load(
        environ={},
        overrides={
            "server": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"},
            "state": {"path": str(db)},
        },
    )
    coordinator = create_server(config, registry=CollectorRegistry())
    await coordinator.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
            # A registered node, so that the build is refused for the database and not for an empty fleet.
            await agent_pb2_grpc.AgentGatewayStub(channel).Register(
                agent_pb2.RegisterRequest(node="n1", slots=1, executor="podman"), timeout=10
            )
            builds = build_pb2_grpc.BuildsStub(channel)
            spec = common_pb2.BuildSpec(workspace="w", command=["true"])
            other = hold_write_lock(db)
            try:
                call = builds.SubmitBuild(
                    build_pb2.SubmitBuildRequest(spec=spec, request_id="r-1"), timeout=30
                )
                try:
                    await call.read()
                    code, details = grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details()
            finally:
                other.close()
            # The lock gone, the same coordinator stores builds again.
            call = builds.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec, request_id="r-2"), timeout=30)
            first = await call.read()
            call.cancel()
            after = grpc.StatusCode.OK if first.HasField("queued") else grpc.StatusCode.UNKNOWN
    finally:
        await coordinator.stop(grace_s=0)
    return code, details, after


@pytest.mark.integration
@pytest.mark.fault
def test_a_locked_state_database_refuses_a_build_with_unavailable(tmp_path, short_busy_timeout):
    code, details, after = asyncio.run(_submit_while_locked(tmp_path))
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert details == "state store: database is locked"
    assert after == grpc.StatusCode.OK


@pytest.mark.fault
def test_a_locked_rollout_database_is_unavailable(tmp_path, short_busy_timeout):
    db = tmp_path / "coordinator.db"
    store = SqliteRolloutStore(db)
    rollout = new_rollout("r-1", Spec(service="web", version="v2"), 1.0)
    other = hold_write_lock(db)
    try:
        with pytest.raises(Unavailable, match="^rollout store: database is locked$") as err:
            store.create(rollout)
    finally:
        other.close()
    assert isinstance(err.value.__cause__, sqlite3.OperationalError)
    assert status_for(err.value) == grpc.StatusCode.UNAVAILABLE
    store.create(rollout)
    assert store.get("r-1") is not None
    store.close()


@pytest.mark.fault
@pytest.mark.parametrize(
    "open_store, what", [(SqliteStateStore, "state store"), (SqliteRolloutStore, "rollout store")]
)
def test_a_file_that_is_not_a_database_is_unavailable(tmp_path, open_store, what):
    db = tmp_path / "coordinator.db"
    db.write_bytes(b"this is not an SQLite file, " * 200)
    with pytest.raises(Unavailable, match=f"^cannot open {what} {db}: file is not a database$") as err:
        open_store(db)
    assert isinstance(err.value.__cause__, sqlite3.DatabaseError)
    assert status_for(err.value) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.fault
def test_a_read_only_database_is_unavailable_and_a_closed_one_is_a_bug(tmp_path):
    store = SqliteStateStore(tmp_path / "coordinator.db")
    store._db.execute(
        "PRAGMA query_only = ON"
    )  # the connection may read but not write, as on a read-only disk
    with pytest.raises(Unavailable, match="^state store: attempt to write a readonly database$"):
        store.put_build(build_pb2.Build(id="b-1"))
    assert store.get_build("b-1") is None
    store.close()
    # Using a closed store is a programming error, not the database being down: INTERNAL by the table.
    with pytest.raises(sqlite3.ProgrammingError) as err:
        store.get_build("b-1")
    assert status_for(err.value) == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("make_store", ["sqlite", "memory"])
def test_prune_deletes_old_finished_builds_with_their_events_and_request_ids(tmp_path, make_store):
    """builds.history_days (issue 16, item 3): the history was kept forever."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from stoker.coordinator.core.state import MemoryStateStore

    store = SqliteStateStore(tmp_path / "c.db") if make_store == "sqlite" else MemoryStateStore()

    def put(build_id: str, created: float, state) -> None:
        store.put_build(
            build_pb2.Build(id=build_id, state=state, created=Timestamp(seconds=int(created))),
            f"req-{build_id}",
        )
        store.append_event(build_pb2.BuildEvent(build_id=build_id, seq=1))

    put("old-done", 100, build_pb2.BUILD_STATE_SUCCEEDED)
    put("old-failed", 200, build_pb2.BUILD_STATE_FAILED)
    put("old-running", 100, build_pb2.BUILD_STATE_RUNNING)  # never deleted while unfinished
    put("new-done", 5000, build_pb2.BUILD_STATE_SUCCEEDED)
    assert store.prune(1000, limit=1) == 1
    assert store.prune(1000) == 1
    assert store.prune(1000) == 0
    assert store.get_build("old-done") is None and store.get_build("old-failed") is None
    assert store.events("old-done") == [] and store.find_request("req-old-done") is None
    assert store.get_build("old-running") is not None and store.get_build("new-done") is not None
    assert [e.seq for e in store.events("new-done")] == [1]
    # Ended placements (kept for the history, apart from the builds) go the same way.
    for lease_id, created in (("l-old", 100), ("l-new", 5000)):
        store.put_placement(build_pb2.Build(id=lease_id, created=Timestamp(seconds=created)))
    assert [p.id for p in store.placements_since(0)] == ["l-old", "l-new"]
    assert store.get_build("l-old") is None and store.finished_since(0)[0].id != "l-old"
    assert store.prune(1000) == 1
    assert [p.id for p in store.placements_since(0)] == ["l-new"]
    store.close()


def test_a_listing_by_owner_reads_only_that_owners_builds_and_an_old_state_file_gains_the_column(tmp_path):
    """ListBuilds for a ci caller reads its own builds in SQL (a token with none of its own made every call
    decode 5,000 other builds, ~50 ms of the event loop); a state file from before keeps working, its
    builds' owners filled in from their records."""
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE builds (id TEXT PRIMARY KEY, request_id TEXT, state INTEGER NOT NULL, "
        "created REAL NOT NULL, record BLOB NOT NULL);"
    )
    for i, owner in enumerate(("web-ci", "other", "web-ci")):
        b = build_pb2.Build(id=f"b-old-{i}", state=build_pb2.BUILD_STATE_SUCCEEDED, owner=owner)
        b.created.FromSeconds(1000 + i)
        old.execute(
            "INSERT INTO builds VALUES (?, NULL, ?, ?, ?)", (b.id, b.state, 1000 + i, b.SerializeToString())
        )
    old.commit()
    old.close()
    store = SqliteStateStore(path)
    new = build_pb2.Build(id="b-new", state=build_pb2.BUILD_STATE_QUEUED, owner="web-ci")
    new.created.FromSeconds(2000)
    store.put_build(new)
    assert [b.id for _, b in store.scan(None, 0, 10, owner="web-ci")] == ["b-new", "b-old-2", "b-old-0"]
    assert [b.id for _, b in store.scan(None, 0, 10, owner="other")] == ["b-old-1"]
    assert len(store.scan(None, 0, 10)) == 4
    store.close()
