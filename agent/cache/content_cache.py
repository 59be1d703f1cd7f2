"""The content-addressed build cache: :class:`ContentCache` implements :class:`~.api.BuildCache`.

It composes the node's :class:`~.store.LocalStore` (compressed frames and manifests on the SSD) and a
:class:`~.blobs.BlobStore` (the shared store) with one part per job:

- :mod:`.restore` — restores and prewarms (finding entries with :mod:`.resolve`, fetching with
  :mod:`.fetch`, writing files with :mod:`.hydrate`, publishing with :mod:`.staging`);
- :mod:`.save` — saves (walking with :mod:`.tree`, packing with :mod:`.packing`, skipping content the blob
  store holds with :mod:`.known_content`);
- :mod:`.ready_trees` — entries kept also unpacked, so that warm and partial restores move files;
- :mod:`.stat_cache` — what each workspace held after its last restore or save;
- :mod:`.maintenance` — verifying entries, collecting unused blobs.

The blob store's layout is described in :mod:`.save`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from stoker.agent.cache import tree
from stoker.agent.cache.api import (
    CacheError,
    EntryInfo,
    EntryWriter,
    InventoryListener,
    ProgressFn,
    RestoreResult,
    SaveResult,
)
from stoker.agent.cache.bad_entries import BadEntries
from stoker.agent.cache.blobs import BlobStore, decode_key, encode_key
from stoker.agent.cache.known_content import KnownContent
from stoker.agent.cache.maintenance import add_missing_sketches, verify_entry
from stoker.agent.cache.ready_trees import ReadyTrees
from stoker.agent.cache.resolve import EntryResolver, LocalManifests
from stoker.agent.cache.restore import Restorer
from stoker.agent.cache.save import Saver
from stoker.agent.cache.stat_cache import StatCaches
from stoker.agent.cache.store import LocalStore
from stoker.agent.cache.writers import ActiveWriter, WriterKind, choose_writer, load_compiled


class ContentCache:
    """Save and restore entries; see the module docstring. Thread-safe."""

    def __init__(
        self,
        store: LocalStore,
        blobs: BlobStore,
        *,
        workers: int = 0,
        syncfs: bool = False,
        fetch_concurrency: int = 8,
        writer: WriterKind = "auto",
        ready_trees: int = 1,
        node: str = "",
    ) -> None:
        """``workers``: threads (or processes) writing restored files, 0 for one per core; ``writer``: which
        code writes them (see :mod:`.writers`; the process's umask is read now); ``ready_trees``: how many
        entries to keep also unpacked, 0 for none (see :mod:`.ready_trees`); ``node``: this node's name,
        recorded in the marks of bad entries it shares."""
        self.store = store
        self.blobs = blobs
        self.workers = workers or os.cpu_count() or 1
        self.writing = ActiveWriter(choose_writer(writer), self.workers)
        manifests = LocalManifests(store)
        resolver = EntryResolver(store, blobs, manifests)
        stat_caches = StatCaches(store, manifests)
        self.bad = BadEntries(store.root, blobs, node=node)
        self.ready = ReadyTrees(store, manifests, self.writing, keep=ready_trees)
        self.restorer = Restorer(
            store,
            blobs,
            resolver,
            self.ready,
            stat_caches,
            self.writing,
            self.bad,
            syncfs=syncfs,
            fetch_concurrency=fetch_concurrency,
        )
        self.saver = Saver(
            store,
            blobs,
            resolver,
            manifests,
            KnownContent(store, blobs, manifests, resolver),
            stat_caches,
            self.ready,
            self.workers,
            load_compiled(),
        )
        self._manifests = manifests
        self._resolver = resolver

    # -- what the agent and the operator tune ----------------------------------------------------------
    @property
    def ready_trees(self) -> int:
        """Ready trees kept (see :mod:`.ready_trees`); 0 turns them off."""
        return self.ready.keep

    @ready_trees.setter
    def ready_trees(self, keep: int) -> None:
        self.ready.keep = keep

    @property
    def processes(self) -> bool:
        """Whether restores write from forked processes (the Python writer, until a helper crashed)."""
        return self.writing.writer.forked

    @property
    def fallback_to_threads(self) -> bool:
        """When a forked writer dies without reporting an error, write the files again with threads (and
        use threads for the rest of this process's life) instead of failing the restore."""
        return self.writing.fallback_to_threads

    @fallback_to_threads.setter
    def fallback_to_threads(self, fallback: bool) -> None:
        self.writing.fallback_to_threads = fallback

    # -- BuildCache ------------------------------------------------------------------------------------
    def open(self) -> None:
        self.store.open()
        self.bad.open()
        self.ready.closing = False
        add_missing_sketches(self.store, self._manifests)

    def close(self) -> None:
        """Stop background work (a refill in progress is abandoned; open() cleans it up) and release."""
        self.ready.stop()
        self.store.close()

    def inventory(self) -> tuple[int, list[EntryInfo]]:
        return self.store.inventory()

    def subscribe(self, listener: InventoryListener) -> None:
        self.store.subscribe(listener)

    def evict(self, key: str) -> bool:
        return self.store.evict(key)

    def disk_usage(self) -> tuple[int, int]:
        return self.store.disk_usage()

    @property
    def evicted_bytes_total(self) -> int:
        return self.store.evicted_bytes_total

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
        return self.restorer.restore(
            key, restore_keys, workspace, tree.check_roots(paths), progress, also_exact=also_exact
        )

    def prewarm(self, key: str, restore_keys: Sequence[str]) -> RestoreResult:
        return self.restorer.restore(key, restore_keys, None, (), None)

    def save(
        self,
        key: str,
        workspace: Path,
        paths: Sequence[str],
        progress: ProgressFn | None = None,
        *,
        writer: EntryWriter | None = None,
    ) -> SaveResult:
        if writer is not None and not writer.node:
            writer = replace(writer, node=self.bad.node)
        return self.saver.save(key, workspace, tree.check_roots(paths), progress, writer)

    # -- beyond BuildCache -----------------------------------------------------------------------------
    def prepare_tree(self, key: str, *, background: bool = False) -> bool:
        """Unpack the local entry ``key`` as a ready tree now (see :meth:`.ReadyTrees.prepare`)."""
        return self.ready.prepare(key, background=background)

    def list_keys(self, prefix: str) -> list[dict]:
        """The blob store's keys under ``prefix``, from their pointers: key, bytes (None for pointers
        written before they said), created, writer (``{}`` when unknown). No manifest is read."""
        out: list[dict] = []
        for obj in self.blobs.list(f"keys/{encode_key(prefix)}"):
            key = decode_key(obj.name.removeprefix("keys/"))
            try:
                pointer = self._resolver.remote_pointer(key)
            except CacheError as exc:
                out.append(
                    {"key": key, "bytes": None, "created": obj.modified, "writer": {}, "error": str(exc)}
                )
                continue
            if pointer is None:
                continue
            writer = EntryWriter.from_dict(pointer.get("writer"))
            size = pointer.get("bytes")
            out.append(
                {
                    "key": key,
                    "bytes": size if isinstance(size, int) else None,
                    "created": float(pointer.get("created", obj.modified)),
                    "writer": writer.to_dict() if writer else {},
                }
            )
        return sorted(out, key=lambda e: e["key"])

    def verify(self, key: str) -> int:
        """Check every byte of the local entry ``key``; returns the files checked."""
        return verify_entry(self.store, self._resolver, self.writing, key)
