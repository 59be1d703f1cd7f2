"""Durable state: builds and their event history, and the vouchers for nodes' cache entries.

One small interface, :class:`StateStore`, with a SQLite implementation (WAL, one file, opened by
``core/sqlite.py``, which also makes a failing database Unavailable) for real use and an in-memory one
for unit tests. Records are stored as serialized protobuf messages, so the
store never needs a schema change when a field is added to the wire contract.

Calls are short single-row writes (tens of microseconds in WAL mode with ``synchronous=NORMAL``),
so the coordinator makes them on its event loop rather than paying a thread hop for each.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stoker.coordinator.core.sqlite import open_database, unavailable_on_failure
from stoker.v1 import build_pb2

_TERMINAL = (
    build_pb2.BUILD_STATE_SUCCEEDED,
    build_pb2.BUILD_STATE_FAILED,
    build_pb2.BUILD_STATE_CANCELLED,
    build_pb2.BUILD_STATE_TIMED_OUT,
    build_pb2.BUILD_STATE_ERROR,
)


def is_terminal(state: int) -> bool:
    return state in _TERMINAL


class StateStore(Protocol):
    def put_build(self, build: build_pb2.Build, request_id: str = "") -> None: ...
    def get_build(self, build_id: str) -> build_pb2.Build | None: ...
    def find_request(self, request_id: str) -> str | None: ...
    def append_event(self, event: build_pb2.BuildEvent) -> None: ...
    def events(self, build_id: str, after_seq: int = 0) -> list[build_pb2.BuildEvent]: ...
    def unfinished(self) -> list[build_pb2.Build]: ...
    def scan(
        self, after: tuple[float, str] | None, since: float, limit: int, owner: str = ""
    ) -> list[tuple[float, build_pb2.Build]]:
        """Up to ``limit`` builds created at or after ``since`` (and submitted by ``owner``, when given),
        newest first (by creation time, then id), starting after the position ``after`` (a previous row's
        (created, id)); each with its position's creation time."""
        ...

    def prune(self, created_before: float, limit: int = 1000) -> int: ...
    def finished_since(self, created_after: float) -> list[build_pb2.Build]: ...
    def put_placement(self, record: build_pb2.Build) -> None:
        """Keep an ended placement-only job (a lease: its id, spec, node, timings and cache figures) for the
        build history; it is not a build (GetBuild and ListBuilds do not see it)."""
        ...

    def placements_since(self, created_after: float) -> list[build_pb2.Build]: ...
    def append_node_event(self, event: NodeEvent) -> None: ...
    def node_events(self) -> list[NodeEvent]: ...
    def prune_node_events(self, before: float) -> int: ...
    def put_voucher(self, node: str, key: str, size: int, files: int, at: float) -> None: ...
    def vouchers(self, node: str) -> dict[str, tuple[int, int]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class NodeEvent:
    """A node joined the fleet (its stream attached) or was lost (its lease ran out): what capacity planning
    replays as the fleet's real joins and losses (``stoker history export``)."""

    t: float
    node: str
    event: str
    """``joined`` or ``lost``."""
    zone: str = ""
    slots: int = 0
    disk_bytes: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    request_id TEXT,
    state INTEGER NOT NULL,
    created REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS builds_request ON builds(request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS builds_state ON builds(state);
CREATE TABLE IF NOT EXISTS build_events (
    build_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS builds_created ON builds(created);
CREATE TABLE IF NOT EXISTS node_events (
    t REAL NOT NULL,
    node TEXT NOT NULL,
    event TEXT NOT NULL,
    zone TEXT NOT NULL,
    slots INTEGER NOT NULL,
    disk_bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS node_events_t ON node_events(t);
CREATE TABLE IF NOT EXISTS vouchers (
    node TEXT NOT NULL,
    key TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    files INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (node, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vouchers_at ON vouchers(at);
CREATE TABLE IF NOT EXISTS placements (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS placements_created ON placements(created);
"""


class SqliteStateStore:
    """Every call holds the lock and maps SQLite failing under it to Unavailable (``core/sqlite.py``)."""

    def __init__(self, path: str | Path) -> None:
        self._db = open_database(path, _SCHEMA, what="state store")
        self._lock = threading.Lock()
        with self._call() as db:
            _add_owner_column(db)

    @contextmanager
    def _call(self) -> Iterator[sqlite3.Connection]:
        with self._lock, unavailable_on_failure("state store"):
            yield self._db

    def put_build(self, build: build_pb2.Build, request_id: str = "") -> None:
        with self._call() as db:
            db.execute(
                "INSERT INTO builds (id, request_id, state, created, record, owner) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state=excluded.state, record=excluded.record",
                (
                    build.id,
                    request_id or None,
                    build.state,
                    _seconds(build),
                    build.SerializeToString(),
                    build.owner,
                ),
            )

    def get_build(self, build_id: str) -> build_pb2.Build | None:
        with self._call() as db:
            row = db.execute("SELECT record FROM builds WHERE id = ?", (build_id,)).fetchone()
        return None if row is None else build_pb2.Build.FromString(row[0])

    def find_request(self, request_id: str) -> str | None:
        with self._call() as db:
            row = db.execute("SELECT id FROM builds WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else row[0]

    def append_event(self, event: build_pb2.BuildEvent) -> None:
        with self._call() as db:
            db.execute(
                "INSERT OR IGNORE INTO build_events (build_id, seq, event) VALUES (?, ?, ?)",
                (event.build_id, event.seq, event.SerializeToString()),
            )

    def events(self, build_id: str, after_seq: int = 0) -> list[build_pb2.BuildEvent]:
        with self._call() as db:
            rows = db.execute(
                "SELECT event FROM build_events WHERE build_id = ? AND seq > ? ORDER BY seq",
                (build_id, after_seq),
            ).fetchall()
        return [build_pb2.BuildEvent.FromString(r[0]) for r in rows]

    def unfinished(self) -> list[build_pb2.Build]:
        marks = ",".join("?" * len(_TERMINAL))
        with self._call() as db:
            rows = db.execute(
                f"SELECT record FROM builds WHERE state NOT IN ({marks}) ORDER BY created", _TERMINAL
            ).fetchall()
        return [build_pb2.Build.FromString(r[0]) for r in rows]

    def scan(
        self, after: tuple[float, str] | None, since: float, limit: int, owner: str = ""
    ) -> list[tuple[float, build_pb2.Build]]:
        where = "created >= ?"
        args: list[object] = [since]
        if owner:  # in SQL (indexed), so that a caller's listing reads only its own builds
            where += " AND owner = ?"
            args.append(owner)
        if after is not None:
            where += " AND (created < ? OR (created = ? AND id < ?))"
            args += [after[0], after[0], after[1]]
        with self._call() as db:
            rows = db.execute(
                f"SELECT created, record FROM builds WHERE {where} ORDER BY created DESC, id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [(created, build_pb2.Build.FromString(record)) for created, record in rows]

    def prune(self, created_before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` finished builds created before ``created_before`` (Unix seconds), with
        their events and request ids, and up to ``limit`` placements; returns how many of both."""
        marks = ",".join("?" * len(_TERMINAL))
        with self._call() as db:
            ids = [
                r[0]
                for r in db.execute(
                    f"SELECT id FROM builds WHERE state IN ({marks}) AND created < ? LIMIT ?",
                    (*_TERMINAL, created_before, limit),
                ).fetchall()
            ]
            for build_id in ids:
                db.execute("DELETE FROM build_events WHERE build_id = ?", (build_id,))
                db.execute("DELETE FROM builds WHERE id = ?", (build_id,))
            placements = db.execute(
                "SELECT id FROM placements WHERE created < ? LIMIT ?", (created_before, limit)
            ).fetchall()
            db.executemany("DELETE FROM placements WHERE id = ?", placements)
            # Vouchers go with the build history they came from (placement.claims).
            db.execute(
                "DELETE FROM vouchers WHERE (node, key) IN "
                "(SELECT node, key FROM vouchers WHERE at < ? LIMIT ?)",
                (created_before, limit),
            )
        return len(ids) + len(placements)

    def finished_since(self, created_after: float) -> list[build_pb2.Build]:
        """Finished builds created at or after ``created_after`` (Unix seconds), oldest first."""
        marks = ",".join("?" * len(_TERMINAL))
        with self._call() as db:
            rows = db.execute(
                f"SELECT record FROM builds WHERE state IN ({marks}) AND created >= ? ORDER BY created",
                (*_TERMINAL, created_after),
            ).fetchall()
        return [build_pb2.Build.FromString(r[0]) for r in rows]

    def put_placement(self, record: build_pb2.Build) -> None:
        with self._call() as db:
            db.execute(
                "INSERT OR REPLACE INTO placements (id, created, record) VALUES (?, ?, ?)",
                (record.id, _seconds(record), record.SerializeToString()),
            )

    def placements_since(self, created_after: float) -> list[build_pb2.Build]:
        """Ended placement-only jobs created at or after ``created_after`` (Unix seconds), oldest first."""
        with self._call() as db:
            rows = db.execute(
                "SELECT record FROM placements WHERE created >= ? ORDER BY created", (created_after,)
            ).fetchall()
        return [build_pb2.Build.FromString(r[0]) for r in rows]

    def append_node_event(self, event: NodeEvent) -> None:
        with self._call() as db:
            db.execute(
                "INSERT INTO node_events (t, node, event, zone, slots, disk_bytes) VALUES (?, ?, ?, ?, ?, ?)",
                (event.t, event.node, event.event, event.zone, event.slots, event.disk_bytes),
            )

    def node_events(self) -> list[NodeEvent]:
        with self._call() as db:
            rows = db.execute(
                "SELECT t, node, event, zone, slots, disk_bytes FROM node_events ORDER BY t, rowid"
            ).fetchall()
        return [NodeEvent(*row) for row in rows]

    def prune_node_events(self, before: float) -> int:
        """Delete node events older than ``before``, except each node's last one before it (which says
        whether the node was there when a later window opens); returns how many."""
        with self._call() as db:
            cursor = db.execute(
                "DELETE FROM node_events WHERE t < ? AND rowid NOT IN "
                "(SELECT MAX(rowid) FROM node_events WHERE t < ? GROUP BY node)",
                (before, before),
            )
        return cursor.rowcount

    def put_voucher(self, node: str, key: str, size: int, files: int, at: float) -> None:
        """Record that ``node`` holds ``key`` as the coordinator corroborated it (``placement.claims``)."""
        with self._call() as db:
            db.execute(
                "INSERT INTO vouchers (node, key, bytes, files, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(node, key) DO UPDATE SET "
                "bytes=excluded.bytes, files=excluded.files, at=excluded.at",
                (node, key, size, files, at),
            )

    def vouchers(self, node: str) -> dict[str, tuple[int, int]]:
        with self._call() as db:
            rows = db.execute("SELECT key, bytes, files FROM vouchers WHERE node = ?", (node,)).fetchall()
        return {key: (size, files) for key, size, files in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryStateStore:
    """The same interface in memory (for unit tests and throwaway runs)."""

    def __init__(self) -> None:
        self._builds: dict[str, bytes] = {}
        self._requests: dict[str, str] = {}
        self._events: dict[str, dict[int, bytes]] = {}
        self._node_events: list[NodeEvent] = []
        self._vouchers: dict[tuple[str, str], tuple[int, int, float]] = {}
        self._placements: dict[str, build_pb2.Build] = {}

    def put_build(self, build: build_pb2.Build, request_id: str = "") -> None:
        self._builds[build.id] = build.SerializeToString()
        if request_id:
            self._requests.setdefault(request_id, build.id)

    def get_build(self, build_id: str) -> build_pb2.Build | None:
        raw = self._builds.get(build_id)
        return None if raw is None else build_pb2.Build.FromString(raw)

    def find_request(self, request_id: str) -> str | None:
        return self._requests.get(request_id)

    def append_event(self, event: build_pb2.BuildEvent) -> None:
        self._events.setdefault(event.build_id, {}).setdefault(event.seq, event.SerializeToString())

    def events(self, build_id: str, after_seq: int = 0) -> list[build_pb2.BuildEvent]:
        events = self._events.get(build_id, {})
        return [build_pb2.BuildEvent.FromString(events[s]) for s in sorted(events) if s > after_seq]

    def unfinished(self) -> list[build_pb2.Build]:
        builds = [build_pb2.Build.FromString(raw) for raw in self._builds.values()]
        return sorted((b for b in builds if not is_terminal(b.state)), key=lambda b: b.created.ToSeconds())

    def scan(
        self, after: tuple[float, str] | None, since: float, limit: int, owner: str = ""
    ) -> list[tuple[float, build_pb2.Build]]:
        builds = (
            b for b in map(build_pb2.Build.FromString, self._builds.values()) if not owner or b.owner == owner
        )
        rows = sorted(
            ((_seconds(b), b) for b in builds),
            key=lambda row: (row[0], row[1].id),
            reverse=True,
        )
        rows = [r for r in rows if r[0] >= since and (after is None or (r[0], r[1].id) < after)]
        return rows[:limit]

    def prune(self, created_before: float, limit: int = 1000) -> int:
        old = [
            build_id
            for build_id, raw in self._builds.items()
            if (b := build_pb2.Build.FromString(raw))
            and is_terminal(b.state)
            and b.created.ToSeconds() < created_before
        ][:limit]
        for build_id in old:
            del self._builds[build_id]
            self._events.pop(build_id, None)
        self._requests = {r: b for r, b in self._requests.items() if b not in old}
        old_placements = [i for i, p in self._placements.items() if _seconds(p) < created_before][:limit]
        for placement_id in old_placements:
            del self._placements[placement_id]
        self._vouchers = {k: v for k, v in self._vouchers.items() if v[2] >= created_before}
        return len(old) + len(old_placements)

    def put_voucher(self, node: str, key: str, size: int, files: int, at: float) -> None:
        self._vouchers[(node, key)] = (size, files, at)

    def vouchers(self, node: str) -> dict[str, tuple[int, int]]:
        return {k: (v[0], v[1]) for (n, k), v in self._vouchers.items() if n == node}

    def close(self) -> None:
        pass

    def finished_since(self, created_after: float) -> list[build_pb2.Build]:
        builds = [build_pb2.Build.FromString(raw) for raw in self._builds.values()]
        return sorted(
            (b for b in builds if is_terminal(b.state) and b.created.ToSeconds() >= created_after),
            key=lambda b: b.created.ToSeconds(),
        )

    def put_placement(self, record: build_pb2.Build) -> None:
        self._placements[record.id] = build_pb2.Build.FromString(record.SerializeToString())

    def placements_since(self, created_after: float) -> list[build_pb2.Build]:
        return sorted((p for p in self._placements.values() if _seconds(p) >= created_after), key=_seconds)

    def append_node_event(self, event: NodeEvent) -> None:
        self._node_events.append(event)

    def node_events(self) -> list[NodeEvent]:
        return sorted(self._node_events, key=lambda e: e.t)

    def prune_node_events(self, before: float) -> int:
        last: dict[str, NodeEvent] = {}
        for e in self._node_events:
            if e.t < before:
                last[e.node] = e
        kept = [e for e in self._node_events if e.t >= before or last.get(e.node) is e]
        removed = len(self._node_events) - len(kept)
        self._node_events = kept
        return removed


def _seconds(build: build_pb2.Build) -> float:
    """When the build was created, in Unix seconds and their fraction (a second's builds list in order)."""
    return build.created.seconds + build.created.nanos / 1e9


def _add_owner_column(db: sqlite3.Connection) -> None:
    """Give a state file from before ListBuilds its ``owner`` column (filled from each build's record) and
    the index a caller's listing reads."""
    if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(builds)")}:
        db.execute("ALTER TABLE builds ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        for build_id, record in db.execute("SELECT id, record FROM builds").fetchall():
            owner = build_pb2.Build.FromString(record).owner
            if owner:
                db.execute("UPDATE builds SET owner = ? WHERE id = ?", (owner, build_id))
    db.execute("CREATE INDEX IF NOT EXISTS builds_owner_created ON builds(owner, created)")
