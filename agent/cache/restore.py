"""Restoring an entry into a workspace (or, for a prewarm, only into the node's store).

A restore finds the entry (:mod:`.resolve`), uses the frames the node's store holds, fetches the others
(:mod:`.fetch`) while the writers already work on the local ones (:mod:`.hydrate`), builds the tree in a
staging directory — from scratch, or from the ready tree sharing the most content (:mod:`.ready_trees`) —
publishes it (:mod:`.staging`), commits the entry to the store, and records the workspace's stat cache.
The warm case with a ready tree of the exact key moves it into place and writes no file.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path

from stoker.agent.cache import hydrate
from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import (
    BlobStoreUnavailable,
    CacheError,
    CorruptEntry,
    MissingObject,
    ProgressFn,
    RestoreResult,
    SkippedEntry,
)
from stoker.agent.cache.bad_entries import ALL, LAPSE_S, BadEntries, roots_scope
from stoker.agent.cache.blobs import BlobStore
from stoker.agent.cache.fetch import plan_fetch, run_fetch
from stoker.agent.cache.ready_trees import ReadyTrees
from stoker.agent.cache.resolve import Candidate, EntryResolver, Resolved
from stoker.agent.cache.staging import new_stage, publish, remove_tree
from stoker.agent.cache.stat_cache import StatCaches
from stoker.agent.cache.store import FrameId, LocalFrame, LocalStore
from stoker.agent.cache.write_tasks import FetchFn, FrameLocator
from stoker.agent.cache.writer_forked import HelperCrashed
from stoker.agent.cache.writers import ActiveWriter

log = logging.getLogger(__name__)

MAX_FAILED_CANDIDATES = 4
"""Bad candidates one restore tries before it gives up (the build then starts cold): each costs a manifest
GET and perhaps a fetch, and every one tried is marked, so the next restore starts past them."""


@dataclass
class _Frames:
    """Where a restore reads each frame it needs: the store's files, or the one file it fetches into."""

    local: dict[int, tuple[Path, LocalFrame]]
    missing: list[int]
    fetched: dict[int, LocalFrame] = field(default_factory=dict)
    new_file: dict[str, Path] = field(default_factory=dict)
    """The fetch's file (name in the store → path in staging), once there is one."""
    fetched_bytes: int = 0

    def path_of(self, i: int) -> tuple[Path, LocalFrame]:
        if i in self.fetched:
            return self.new_file[self.fetched[i].file], self.fetched[i]
        return self.local[i]


