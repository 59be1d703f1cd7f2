"""Looking after stored entries: checking every byte of a local entry, deleting blobs no key uses, and
giving old entry records their content sketch."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from pathlib import Path

from stoker.agent.cache import hydrate
from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, CorruptEntry, NotFound
from stoker.agent.cache.blobs import BlobStore
from stoker.agent.cache.resolve import EntryResolver, LocalManifests
from stoker.agent.cache.store import LocalStore
from stoker.agent.cache.writers import ActiveWriter

log = logging.getLogger(__name__)


def verify_entry(store: LocalStore, resolver: EntryResolver, writing: ActiveWriter, key: str) -> int:
    """Decompress every frame of a local entry and check every file's digest; returns files checked."""
    record = store.lookup(key)
    if record is None:
        raise NotFound(f"entry {key} is not in the local store")
    manifest = resolver.local(key, record.manifest, exact=True).manifest
    fds: dict[Path, int] = {}
    try:

        def locate(i: int) -> tuple[int, int]:
            fr = manifest.frames[i]
            found = store.locate((fr.pack, fr.offset))
            if found is None:
                raise CorruptEntry(f"entry {key}: frame {fr.pack}@{fr.offset} is not in the local store")
            path, lf = found
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return fds[path], lf.offset

        for i in range(len(manifest.frames)):
            locate(i)
        hydrate.write_files(
            manifest,
            list(manifest.files),
            None,
            locate,
            writer=writing.writer,
            workers=writing.workers,
            where=f"entry {key}",
        )
    finally:
        for fd in fds.values():
            os.close(fd)
    return manifest.file_count


def gc_blobs(
    blobs: BlobStore, *, grace_s: float, now: float, dry_run: bool = False, gone: Collection[str] = ()
) -> tuple[int, int]:
    """Delete packs and manifests no key points at (directly or through its manifest) and older than
    ``grace_s`` (a save in progress uploads packs before its pointer), and marks of bad entries whose key
    names another manifest now. ``gone``: key pointers (``keys/…``) to count as deleted (a dry run of
    tenant budgets left them in place). Returns (objects, bytes) deleted."""
    live_manifests: set[str] = set()
    live_packs: set[str] = set()
    pointed: set[tuple[str, str]] = set()
    """(encoded key, manifest) of every key pointer: the marks of bad entries still worth keeping."""
    for obj in blobs.list("keys/"):
        if obj.name in gone:
            continue
        try:
            pointer = json.loads(blobs.get(obj.name))
            name = str(pointer["manifest"])
            pointed.add((obj.name.removeprefix("keys/"), name))
            manifest = mf.parse(blobs.get(f"manifests/{name}"), where=obj.name)
        except (CacheError, ValueError, KeyError, TypeError) as exc:
            log.warning("gc: skipping %s: %s", obj.name, exc)
            continue
        live_manifests.add(name)
        live_packs.update(manifest.packs)
    deleted = deleted_bytes = 0
    # Marks of bad entries (bad_entries.py) whose key no longer names the marked manifest: the key was
    # saved again or is gone, so nothing will meet that entry again.
    for obj in list(blobs.list("bad/")):
        encoded, _, rest = obj.name.removeprefix("bad/").partition("/")
        if (encoded, rest.partition(".")[0]) in pointed or now - obj.modified < grace_s:
            continue
        if not dry_run:
            blobs.delete(obj.name)
        deleted += 1
        deleted_bytes += obj.size
    for kind, live in (("manifests/", live_manifests), ("packs/", live_packs)):
        for obj in list(blobs.list(kind)):
            if obj.name.removeprefix(kind) in live or now - obj.modified < grace_s:
                continue
            if not dry_run:
                blobs.delete(obj.name)
            deleted += 1
            deleted_bytes += obj.size
    return deleted, deleted_bytes


def add_missing_sketches(store: LocalStore, manifests: LocalManifests) -> None:
    """Give entry records written before content sketches existed their sketch."""
    _, entries = store.inventory()
    for info in entries:
        record = store.lookup(info.key)
        if record is not None and not record.sketch:
            manifest = manifests.get(record.manifest)
            if manifest is not None:
                store.set_sketch(info.key, mf.content_sketch(manifest))
