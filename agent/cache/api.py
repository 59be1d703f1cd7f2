"""What the agent needs from its build cache, whatever the format behind it.

The agent's build runner and its stream to the coordinator talk only to :class:`BuildCache`.
All methods block (file and network I/O); the agent calls them from a bounded thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class SkippedEntry:
    """An entry a restore passed over, and why (the build's log says so)."""

    key: str
    reason: str


class CacheError(Exception):
    """A restore or save failed; the message names the key and, where known, the path."""

    skipped: tuple[SkippedEntry, ...] = ()
    """A failed restore: every entry it passed over, and why (the first one's error is this one)."""


class NotFound(CacheError):
    """No entry has the key (or none matches any restore prefix)."""


class UnsafeTree(CacheError):
    """A tree to save, or a manifest to restore, holds something stoker refuses (names the path)."""


class BlobStoreUnavailable(CacheError):
    """The blob store refused or timed out after retries."""


class CorruptEntry(CacheError):
    """Stored bytes disagree with the manifest: a truncated or corrupt pack, a frame that decompresses
    past its declared size, a digest mismatch, or a missing pack (names the entry and the path)."""


class MissingObject(CorruptEntry):
    """A pack or manifest an entry names is not in the blob store: the entry is broken for every reader
    (bytes that do not match may instead have been damaged on the way, see :mod:`.bad_entries`)."""


@dataclass(frozen=True)
class EntryWriter:
    """Who wrote an entry (issue 16: entries record who wrote them): recorded in its manifest (version 3),
    its key pointer and the node's entry record. Every field is "" when unknown (a save by hand, an open
    coordinator, an entry written before version 3)."""

    principal: str = ""
    """The name of the token that submitted the build (``BuildResult.owner``)."""
    tenant: str = ""
    trust: str = ""
    """``protected`` or ``untrusted``, as the coordinator derived it from the token."""
    build_id: str = ""
    node: str = ""
    """The node that saved the entry."""

    FIELDS = ("principal", "tenant", "trust", "build_id", "node")
    MAX_FIELD = 256

    def to_dict(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in self.FIELDS if getattr(self, f)}

    @classmethod
    def valid(cls, d: object) -> bool:
        """Whether ``d`` is what :meth:`to_dict` writes: an object of known fields, short strings."""
        return isinstance(d, dict) and all(
            k in cls.FIELDS and isinstance(v, str) and len(v) <= cls.MAX_FIELD for k, v in d.items()
        )

    @classmethod
    def from_dict(cls, d: object) -> EntryWriter | None:
        """The writer a manifest, pointer or record names; None when it names none or is not
        :meth:`valid`."""
        if not cls.valid(d) or not d:
            return None
        assert isinstance(d, dict)
        return cls(**d)

    def describe(self) -> str:
        """``principal@tenant/trust (build on node)``, leaving out what is unknown."""
        who = self.principal or "?"
        if self.tenant or self.trust:
            who += f"@{self.tenant}/{self.trust}" if self.trust else f"@{self.tenant}"
        where = " on ".join(x for x in (self.build_id, self.node) if x)
        return f"{who} ({where})" if where else who


@dataclass(frozen=True)
class EntryInfo:
    """One complete entry in the node's local store, as reported in the inventory."""

    key: str
    bytes: int
    files: int
    created: float
    """When the entry was saved (unix seconds); the newest under a prefix wins."""
    last_used: float
    """When a build or a prewarm last used the entry (unix seconds)."""
    sketch: tuple[int, ...] = ()
    """Bottom-k MinHash (k = 64) of the entry's distinct content digests: the 64 smallest of the first
    8 bytes (big-endian) of each distinct SHA-256, ascending. Two entries' sketches estimate the share of
    content they have in common (the scheduler's ``similarity``). Empty when unknown."""
    writer: EntryWriter | None = None
    """Who saved the entry, when its manifest says (version 3)."""


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    bytes_per_s: float = 0.0


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class RestoreResult:
    warmth: str
    """"warm" (exact key was local), "partial" (an older entry under a prefix was local, or an entry
    under a prefix was fetched), or "cold" (everything fetched, or nothing found)."""
    restored_key: str | None
    """The entry restored; None when nothing matched (the build starts empty)."""
    bytes_fetched: int
    bytes_restored: int
    files_restored: int
    seconds: float
    skipped: tuple[SkippedEntry, ...] = ()
    """Entries found for the key or its prefixes but not used (corrupt, refused, other roots, marked bad
    before), in the order they were met; the restore went on to the next candidate."""


@dataclass(frozen=True)
class SaveResult:
    key: str
    saved: bool
    """False when the exact key already existed with the same content (nothing to do)."""
    bytes: int
    files: int
    bytes_uploaded: int
    seconds: float


InventoryListener = Callable[[int, Sequence[EntryInfo], Sequence[str]], None]
"""Called after every change of the local store with (generation, upserted entries, removed keys)."""


class BuildCache(Protocol):
    def open(self) -> None:
        """Recover after a crash (remove staging leftovers, drop half-written entries), rebuild the index."""

    def inventory(self) -> tuple[int, list[EntryInfo]]:
        """(generation, every complete entry). Exactly what the store holds and would serve."""

    def subscribe(self, listener: InventoryListener) -> None:
        """Call ``listener`` after each change; generations increase by one per change."""

    def restore(
        self,
        key: str,
        restore_keys: Sequence[str],
        workspace: Path,
        paths: Sequence[str],
        progress: ProgressFn | None = None,
        *,
        also_exact: Sequence[str] = (),
    ) -> RestoreResult:
        """Materialize the entry for ``key`` (else the first of ``also_exact`` that exists, else the newest
        under the first matching prefix) into ``workspace``, so that each of ``paths`` exists there.
        Fetches into the local store first."""

    def save(
        self,
        key: str,
        workspace: Path,
        paths: Sequence[str],
        progress: ProgressFn | None = None,
        *,
        writer: EntryWriter | None = None,
    ) -> SaveResult:
        """Snapshot ``paths`` of ``workspace`` as the entry ``key`` in the local store and the blob store,
        recording ``writer`` as who wrote it."""

    def prewarm(self, key: str, restore_keys: Sequence[str]) -> RestoreResult:
        """Fetch the entry into the local store without materializing it anywhere."""

    def evict(self, key: str) -> bool:
        """Drop an entry from the local store. False if it was not there."""

    def disk_usage(self) -> tuple[int, int]:
        """(bytes used by the store, bytes still free under its budget)."""

    @property
    def evicted_bytes_total(self) -> int:
        """Bytes evicted since the store was opened."""