class Restorer:
    """Restores and prewarms entries of one node's store."""

    def __init__(
        self,
        store: LocalStore,
        blobs: BlobStore,
        resolver: EntryResolver,
        ready: ReadyTrees,
        stat_caches: StatCaches,
        writing: ActiveWriter,
        bad: BadEntries,
        *,
        syncfs: bool,
        fetch_concurrency: int,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._resolver = resolver
        self._ready = ready
        self._stat_caches = stat_caches
        self._writing = writing
        self._bad = bad
        self.syncfs = syncfs
        """Call syncfs once before publishing a restored tree."""
        self.fetch_concurrency = fetch_concurrency
        """Ranged GETs in flight at once."""

    def restore(
        self,
        key: str,
        restore_keys: Sequence[str],
        workspace: Path | None,
        roots: tuple[str, ...],
        progress: ProgressFn | None,
        *,
        also_exact: Sequence[str] = (),
    ) -> RestoreResult:
        """Restore ``roots`` of ``key`` (else of the first of ``also_exact`` that exists, else of the newest
        entry under ``restore_keys``) into ``workspace``; with ``workspace`` None, only bring the entry into
        the node's store (a prewarm)."""
        start = time.monotonic()
        if workspace is not None:
            fast = self._restore_ready(key, workspace, roots, start)
            if fast is not None:
                return fast
        skipped: list[SkippedEntry] = []
        failures: list[CacheError] = []
        for candidate in self._resolver.candidates(
            key,
            restore_keys,
            also_exact,
            roots=roots if workspace is not None else None,
            bad=self._bad,
            skipped=skipped,
        ):
            if len(failures) >= MAX_FAILED_CANDIDATES:
                skipped.append(
                    SkippedEntry(
                        candidate.key, f"not tried: {len(failures)} candidates failed already in this restore"
                    )
                )
                break
            result = self._try(candidate, key, workspace, roots, progress, start, skipped, failures)
            if result is not None:
                return replace(result, skipped=tuple(skipped))
        if failures:
            # No candidate restored and some failed: the restore fails with the first failure (as before
            # there were several candidates); the build starts without a cache, and the entries that
            # failed are marked, so the next restore skips them and starts cold or from another entry.
            first = failures[0]
            first.skipped = tuple(skipped)
            raise first
        return RestoreResult("cold", None, 0, 0, 0, time.monotonic() - start, tuple(skipped))

    def _try(
        self,
        candidate: Candidate,
        key: str,
        workspace: Path | None,
        roots: tuple[str, ...],
        progress: ProgressFn | None,
        start: float,
        skipped: list[SkippedEntry],
        failures: list[CacheError],
    ) -> RestoreResult | None:
        """Restore ``candidate``; None when it is bad (then it is marked or evicted, ``skipped`` says why
        and ``failures`` holds the error). Errors that are not the entry's (the blob store down, no room,
        an unsafe workspace) raise."""
        try:
            resolved = self._resolver.load(candidate)
        except BlobStoreUnavailable:
            raise
        except CacheError as exc:  # pointer names a missing, corrupt or refused manifest
            self._bad_entry(candidate, ALL, str(exc), skipped, exc)
            failures.append(exc)
            return None
        if workspace is not None and not _holds(resolved.manifest, roots):
            reason = f"its roots {list(resolved.manifest.roots)} do not hold {list(roots)}"
            self._bad_entry(candidate, roots_scope(roots), reason, skipped, None)
            failures.append(CacheError(f"entry {candidate.key}: {reason}"))
            return None
        try:
            return self._restore_entry(resolved, key, workspace, roots, progress, start)
        except CorruptEntry as exc:
            self._bad_entry(candidate, ALL, str(exc), skipped, exc)
            failures.append(exc)
            return None

    def _bad_entry(
        self,
        candidate: Candidate,
        scope: str,
        reason: str,
        skipped: list[SkippedEntry],
        exc: CacheError | None,
    ) -> None:
        """Keep ``candidate`` from being chosen again (see :mod:`.bad_entries`): a local entry that is
        corrupt is evicted (the blob store's copy may be sound); one whose fault every reader would meet is
        marked here and in the blob store; one whose bytes did not match (perhaps damaged on the way) is
        marked here for a while."""
        log.warning("cache entry %s skipped: %s", candidate.key, reason)
        skipped.append(SkippedEntry(candidate.key, reason))
        if candidate.local and scope == ALL:
            self._store.evict(candidate.key)
        elif exc is None or isinstance(exc, MissingObject) or not isinstance(exc, CorruptEntry):
            self._bad.mark(candidate.key, candidate.manifest, scope, reason, share=True)
        else:
            self._bad.mark(candidate.key, candidate.manifest, scope, reason, share=False, lapse_s=LAPSE_S)

    def _restore_entry(
        self,
        resolved: Resolved,
        key: str,
        workspace: Path | None,
        roots: tuple[str, ...],
        progress: ProgressFn | None,
        start: float,
    ) -> RestoreResult:
        if workspace is not None and resolved.exact and resolved.key != key:
            fast = self._restore_ready(resolved.key, workspace, roots, start)  # another scope's entry
            if fast is not None:
                return fast
        if workspace is None and resolved.local and resolved.exact:
            self._store.touch(resolved.key)
            return RestoreResult("warm", resolved.key, 0, 0, 0, time.monotonic() - start)
        manifest = resolved.manifest
        files = manifest.under(roots) if workspace is not None else list(manifest.files)
        needed = sorted(set(map(mf.CHUNK_FRAME, chain.from_iterable(map(mf.CHUNKS, files)))))
        frames = self._frames(manifest, needed)
        with (
            self._store.pinned(sorted({lf.file for _, lf in frames.local.values()})),
            self._store.staging() as staging,
        ):
            self._write_from(resolved, files, workspace, roots, frames, needed, staging, progress)
            self._commit(resolved, frames)
        if workspace is not None:
            self._stat_caches.record_manifest(workspace, roots, resolved.key, resolved.manifest_name)
            self._ready.schedule_refill(resolved.key)
        if resolved.local and resolved.exact:
            warmth = "warm"
        elif resolved.exact and not frames.local:
            warmth = "cold"
        else:
            warmth = "partial"
        return RestoreResult(
            warmth=warmth,
            restored_key=resolved.key,
            bytes_fetched=frames.fetched_bytes,
            bytes_restored=sum(map(mf.SIZE, files)),
            files_restored=list(map(mf.TYPE, files)).count(mf.FILE),
            seconds=time.monotonic() - start,
        )

    def _restore_ready(
        self, key: str, workspace: Path, roots: tuple[str, ...], start: float
    ) -> RestoreResult | None:
        """Warm restore by moving the key's ready tree into ``workspace``: no file is written."""
        record = self._store.lookup(key)
        if record is None or not self._ready.keep:
            return None
        ready = self._store.tree_for(key, record.manifest)
        if ready is None or set(ready.roots) != set(roots):
            return None
        stage = new_stage(workspace)
        try:
            if self._store.claim_tree(key, record.manifest, stage) is None:
                return None
            present = {r for r in roots if os.path.lexists(stage / r)}
            publish(stage, workspace, present, f"entry {key}", sync=self.syncfs)
        finally:
            remove_tree(stage)
        self._store.touch(key)
        self._stat_caches.record_manifest(workspace, roots, key, record.manifest)
        self._ready.schedule_refill(key)
        return RestoreResult(
            warmth="warm",
            restored_key=key,
            bytes_fetched=0,
            bytes_restored=record.bytes,
            files_restored=record.files,
            seconds=time.monotonic() - start,
        )

    def _frames(self, manifest: mf.Manifest, needed: Sequence[int]) -> _Frames:
        """Which of the ``needed`` frames the store holds (with the length the manifest says)."""
        local: dict[int, tuple[Path, LocalFrame]] = {}
        for i in needed:
            fr = manifest.frames[i]
            found = self._store.locate((fr.pack, fr.offset))
            if found is not None and found[1].length == fr.length:
                local[i] = found
        return _Frames(local, [i for i in needed if i not in local])

    def _write_from(
        self,
        resolved: Resolved,
        files: list[mf.FileEntry],
        workspace: Path | None,
        roots: tuple[str, ...],
        frames: _Frames,
        needed: Sequence[int],
        staging: Path,
        progress: ProgressFn | None,
    ) -> None:
        """Write ``files`` from their frames, fetching the missing ones into ``staging`` meanwhile."""
        where = f"entry {resolved.key}"
        fetch = self._start_fetch(resolved, files, frames, staging, where) if frames.missing else None
        fds: dict[Path, int] = {}
        try:

            def locate(i: int) -> tuple[int, int]:
                path, lf = frames.path_of(i)
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                return fds[path], lf.offset

            for i in needed:  # open every source up front: lookups from worker threads only read
                locate(i)
            # The writers start on frames already local while the missing ones are fetched; each task is
            # released as soon as its frames have arrived.
            self._materialize(
                resolved,
                files,
                workspace,
                roots,
                locate,
                progress,
                where,
                fetch=fetch,
                missing=frames.missing,
            )
        finally:
            for fd in fds.values():
                os.close(fd)

    def _start_fetch(
        self, resolved: Resolved, files: list[mf.FileEntry], frames: _Frames, staging: Path, where: str
    ) -> FetchFn:
        """Make room for the missing frames, create the file they go into, and return the fetch to run."""
        manifest = resolved.manifest
        need = sum(manifest.frames[i].length for i in frames.missing) + len(resolved.manifest_bytes)
        self._store.make_room(need, what=where, for_key=resolved.key)
        name = f"f-{uuid.uuid4().hex}"
        path = staging / name
        plan = plan_fetch(manifest, frames.missing, path, name)
        frames.fetched = plan.placed
        frames.new_file[name] = path

        def fetch(on_frame: Callable[[int], None]) -> None:
            frames.fetched_bytes = run_fetch(
                self._blobs, self.fetch_concurrency, manifest, files, plan, path, where, on_frame
            )

        return fetch

    def _materialize(
        self,
        resolved: Resolved,
        files: list[mf.FileEntry],
        workspace: Path | None,
        roots: tuple[str, ...],
        locate: FrameLocator,
        progress: ProgressFn | None,
        where: str,
        *,
        fetch: FetchFn | None,
        missing: Sequence[int],
    ) -> None:
        try:
            self._write(
                resolved, files, workspace, roots, locate, progress, where, fetch=fetch, missing=missing
            )
        except HelperCrashed as exc:
            if not self._writing.fallback_to_threads:
                raise
            # Every frame is in place by now: write again with threads, and keep to threads in this process
            # from now on (see ActiveWriter).
            log.warning("%s; writing with threads instead, and from now on in this process", exc)
            self._writing.keep_to_threads()
            self._write(resolved, files, workspace, roots, locate, progress, where, claim=False)

    def _write(
        self,
        resolved: Resolved,
        files: list[mf.FileEntry],
        workspace: Path | None,
        roots: tuple[str, ...],
        locate: FrameLocator,
        progress: ProgressFn | None,
        where: str,
        *,
        fetch: FetchFn | None = None,
        missing: Sequence[int] = (),
        claim: bool = True,
    ) -> None:
        """Write ``files`` into a staging directory and publish it (with no workspace: only check them)."""
        manifest, writer, workers = resolved.manifest, self._writing.writer, self._writing.workers
        if workspace is None:
            hydrate.write_files(
                manifest,
                files,
                None,
                locate,
                writer=writer,
                workers=workers,
                where=where,
                fetch=fetch,
                missing=missing,
            )
            return
        stage = new_stage(workspace)
        try:
            present = {r for r in roots if any(f.path == r or f.path.startswith(r + "/") for f in files)}
            base = self._ready.claim_closest(files, roots, stage) if self._ready.keep and claim else None
            if base is not None:
                hydrate.apply_diff(
                    manifest,
                    base,
                    files,
                    stage,
                    locate,
                    writer=writer,
                    workers=workers,
                    where=where,
                    progress=progress,
                    fetch=fetch,
                    missing=missing,
                )
            else:
                stage.mkdir()
                for r in present:
                    parent = os.path.dirname(r)
                    if parent and not any(f.path == parent for f in files):
                        os.makedirs(stage / parent, exist_ok=True)
                hydrate.write_files(
                    manifest,
                    files,
                    stage,
                    locate,
                    writer=writer,
                    workers=workers,
                    where=where,
                    progress=progress,
                    fetch=fetch,
                    missing=missing,
                )
            publish(stage, workspace, present, where, sync=self.syncfs)
        finally:
            remove_tree(stage)

    def _commit(self, resolved: Resolved, frames: _Frames) -> None:
        """Commit the entry to the store when it was not local or frames were fetched (if every frame is
        local now); else mark it used."""
        if resolved.local and not frames.missing:
            self._store.touch(resolved.key)
            return
        manifest = resolved.manifest
        # Files proven only through their frames' digests are not checked against their own digests: a
        # manifest could pair a digest with other bytes (its writer's choice, harmless in its own entry),
        # and until the background ready tree checks them no save may reuse its content by digest.
        before = self._store.lookup(resolved.key)
        files_checked = not any(fr.digest for fr in manifest.frames) or (
            before is not None and before.manifest == resolved.manifest_name and before.files_checked
        )
        frames_map: dict[FrameId, LocalFrame] = {}
        for i, fr in enumerate(manifest.frames):
            if i in frames.fetched:
                frames_map[(fr.pack, fr.offset)] = frames.fetched[i]
            elif i in frames.local:
                frames_map[(fr.pack, fr.offset)] = frames.local[i][1]
            else:
                found = self._store.locate((fr.pack, fr.offset))
                if found is None:
                    return
                frames_map[(fr.pack, fr.offset)] = found[1]
        self._store.commit(
            key=resolved.key,
            created=manifest.created,
            manifest_name=resolved.manifest_name,
            manifest_bytes=resolved.manifest_bytes,
            frames=frames_map,
            staged_files=frames.new_file,
            total_bytes=manifest.total_bytes,
            files=manifest.file_count,
            sketch=mf.content_sketch(manifest),
            writer=manifest.writer,
            files_checked=files_checked,
        )
        self._resolver.remember(resolved.manifest_name, manifest)


def _holds(manifest: mf.Manifest, roots: tuple[str, ...]) -> bool:
    """Whether an entry was saved from (at least) the paths a restore asks for: an entry with other roots
    would restore nothing the build expects, so it is no candidate (as actions/cache keeps the paths in an
    entry's version). A manifest without roots (none are written today) counts when it holds any of them."""
    if manifest.roots:
        return set(roots) <= set(manifest.roots)
    return bool(manifest.under(roots))
