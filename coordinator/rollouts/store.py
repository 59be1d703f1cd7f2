"""Durable rollout state: the rollouts, the intent of each step, and each rollout's event log.

Same SQLite file as the builds (``StateSettings.path``) on a connection of its own — WAL lets both
write — plus an in-memory version for unit tests. A rollout is stored as the JSON of the pure
:class:`~stoker.coordinator.rollouts.machine.Rollout` (so adding a field needs no schema change).

**Intents.** Before the engine lets the target act on a step's desired state, it writes an intent under the
step's idempotency key (``<rollout>/<attempt>/<step>``). ``record_intent`` inserts only once: a second
write with the same key (after a restart) finds the first one and returns it unchanged, so a step is never
planned twice. ``finish_intent`` marks it done once the target converged.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stoker.coordinator.core.errors import FailedPrecondition
from stoker.coordinator.core.sqlite import open_database, unavailable_on_failure
from stoker.coordinator.rollouts.machine import Rollout


@dataclass(frozen=True)
class Intent:
    rollout_id: str
    key: str
    desired: dict[str, dict[str, int]]
    created: float
    done: float | None = None


class RolloutStore(Protocol):
    def create(self, rollout: Rollout) -> None:
        """Insert a new rollout; FailedPrecondition when its service already has an active one."""

    def save(self, rollout: Rollout) -> None: ...
    def get(self, rollout_id: str) -> Rollout | None: ...
    def list(self, service: str = "") -> builtins.list[Rollout]: ...
    def active(self) -> builtins.list[Rollout]: ...
    def record_intent(self, rollout_id: str, key: str, desired: dict, now: float) -> tuple[Intent, bool]:
        """Write the intent once; returns (intent, newly_written)."""

    def finish_intent(self, rollout_id: str, key: str, now: float) -> None: ...
    def intents(self, rollout_id: str) -> builtins.list[Intent]: ...
    def append_event(self, rollout_id: str, now: float, text: str) -> None: ...
    def events(self, rollout_id: str) -> builtins.list[tuple[float, str]]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    phase TEXT NOT NULL,
    active INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_active ON rollouts(service) WHERE active = 1;
CREATE INDEX IF NOT EXISTS rollouts_created ON rollouts(created);
CREATE TABLE IF NOT EXISTS rollout_intents (
    rollout_id TEXT NOT NULL,
    key TEXT NOT NULL,
    desired TEXT NOT NULL,
    created REAL NOT NULL,
    done REAL,
    PRIMARY KEY (rollout_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollout_events (
    rollout_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (rollout_id, seq)
) WITHOUT ROWID;
"""


def _busy(service: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"service {service} already has a rollout in progress; abort it or wait for it to end"
    )


