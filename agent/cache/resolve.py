"""Finding an entry's manifest: in the node's store (parsed once, remembered) or in the blob store, by its
exact key or, failing that, the newest entry under a restore-key prefix."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, CorruptEntry, NotFound
from stoker.agent.cache.blobs import BlobStore, ObjectInfo, decode_key, encode_key
from stoker.agent.cache.store import LocalStore

KeyPointer = dict[str, Any]
"""A key's pointer object in the blob store:
{"manifest": <sha256>, "content": <sha256>, "created": <unix s>}."""

_REMEMBERED = 8
"""Parsed manifests kept in memory (the last used)."""


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

    def resolve(
        self, key: str, restore_keys: Sequence[str], also_exact: Sequence[str] = ()
    ) -> Resolved | None:
        """``key``, else the first of ``also_exact`` that exists (each local, else remote), else the newest
        entry under the first prefix of ``restore_keys`` that has one (local, else remote); None when there
        is none."""
        for exact in (key, *also_exact):
            if not exact:  # a restore-only build: no key of its own (keys/ alone names no pointer)
                continue
            record = self._store.lookup(exact)
            if record is not None:
                return self.local(record.key, record.manifest, exact=True)
            remote = self.remote_pointer(exact)
            if remote is not None:
                return self.remote(exact, remote, exact=True)
        for prefix in restore_keys:
            record = self._store.newest_under(prefix)
            if record is not None:
                return self.local(record.key, record.manifest, exact=False)
            newest: ObjectInfo | None = None
            for obj in self._blobs.list(f"keys/{encode_key(prefix)}"):
                if newest is None or (obj.modified, obj.name) > (newest.modified, newest.name):
                    newest = obj
            if newest is not None:
                found = decode_key(newest.name.removeprefix("keys/"))
                pointer = self.remote_pointer(found)
                if pointer is not None:
                    return self.remote(found, pointer, exact=False)
        return None

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
            raise CorruptEntry(
                f"entry {key}: manifest {name} is missing from {self._blobs.describe()}"
            ) from exc
        if hashlib.sha256(data).hexdigest() != name:
            raise CorruptEntry(f"entry {key}: manifest {name} does not match its digest")
        manifest = mf.parse(data, where=f"{key} ({name})")
        return Resolved(key, manifest, name, data, local=False, exact=exact)
