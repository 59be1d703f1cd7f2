"""Finding an entry's manifest: in the node's store (parsed once, remembered) or in the blob store, by its
exact key or, failing that, the entries under each restore-key prefix, newest first."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import (
    BlobStoreUnavailable,
    CacheError,
    CorruptEntry,
    MissingObject,
    NotFound,
    SkippedEntry,
)
from stoker.agent.cache.bad_entries import ALL, BadEntries
from stoker.agent.cache.blobs import BlobStore, decode_key, encode_key
from stoker.agent.cache.store import LocalStore

KeyPointer = dict[str, Any]
"""A key's pointer object in the blob store:
{"manifest": <sha256>, "content": <sha256>, "created": <unix s>}."""

_REMEMBERED = 8
"""Parsed manifests kept in memory (the last used)."""


@dataclass(frozen=True)
class Candidate:
    """An entry a restore may use, before its manifest is read."""

    key: str
    manifest: str
    """The manifest (SHA-256) its local record or its key pointer names."""
    exact: bool
    """Found under the key asked for (or one of ``also_exact``), not under a restore-key prefix."""
    local: bool
    """From the node's store (else from the blob store, through ``pointer``)."""
    pointer: KeyPointer | None = None


@dataclass(frozen=True)
class Resolved:
    """An entry found for a restore, with its manifest parsed and validated."""

    key: str
    manifest: mf.Manifest
    manifest_name: str
    manifest_bytes: bytes
    local: bool
    """The node's store holds the entry."""
    exact: bool
    """Found under the key asked for, not under a restore-key prefix."""