class SqliteRolloutStore:
    """Every call holds the lock and maps SQLite failing under it to Unavailable (``core/sqlite.py``)."""

    def __init__(self, path: str | Path) -> None:
        # synchronous=FULL: an intent must survive a power cut, not just kill -9.
        self._db = open_database(path, _SCHEMA, what="rollout store", synchronous="FULL")
        self._lock = threading.Lock()

    @contextmanager
    def _call(self) -> Iterator[sqlite3.Connection]:
        with self._lock, unavailable_on_failure("rollout store"):
            yield self._db

    def create(self, rollout: Rollout) -> None:
        with self._call() as db:
            try:
                db.execute(
                    "INSERT INTO rollouts (id, service, phase, active, created, updated, record) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        rollout.id,
                        rollout.spec.service,
                        rollout.phase.value,
                        int(rollout.active),
                        rollout.created,
                        rollout.updated,
                        json.dumps(rollout.to_dict()),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise _busy(rollout.spec.service) from exc

    def save(self, rollout: Rollout) -> None:
        with self._call() as db:
            try:
                db.execute(
                    "UPDATE rollouts SET phase = ?, active = ?, updated = ?, record = ? WHERE id = ?",
                    (
                        rollout.phase.value,
                        int(rollout.active),
                        rollout.updated,
                        json.dumps(rollout.to_dict()),
                        rollout.id,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise _busy(rollout.spec.service) from exc

    def get(self, rollout_id: str) -> Rollout | None:
        with self._call() as db:
            row = db.execute("SELECT record FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return None if row is None else Rollout.from_dict(json.loads(row[0]))

    def list(self, service: str = "") -> builtins.list[Rollout]:
        with self._call() as db:
            if service:
                rows = db.execute(
                    "SELECT record FROM rollouts WHERE service = ? ORDER BY created DESC", (service,)
                ).fetchall()
            else:
                rows = db.execute("SELECT record FROM rollouts ORDER BY created DESC").fetchall()
        return [Rollout.from_dict(json.loads(r[0])) for r in rows]

    def active(self) -> builtins.list[Rollout]:
        with self._call() as db:
            rows = db.execute("SELECT record FROM rollouts WHERE active = 1 ORDER BY created").fetchall()
        return [Rollout.from_dict(json.loads(r[0])) for r in rows]

    def record_intent(self, rollout_id: str, key: str, desired: dict, now: float) -> tuple[Intent, bool]:
        with self._call() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO rollout_intents (rollout_id, key, desired, created) "
                "VALUES (?, ?, ?, ?)",
                (rollout_id, key, json.dumps(desired, sort_keys=True), now),
            )
            fresh = cur.rowcount == 1
            row = db.execute(
                "SELECT desired, created, done FROM rollout_intents WHERE rollout_id = ? AND key = ?",
                (rollout_id, key),
            ).fetchone()
        return Intent(rollout_id, key, json.loads(row[0]), row[1], row[2]), fresh

    def finish_intent(self, rollout_id: str, key: str, now: float) -> None:
        with self._call() as db:
            db.execute(
                "UPDATE rollout_intents SET done = ? WHERE rollout_id = ? AND key = ? AND done IS NULL",
                (now, rollout_id, key),
            )

    def intents(self, rollout_id: str) -> builtins.list[Intent]:
        with self._call() as db:
            rows = db.execute(
                "SELECT key, desired, created, done FROM rollout_intents WHERE rollout_id = ? "
                "ORDER BY created",
                (rollout_id,),
            ).fetchall()
        return [Intent(rollout_id, k, json.loads(d), c, done) for k, d, c, done in rows]

    def append_event(self, rollout_id: str, now: float, text: str) -> None:
        with self._call() as db:
            db.execute(
                "INSERT INTO rollout_events (rollout_id, seq, time, text) VALUES (?, "
                "(SELECT COALESCE(MAX(seq), 0) + 1 FROM rollout_events WHERE rollout_id = ?), ?, ?)",
                (rollout_id, rollout_id, now, text),
            )

    def events(self, rollout_id: str) -> builtins.list[tuple[float, str]]:
        with self._call() as db:
            rows = db.execute(
                "SELECT time, text FROM rollout_events WHERE rollout_id = ? ORDER BY seq", (rollout_id,)
            ).fetchall()
        return [(t, x) for t, x in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryRolloutStore:
    """The same behaviour in memory (unit tests, and ``state.path = ":memory:"``)."""

    def __init__(self) -> None:
        self._rollouts: dict[str, dict] = {}
        self._intents: dict[tuple[str, str], Intent] = {}
        self._events: dict[str, list[tuple[float, str]]] = {}

    def create(self, rollout: Rollout) -> None:
        if rollout.active and any(
            Rollout.from_dict(d).active and d["spec"]["service"] == rollout.spec.service
            for d in self._rollouts.values()
        ):
            raise _busy(rollout.spec.service)
        self._rollouts[rollout.id] = json.loads(json.dumps(rollout.to_dict()))

    def save(self, rollout: Rollout) -> None:
        if rollout.active and any(
            d["id"] != rollout.id
            and Rollout.from_dict(d).active
            and d["spec"]["service"] == rollout.spec.service
            for d in self._rollouts.values()
        ):
            raise _busy(rollout.spec.service)
        self._rollouts[rollout.id] = json.loads(json.dumps(rollout.to_dict()))

    def get(self, rollout_id: str) -> Rollout | None:
        d = self._rollouts.get(rollout_id)
        return None if d is None else Rollout.from_dict(d)

    def list(self, service: str = "") -> builtins.list[Rollout]:
        found = [Rollout.from_dict(d) for d in self._rollouts.values()]
        return sorted(
            (r for r in found if not service or r.spec.service == service), key=lambda r: -r.created
        )

    def active(self) -> builtins.list[Rollout]:
        return sorted(
            (r for r in (Rollout.from_dict(d) for d in self._rollouts.values()) if r.active),
            key=lambda r: r.created,
        )

    def record_intent(self, rollout_id: str, key: str, desired: dict, now: float) -> tuple[Intent, bool]:
        existing = self._intents.get((rollout_id, key))
        if existing is not None:
            return existing, False
        intent = Intent(rollout_id, key, json.loads(json.dumps(desired)), now)
        self._intents[(rollout_id, key)] = intent
        return intent, True

    def finish_intent(self, rollout_id: str, key: str, now: float) -> None:
        intent = self._intents.get((rollout_id, key))
        if intent is not None and intent.done is None:
            self._intents[(rollout_id, key)] = Intent(
                intent.rollout_id, key, intent.desired, intent.created, now
            )

    def intents(self, rollout_id: str) -> builtins.list[Intent]:
        return sorted(
            (i for (rid, _), i in self._intents.items() if rid == rollout_id), key=lambda i: i.created
        )

    def append_event(self, rollout_id: str, now: float, text: str) -> None:
        self._events.setdefault(rollout_id, []).append((now, text))

    def events(self, rollout_id: str) -> builtins.list[tuple[float, str]]:
        return list(self._events.get(rollout_id, []))

    def close(self) -> None:
        pass


def open_rollout_store(path: str) -> RolloutStore:
    return MemoryRolloutStore() if path == ":memory:" else SqliteRolloutStore(path)
