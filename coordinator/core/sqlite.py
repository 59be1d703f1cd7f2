"""The coordinator's SQLite file: how both stores open it, and what its failures mean to a caller.

The builds (``core/state.py``) and the rollouts (``rollouts/store.py``) keep their tables in one file
(``StateSettings.path``), each on a connection of its own; WAL lets both write. A database that fails
under a call — locked past the busy timeout, disk full, read-only, corrupt — is a backend that is down:
both stores raise :class:`~stoker.coordinator.core.errors.Unavailable`, which the RPC layer's table turns
into ``UNAVAILABLE`` (a caller may retry), never an ``INTERNAL`` error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from stoker.coordinator.core.errors import Unavailable

BUSY_TIMEOUT_MS = 5000
"""How long a write waits for the other connection's lock before the call fails as Unavailable."""


def open_database(
    path: str | Path, schema: str, *, what: str, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
) -> sqlite3.Connection:
    """Open (creating it and its folder if needed) the SQLite file at ``path`` in WAL mode and apply
    ``schema`` (idempotent ``CREATE … IF NOT EXISTS`` statements). ``what`` names the store in errors.

    The connection runs in autocommit (``isolation_level=None``) and may be used from any thread: each
    store serializes its calls with a lock of its own."""
    path = Path(path)
    db: sqlite3.Connection | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        if db is not None:
            db.close()
        raise Unavailable(f"cannot open {what} {path}: {exc}") from exc
    return db


@contextmanager
def unavailable_on_failure(what: str) -> Iterator[None]:
    """Turn SQLite failing under the block into :class:`Unavailable` (``raise … from`` the SQLite error).

    Left as they are: ``IntegrityError`` (a constraint the store turns into a domain error of its own)
    and ``ProgrammingError`` / ``InterfaceError`` (a bug in the caller, such as using a closed connection:
    INTERNAL, logged with its traceback)."""
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise
    except sqlite3.DatabaseError as exc:  # OperationalError (locked, full, read-only, I/O) and corruption
        raise Unavailable(f"{what}: {exc}") from exc