class LocalManifests:
    """Manifests the node's store holds, parsed once and remembered (they are immutable). Thread-safe."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._parsed: dict[str, mf.Manifest] = {}

    def get(self, name: str) -> mf.Manifest | None:
        """The local manifest ``name``, parsed (and remembered), or None."""
        with self._lock:
            manifest = self._parsed.get(name)
        if manifest is not None:
            return manifest
        if len(name) != 64 or not all(c in "0123456789abcdef" for c in name):
            return None
        try:
            data = (self._store.root / "manifests" / name).read_bytes()
        except (OSError, ValueError):
            return None
        if hashlib.sha256(data).hexdigest() != name:
            return None
        # Validated before the store accepted it, and its name (checked just now) is its SHA-256.
        manifest = mf.parse(data, where=f"local {name}", check=False)
        self.remember(name, manifest)
        return manifest

    def remember(self, name: str, manifest: mf.Manifest) -> None:
        """Keep ``manifest`` (just committed to the store as ``name``) parsed."""
        with self._lock:
            self._parsed[name] = manifest
            while len(self._parsed) > _REMEMBERED:
                self._parsed.pop(next(iter(self._parsed)))


class EntryResolver:
    """Looks entries up in the node's store first, then in the blob store."""

    def __init__(self, store: LocalStore, blobs: BlobStore, manifests: LocalManifests) -> None:
        self._store = store
        self._blobs = blobs
        self._manifests = manifests

    def candidates(
        self,
        key: str,
        restore_keys: Sequence[str],
        also_exact: Sequence[str],
        *,
        roots: Sequence[str] | None,
        bad: BadEntries,
        skipped: list[SkippedEntry],
    ) -> Iterator[Candidate]:
        """The entries a restore of ``roots`` (None: a prewarm) may use, best first: ``key``, then each of
        ``also_exact`` (each local, else remote), then the entries under each prefix of ``restore_keys``
        (local ones newest first, then remote ones newest first). Lazy: the caller stops at the first that
        restores, so a good first candidate costs what it did before. Entries marked bad for ``roots``
        (here or, for remote ones, by any node) and malformed key pointers are not yielded but appended to
        ``skipped``."""
        tried_local: set[str] = set()
        tried_remote: set[str] = set()
        passed: set[tuple[str, str]] = set()
        """(key, manifest) skipped as marked."""

        tried: set[tuple[str, str]] = set()
        """(key, manifest) yielded from the node's store: one that failed there and got a mark is not met
        again in the blob store (one that was evicted is: the blob store's copy may be sound)."""

        def marked(k: str, m: str, remote: Callable[[], set[tuple[str, str]]] | None) -> bool:
            if (k, m) in passed or ((k, m) in tried and bad.marked_here(k, m, roots) is not None):
                return True
            if self._is_marked(k, m, roots, bad, skipped, remote):
                passed.add((k, m))
                return True
            return False

        for exact in dict.fromkeys((key, *also_exact)):
            if not exact:  # a restore-only build: no key of its own (keys/ alone names no pointer)
                continue
            record = self._store.lookup(exact)
            if record is not None:
                tried_local.add(exact)
                if not marked(exact, record.manifest, None):
                    tried.add((exact, record.manifest))
                    yield Candidate(exact, record.manifest, True, local=True)
            tried_remote.add(exact)
            pointer = self._pointer_or_skip(exact, skipped)
            if pointer is None:
                continue
            name = str(pointer["manifest"])
            if (exact, name) in passed:
                continue  # the local entry, skipped as marked
            if not marked(exact, name, functools.partial(bad.marked_remotely, exact, roots)):
                yield Candidate(exact, name, True, local=False, pointer=pointer)
        for prefix in restore_keys:
            for record in self._store.under(prefix):
                if record.key in tried_local:
                    continue
                tried_local.add(record.key)
                if not marked(record.key, record.manifest, None):
                    tried.add((record.key, record.manifest))
                    yield Candidate(record.key, record.manifest, False, local=True)
            listed = sorted(
                self._blobs.list(f"keys/{encode_key(prefix)}"),
                key=lambda o: (o.modified, o.name),
                reverse=True,
            )
            remote_marks: set[tuple[str, str]] | None = None

            def marked_under(p: str = prefix) -> set[tuple[str, str]]:
                nonlocal remote_marks
                if remote_marks is None:
                    remote_marks = bad.marked_remotely(p, roots)
                return remote_marks

            for obj in listed:
                found = decode_key(obj.name.removeprefix("keys/"))
                if found in tried_remote:
                    continue
                tried_remote.add(found)
                pointer = self._pointer_or_skip(found, skipped)
                if pointer is None:
                    continue
                name = str(pointer["manifest"])
                if (found, name) in passed:
                    continue  # the local entry, skipped as marked
                if not marked(found, name, marked_under):
                    yield Candidate(found, name, False, local=False, pointer=pointer)

    def _pointer_or_skip(self, key: str, skipped: list[SkippedEntry]) -> KeyPointer | None:
        """The pointer of ``key``; None (and ``skipped`` says why) when it is malformed."""
        try:
            return self.remote_pointer(key)
        except BlobStoreUnavailable:
            raise
        except CacheError as exc:
            skipped.append(SkippedEntry(key, str(exc)))
            return None

    @staticmethod
    def _is_marked(
        key: str,
        manifest: str,
        roots: Sequence[str] | None,
        bad: BadEntries,
        skipped: list[SkippedEntry],
        remote: Callable[[], set[tuple[str, str]]] | None,
    ) -> bool:
        mark = bad.marked_here(key, manifest, roots)
        if mark is not None:
            skipped.append(SkippedEntry(key, f"marked bad on this node: {mark.reason}"))
            return True
        if remote is not None and (key, manifest) in remote():
            bad.mark(key, manifest, ALL, "marked bad by another node", share=False)
            skipped.append(SkippedEntry(key, "marked bad by another node"))
            return True
        return False

    def remember(self, name: str, manifest: mf.Manifest) -> None:
        """Keep a manifest fetched, validated and now committed to the node's store parsed, so that the
        background refill and the next restore of it do not parse it again."""
        self._manifests.remember(name, manifest)

    def load(self, candidate: Candidate) -> Resolved:
        """The candidate's manifest, parsed (and, from the blob store, checked): raises :class:`CacheError`
        when it is missing, corrupt or refused."""
        if candidate.local:
            return self.local(candidate.key, candidate.manifest, exact=candidate.exact)
        assert candidate.pointer is not None
        return self.remote(candidate.key, candidate.pointer, exact=candidate.exact)

    def local(self, key: str, name: str, *, exact: bool) -> Resolved:
        """The local entry ``key`` (which the store holds), whose manifest is ``name``."""
        record = self._store.lookup(key)
        assert record is not None, f"entry {key} is in the local store"
        data = self._store.read_manifest(record)
        manifest = self._manifests.get(name)
        if manifest is None:
            raise CorruptEntry(f"entry {key}: its local manifest {name} does not match its digest")
        return Resolved(key, manifest, name, data, local=True, exact=exact)

    def remote_pointer(self, key: str) -> KeyPointer | None:
        """The blob store's pointer of ``key``, or None when it has none."""
        try:
            raw = self._blobs.get(f"keys/{encode_key(key)}")
        except NotFound:
            return None
        malformed = f"entry {key}: its key pointer in {self._blobs.describe()} is malformed"
        try:
            pointer = json.loads(raw)
        except ValueError as exc:
            raise CacheError(malformed) from exc
        if not isinstance(pointer, dict) or "manifest" not in pointer:
            raise CacheError(malformed)
        return pointer

    def remote(self, key: str, pointer: KeyPointer, *, exact: bool) -> Resolved:
        """The entry ``pointer`` names, its manifest fetched from the blob store and checked."""
        name = str(pointer["manifest"])
        try:
            data = self._blobs.get(f"manifests/{name}")
        except NotFound as exc:
            raise MissingObject(
                f"entry {key}: manifest {name} is missing from {self._blobs.describe()}"
            ) from exc
        if hashlib.sha256(data).hexdigest() != name:
            raise CorruptEntry(f"entry {key}: manifest {name} does not match its digest")
        manifest = mf.parse(data, where=f"{key} ({name})")
        return Resolved(key, manifest, name, data, local=False, exact=exact)
