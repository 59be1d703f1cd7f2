"""Entries a restore found bad, so that no later restore chooses them again.

A restore that fails on an entry — its pointer malformed, its manifest missing, corrupt or refused, its
roots not the ones asked for, a pack missing or a frame corrupt — skips to the next candidate (issue 16:
one entry planted under a victim's restore prefix failed every victim build, on every node). The entry is
marked, and a mark names the entry's manifest: a later save of the key writes another manifest, which no
mark names, so a repaired key is used again.

Marks live in two places:

- the node's store, ``<cache.dir>/bad/<sha256 of key>-<scope>`` (JSON: key, manifest, reason, scope,
  when), read at ``open()``: this node never chooses the entry again, across restarts;
- the blob store, ``bad/<encoded key>/<manifest>.<scope>`` (JSON: the same and the node), so other nodes
  skip it without fetching it: one LIST of ``bad/<encoded prefix>`` per restore prefix they fall back to,
  one of ``bad/<encoded key>/`` per exact key they would fetch. The encoded key never holds ``/``, so the
  name is unambiguous, and the encoding of a prefix is a prefix of the encoding (as for ``keys/``).

Which failures are shared: those every reader would meet — the roots, a manifest refused although its
bytes match its name, a pack or manifest missing. Bytes that do not match their digest (a truncated range,
a corrupt frame, a manifest whose SHA-256 differs) may have been damaged on the way, on this node's path
only: those are marked on this node alone and lapse after :data:`LAPSE_S`, after which one restore tries
the entry again. A local entry that fails that way is evicted instead (the blob store's copy is tried
next).

``scope`` says for which restores a mark holds: ``all`` (the entry is corrupt or refused whatever is asked)
or ``roots-<16 hex>`` (its roots do not cover the paths asked for, which depends on the paths: the hash of
those paths). Only agents write the blob store (builds never hold its credentials), and a mark can only
make a restore skip an entry, never serve other content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stoker.agent.cache.api import CacheError
from stoker.agent.cache.blobs import BlobStore, decode_key, encode_key

log = logging.getLogger(__name__)

LAPSE_S = 3600.0
"""How long a node keeps a mark of an entry whose bytes did not match (possibly damaged in transit)."""

ALL = "all"
"""The scope of a mark that holds whatever paths a restore asks for."""


def roots_scope(roots: Sequence[str]) -> str:
    """The scope of a mark that holds only for restores of ``roots``."""
    return "roots-" + hashlib.sha256("\0".join(sorted(roots)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Mark:
    key: str
    manifest: str
    """The manifest (SHA-256) the key pointed at when the entry was found bad."""
    scope: str
    reason: str
    at: float
    node: str = ""
    until: float = 0.0
    """When the mark lapses (unix s); 0 for never."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "key": self.key,
                "manifest": self.manifest,
                "scope": self.scope,
                "reason": self.reason,
                "at": self.at,
                "node": self.node,
                "until": self.until,
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def from_json(data: bytes) -> Mark:
        d = json.loads(data)
        return Mark(
            str(d["key"]),
            str(d["manifest"]),
            str(d["scope"]),
            str(d["reason"]),
            float(d["at"]),
            str(d["node"]),
            float(d.get("until", 0.0)),
        )


def _local_name(key: str, scope: str) -> str:
    return f"{hashlib.sha256(key.encode()).hexdigest()}-{scope}"


def _remote_name(key: str, manifest: str, scope: str) -> str:
    return f"bad/{encode_key(key)}/{manifest}.{scope}"


class BadEntries:
    """The marks of one node (see the module docstring). Thread-safe."""

    def __init__(
        self, root: Path, blobs: BlobStore, *, node: str = "", clock: Callable[[], float] = time.time
    ):
        self._dir = root / "bad"
        self._blobs = blobs
        self.node = node
        self._clock = clock
        self._lock = threading.Lock()
        self._marks: dict[tuple[str, str], Mark] = {}
        """(key, scope) → the newest mark."""

    def open(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        marks: dict[tuple[str, str], Mark] = {}
        for e in os.scandir(self._dir):
            try:
                mark = Mark.from_json(Path(e.path).read_bytes())
                ok = e.name == _local_name(mark.key, mark.scope)
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if ok:
                marks[(mark.key, mark.scope)] = mark
            else:
                os.unlink(e.path)
        with self._lock:
            self._marks = marks

    def marked_here(self, key: str, manifest: str, roots: Sequence[str] | None) -> Mark | None:
        """This node's mark of ``key`` as of ``manifest`` that holds for a restore of ``roots`` (None: a
        prewarm, which asks for every root), if any."""
        scopes = [ALL] if roots is None else [ALL, roots_scope(roots)]
        now = self._clock()
        with self._lock:
            for scope in scopes:
                mark = self._marks.get((key, scope))
                if mark is not None and mark.manifest == manifest and (not mark.until or now < mark.until):
                    return mark
        return None

    def marked_remotely(self, prefix: str, roots: Sequence[str] | None) -> set[tuple[str, str]]:
        """(key, manifest) of every entry under ``prefix`` that some node marked, for a restore of
        ``roots``: one LIST. A blob store that cannot list them marks nothing (the restore still checks
        what it fetches)."""
        scopes = {ALL} if roots is None else {ALL, roots_scope(roots)}
        found: set[tuple[str, str]] = set()
        base = "bad/"
        try:
            for obj in self._blobs.list(f"{base}{encode_key(prefix)}"):
                encoded, _, rest = obj.name.removeprefix(base).partition("/")
                manifest, _, scope = rest.partition(".")
                if scope in scopes:
                    found.add((decode_key(encoded), manifest))
        except (CacheError, ValueError, UnicodeDecodeError) as exc:
            log.warning("could not list marks of bad entries under %r: %s", prefix, exc)
        return found

    def mark(
        self, key: str, manifest: str, scope: str, reason: str, *, share: bool, lapse_s: float = 0
    ) -> Mark:
        """Mark ``key`` as of ``manifest`` bad on this node (for ``lapse_s`` seconds, 0 for good) and, with
        ``share``, in the blob store (best effort: a failed PUT is logged)."""
        now = self._clock()
        mark = Mark(key, manifest, scope, reason, now, self.node, now + lapse_s if lapse_s else 0.0)
        tmp = self._dir.parent / "staging" / f"b-{uuid.uuid4().hex}"
        tmp.write_bytes(mark.to_json())
        os.replace(tmp, self._dir / _local_name(key, scope))
        with self._lock:
            self._marks[(key, scope)] = mark
        if share and manifest:
            try:
                self._blobs.put(_remote_name(key, manifest, scope), mark.to_json())
            except CacheError as exc:
                log.warning("could not share the mark of bad entry %s: %s", key, exc)
        return mark

    def marks(self) -> list[Mark]:
        with self._lock:
            return sorted(self._marks.values(), key=lambda m: (m.key, m.scope))
