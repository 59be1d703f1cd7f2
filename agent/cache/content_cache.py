"""The content-addressed build cache: :class:`ContentCache` implements :class:`~.api.BuildCache`.

It composes the node's :class:`~.store.LocalStore` (compressed frames and manifests on the SSD), a
:class:`~.blobs.BlobStore` (the shared store), :mod:`.tree` (walking and the stat cache), :mod:`.packing`
(new content into packs) and :mod:`.hydrate` (frames into files on every core). Warm and
partial restores use *ready trees* (an entry unpacked in the background and moved, never linked, into the
next workspace; see :mod:`.store`). Object layout in the blob store::

    packs/<sha256>        independent zstd frames; immutable
    manifests/<sha256>    compressed manifest, binary version 2 (see :mod:`.manifest`); immutable
    keys/<encoded key>    {"manifest": <sha256>, "content": <sha256>, "created": <unix s>}; written last

A save uploads packs, then the manifest, then the key pointer, so a pointer always names a complete
manifest whose packs exist; when two agents save one key at once, the last pointer written wins and both
candidates are complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stoker.agent.cache import hydrate, packing, tree
from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import (
    BlobStoreUnavailable, CacheError, CorruptEntry, EntryInfo, InventoryListener, NotFound, ProgressFn,
    RestoreResult, SaveResult, UnsafeTree,
)
from stoker.agent.cache.blobs import BlobStore, ByteRange, encode_key, merge_ranges
from stoker.agent.cache.store import FrameId, LocalFrame, LocalStore

log = logging.getLogger(__name__)

MERGE_GAP = 256 << 10
"""Missing frames closer than this in one pack are fetched by one GET (the gap is read and dropped)."""
MAX_READ = 8 << 20
"""Longest single ranged GET."""
STAGING_PREFIX = ".stoker-staging-"


@dataclass(frozen=True)
class _Resolved:
    key: str
    manifest: mf.Manifest
    manifest_name: str
    manifest_bytes: bytes
    local: bool
    exact: bool


KnownChunks = tuple[tuple[mf.Frame, int, int], ...]


class ContentCache:
    """Save and restore entries; see the module docstring. Thread-safe."""

    def __init__(self, store: LocalStore, blobs: BlobStore, *, workers: int = 0, syncfs: bool = False,
                 fetch_concurrency: int = 8, processes: bool = True, ready_trees: int = 1) -> None:
        self.store = store
        self.processes = processes
        """Without the compiled writer (:data:`.hydrate.FAST`): write restored files from ``workers``
        processes (forked per restore) rather than threads. The compiled writer always uses threads."""
        self.fallback_to_threads = True
        """When a forked writer dies without reporting an error, write the files again with threads (and
        use threads for the rest of this process's life) instead of failing the restore."""
        self.ready_trees = ready_trees
        """Keep this many *ready trees* (see :mod:`.store`): after a restore or save of a key, its files
        are unpacked again in the background (one core at nice 19) so the next restore of that key
        moves them into its workspace, and a restore of a newer key under the same prefix changes only
        what differs. 0 turns them off."""
        self.blobs = blobs
        self.workers = workers or os.cpu_count() or 1
        self.syncfs = syncfs
        self.fetch_concurrency = fetch_concurrency
        self._known: dict[str, KnownChunks] = {}
        self._known_from: set[str] = set()
        self._packs_present: set[str] = set()
        self._parsed: dict[str, mf.Manifest] = {}
        """Recently used local manifests, parsed and validated (they are immutable)."""
        self._lock = threading.Lock()
        self._refill_queue: list[str] = []
        self._refill_cv = threading.Condition(self._lock)
        self._refill_thread: threading.Thread | None = None
        self._refill_pid = 0
        self._closing = False

    # -- BuildCache ------------------------------------------------------------------------------------
    def open(self) -> None:
        self.store.open()
        self._closing = False
        _, entries = self.store.inventory()
        for info in entries:  # records written before sketches existed
            record = self.store.lookup(info.key)
            if record is not None and not record.sketch:
                manifest = self._local_manifest(record.manifest)
                if manifest is not None:
                    self.store.set_sketch(info.key, mf.content_sketch(manifest))

    def close(self) -> None:
        """Stop background work (a refill in progress is abandoned; open() cleans it up) and release."""
        with self._lock:
            self._closing = True
            self._refill_queue.clear()
            self._refill_cv.notify_all()
            pid, thread = self._refill_pid, self._refill_thread
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if thread is not None:
            thread.join()
        self._refill_thread = None
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

    def restore(self, key: str, restore_keys: Sequence[str], workspace: Path, paths: Sequence[str],
                progress: ProgressFn | None = None) -> RestoreResult:
        return self._restore(key, restore_keys, workspace, tree.check_roots(paths), progress)

    def prewarm(self, key: str, restore_keys: Sequence[str]) -> RestoreResult:
        return self._restore(key, restore_keys, None, (), None)

    # -- restore ---------------------------------------------------------------------------------------
    def _restore(self, key: str, restore_keys: Sequence[str], workspace: Path | None,
                 roots: tuple[str, ...], progress: ProgressFn | None) -> RestoreResult:
        start = time.monotonic()
        if workspace is not None:
            fast = self._restore_ready(key, workspace, roots, start)
            if fast is not None:
                return fast
        resolved = self._resolve(key, restore_keys)
        if resolved is None:
            return RestoreResult("cold", None, 0, 0, 0, time.monotonic() - start)
        if workspace is None and resolved.local and resolved.exact:
            self.store.touch(resolved.key)
            return RestoreResult("warm", resolved.key, 0, 0, 0, time.monotonic() - start)
        manifest = resolved.manifest
        where = f"entry {resolved.key}"
        files = _select(manifest, roots) if workspace is not None else list(manifest.files)
        needed = sorted({c.frame for f in files for c in f.chunks})
        local: dict[int, tuple[Path, LocalFrame]] = {}
        for i in needed:
            fr = manifest.frames[i]
            found = self.store.locate((fr.pack, fr.offset))
            if found is not None and found[1].length == fr.length:
                local[i] = found
        missing = [i for i in needed if i not in local]
        with self.store.pinned(sorted({lf.file for _, lf in local.values()})), \
                self.store.staging() as staging:
            new_file: dict[str, Path] = {}
            fetched: dict[int, LocalFrame] = {}
            fetch = None
            fetch_total = [0]
            if missing:
                need = sum(manifest.frames[i].length for i in missing) + len(resolved.manifest_bytes)
                self.store.make_room(need, what=where)
                name = f"f-{uuid.uuid4().hex}"
                path = staging / name
                fetched, reads = self._plan_fetch(manifest, missing, path, name)
                new_file[name] = path

                def fetch(on_frame, reads=reads, path=path) -> None:
                    fetch_total[0] = self._run_fetch(manifest, files, fetched, reads, path, where, on_frame)
            fds: dict[Path, int] = {}
            try:
                def locate(i: int) -> tuple[int, int]:
                    path, lf = (new_file[fetched[i].file], fetched[i]) if i in fetched else local[i]
                    if path not in fds:
                        fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    return fds[path], lf.offset

                for i in needed:  # open every source up front: lookups from worker threads only read
                    locate(i)
                # The writers start on frames already local while the missing ones are fetched; each
                # task is released as soon as its frames have arrived.
                self._materialize(resolved, files, workspace, roots, locate, progress, where, start,
                                  fetch=fetch, missing=missing)
            finally:
                for fd in fds.values():
                    os.close(fd)
            fetched_bytes = fetch_total[0]
            if not resolved.local or missing:
                frames_map: dict[FrameId, LocalFrame] = {}
                all_local = True
                for i, fr in enumerate(manifest.frames):
                    if i in fetched:
                        frames_map[(fr.pack, fr.offset)] = fetched[i]
                    elif i in local:
                        frames_map[(fr.pack, fr.offset)] = local[i][1]
                    else:
                        found = self.store.locate((fr.pack, fr.offset))
                        if found is None:
                            all_local = False
                            break
                        frames_map[(fr.pack, fr.offset)] = found[1]
                if all_local:
                    self.store.commit(key=resolved.key, created=manifest.created,
                                      manifest_name=resolved.manifest_name,
                                      manifest_bytes=resolved.manifest_bytes, frames=frames_map,
                                      staged_files=new_file, total_bytes=manifest.total_bytes,
                                      files=manifest.file_count, sketch=mf.content_sketch(manifest))
            else:
                self.store.touch(resolved.key)
        if workspace is not None:
            self._write_stat_cache(workspace, roots, resolved.key, resolved.manifest_name)
            self._schedule_refill(resolved.key)
        if resolved.local and resolved.exact:
            warmth = "warm"
        elif resolved.exact and not local:
            warmth = "cold"
        else:
            warmth = "partial"
        written = [f for f in files if f.type == mf.FILE]
        return RestoreResult(warmth=warmth, restored_key=resolved.key, bytes_fetched=fetched_bytes,
                             bytes_restored=sum(f.size for f in written), files_restored=len(written),
                             seconds=time.monotonic() - start)

    def _materialize(self, resolved: _Resolved, files: list[mf.FileEntry], workspace: Path | None,
                     roots: tuple[str, ...], locate: hydrate.FrameLocator, progress: ProgressFn | None,
                     where: str, start: float, *, fetch=None, missing: Sequence[int] = ()) -> None:
        try:
            self._write(resolved, files, workspace, roots, locate, progress, where, fetch=fetch, missing=missing)
        except hydrate.HelperCrashed as exc:
            if not self.fallback_to_threads:
                raise
            # Seen in the agent: a child forked while gRPC's threads were busy died of SIGSEGV in gRPC's
            # at-fork handler. Every frame is in place by now; write again with threads, and keep to
            # threads in this process from now on.
            log.warning("%s; writing with threads instead, and from now on in this process", exc)
            self.processes = False
            self._write(resolved, files, workspace, roots, locate, progress, where, claim=False)

    def _write(self, resolved: _Resolved, files: list[mf.FileEntry], workspace: Path | None,
               roots: tuple[str, ...], locate: hydrate.FrameLocator, progress: ProgressFn | None,
               where: str, *, fetch=None, missing: Sequence[int] = (), claim: bool = True) -> None:
        pending = {"fetch": fetch, "missing": missing}
        if workspace is None:
            hydrate.write_files(resolved.manifest, files, None, locate, workers=self.workers, where=where,
                                processes=self.processes, **pending)
            return
        stage = self._new_stage(workspace)
        try:
            present = {r for r in roots if any(f.path == r or f.path.startswith(r + "/") for f in files)}
            base = self._claim_base(resolved, files, roots, stage) if self.ready_trees and claim else None
            if base is not None:
                hydrate.apply_diff(resolved.manifest, base, files, stage, locate, workers=self.workers,
                                   where=where, progress=progress, processes=self.processes, **pending)
            else:
                stage.mkdir()
                for r in present:
                    parent = os.path.dirname(r)
                    if parent and not any(f.path == parent for f in files):
                        os.makedirs(stage / parent, exist_ok=True)
                hydrate.write_files(resolved.manifest, files, stage, locate, workers=self.workers,
                                    where=where, progress=progress, processes=self.processes, **pending)
            self._publish(stage, workspace, present, where)
        finally:
            _remove_tree(stage)

    def _new_stage(self, workspace: Path) -> Path:
        workspace.mkdir(parents=True, exist_ok=True)
        for leftover in workspace.glob(STAGING_PREFIX + "*"):
            _remove_tree(leftover)
        return workspace / f"{STAGING_PREFIX}{uuid.uuid4().hex}"

    def _publish(self, stage: Path, workspace: Path, present: set[str], where: str) -> None:
        if self.syncfs:
            hydrate.syncfs(stage)
        for r in sorted(present):
            _check_no_symlink_ancestors(workspace, r, where)
            target = workspace / r
            target.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(target):
                os.rename(target, stage / f".replaced-{uuid.uuid4().hex}")
            os.rename(stage / r, target)

    # -- ready trees -----------------------------------------------------------------------------------
    def _restore_ready(self, key: str, workspace: Path, roots: tuple[str, ...],
                       start: float) -> RestoreResult | None:
        """Warm restore by moving the key's ready tree into ``workspace``: no file is written."""
        record = self.store.lookup(key)
        if record is None or not self.ready_trees:
            return None
        ready = self.store.tree_for(key, record.manifest)
        if ready is None or set(ready.roots) != set(roots):
            return None
        stage = self._new_stage(workspace)
        try:
            if self.store.claim_tree(key, record.manifest, stage) is None:
                return None
            present = {r for r in roots if os.path.lexists(stage / r)}
            self._publish(stage, workspace, present, f"entry {key}")
        finally:
            _remove_tree(stage)
        self.store.touch(key)
        self._write_stat_cache(workspace, roots, key, record.manifest)
        self._schedule_refill(key)
        return RestoreResult(warmth="warm", restored_key=key, bytes_fetched=0, bytes_restored=record.bytes,
                             files_restored=record.files, seconds=time.monotonic() - start)

    def _claim_base(self, resolved: _Resolved, files: list[mf.FileEntry], roots: tuple[str, ...],
                    stage: Path) -> list[mf.FileEntry] | None:
        """Claim the ready tree sharing the most content with ``files`` into ``stage``; returns the files
        it holds (under ``roots``), or None when no tree shares at least half of the target's bytes."""
        target = {f.digest for f in files if f.type == mf.FILE}
        want = set(roots)
        best: tuple[int, object, list[mf.FileEntry]] | None = None
        for ready in self.store.trees():
            if not want <= set(ready.roots):
                continue
            manifest = self._local_manifest(ready.manifest)
            if manifest is None:
                continue
            held = _select(manifest, roots)
            shared = sum(f.size for f in held if f.type == mf.FILE and f.digest in target)
            if best is None or shared > best[0]:
                best = (shared, ready, held)
        total = sum(f.size for f in files if f.type == mf.FILE)
        if best is None or best[0] * 2 < total:
            return None
        _, ready, held = best
        if self.store.claim_tree(ready.key, ready.manifest, stage) is None:  # type: ignore[attr-defined]
            return None
        return held

    def _schedule_refill(self, key: str) -> None:
        """Unpack ``key`` as a ready tree in the background unless one exists (see ``ready_trees``)."""
        if not self.ready_trees:
            return
        with self._lock:
            if self._closing or key in self._refill_queue:
                return
            self._refill_queue.append(key)
            if self._refill_thread is None:
                self._refill_thread = threading.Thread(target=self._refill_loop, name="stoker-cache-refill",
                                                       daemon=True)
                self._refill_thread.start()
            self._refill_cv.notify_all()

    def _refill_loop(self) -> None:
        try:  # this thread alone at the lowest priority (Linux: a thread is a schedulable task)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
        while True:
            with self._lock:
                while not self._refill_queue and not self._closing:
                    self._refill_cv.wait()
                if self._closing:
                    return
                key = self._refill_queue.pop(0)
            try:
                self.prepare_tree(key, background=True)
            except Exception:  # noqa: BLE001 - a refill is an optimization; the next restore writes files
                if not self._closing:
                    log.warning("could not prepare a ready tree of %s", key, exc_info=True)

    def prepare_tree(self, key: str, *, background: bool = False) -> bool:
        """Unpack the local entry ``key`` (every digest checked) as a ready tree; False if it is not local,
        already has one, or does not fit. ``background``: at nice 19 on one core (this thread with the
        compiled writer, else a forked process)."""
        record = self.store.lookup(key)
        if record is None or self.store.tree_for(key, record.manifest) is not None:
            return False
        manifest = self._local_manifest(record.manifest)
        if manifest is None:
            return False
        where = f"entry {key} (ready tree)"
        frames = {}
        for i, fr in enumerate(manifest.frames):
            found = self.store.locate((fr.pack, fr.offset))
            if found is None or found[1].length != fr.length:
                return False
            frames[i] = found
        nbytes = sum(-(-f.size // 4096) * 4096 if f.type == mf.FILE else 4096 * (f.type == mf.DIR)
                     for f in manifest.files)
        fds: dict[Path, int] = {}
        with self.store.pinned(sorted({lf.file for _, lf in frames.values()})), self.store.staging() as staging:
            tree_dir = staging / "tree"
            tree_dir.mkdir()
            try:
                for path, _ in frames.values():
                    if path not in fds:
                        fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

                def locate(i: int) -> tuple[int, int]:
                    path, lf = frames[i]
                    return fds[path], lf.offset

                files = list(manifest.files)
                if background and hydrate.FAST is not None:
                    # The compiled writer runs without the GIL: this thread (nice 19, see _refill_loop)
                    # does the work on one core, and no process is forked beside gRPC's threads.
                    hydrate.write_files(manifest, files, tree_dir, locate, workers=1, where=where,
                                        processes=False, stop=lambda: self._closing)
                elif background:
                    self._in_background_process(lambda: hydrate.write_files(
                        manifest, files, tree_dir, locate, workers=1, where=where, processes=False))
                else:
                    hydrate.write_files(manifest, files, tree_dir, locate, workers=self.workers, where=where,
                                        processes=self.processes)
            finally:
                for fd in fds.values():
                    os.close(fd)
            return self.store.add_tree(tree_dir, key=key, manifest=record.manifest, roots=manifest.roots,
                                       nbytes=nbytes, keep_trees=self.ready_trees)

    def _in_background_process(self, work) -> None:
        """Run ``work`` in a forked child at nice 19 (it dies with this process) and wait for it."""
        with self._lock:
            if self._closing:
                raise CacheError("the cache is closing")
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    hydrate.become_helper(parent)
                    os.nice(19)
                    work()
                    code = 0
                finally:
                    os._exit(code)
            self._refill_pid = pid
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            with self._lock:
                self._refill_pid = 0
        if os.waitstatus_to_exitcode(status) != 0:
            raise CacheError(f"ready tree: the background process failed ({os.waitstatus_to_exitcode(status)})")

    def _plan_fetch(self, manifest: mf.Manifest, missing: list[int], path: Path,
                    name: str) -> tuple[dict[int, LocalFrame], list[tuple[str, ByteRange, list[int], int]]]:
        """Where each of ``missing`` frames will sit in the new file ``path`` (created now, so that
        readers can open it before the bytes arrive), and the GETs: nearby ranges merged."""
        by_pack: dict[str, list[int]] = defaultdict(list)
        for i in missing:
            by_pack[manifest.frames[i].pack].append(i)
        reads: list[tuple[str, ByteRange, list[int], int]] = []
        out_offset = 0
        placed: dict[int, LocalFrame] = {}
        for pack, frames in sorted(by_pack.items()):
            ranges = [ByteRange(manifest.frames[i].offset, manifest.frames[i].length) for i in frames]
            for rng, members in merge_ranges(ranges, gap=MERGE_GAP, max_length=MAX_READ):
                idx = [frames[m] for m in members]
                reads.append((pack, rng, idx, out_offset))
                for i in idx:
                    placed[i] = LocalFrame(name, out_offset, manifest.frames[i].length)
                    out_offset += manifest.frames[i].length
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        return placed, reads

    def _run_fetch(self, manifest: mf.Manifest, files: list[mf.FileEntry], placed: dict[int, LocalFrame],
                   reads: list[tuple[str, ByteRange, list[int], int]], path: Path, where: str,
                   on_frame) -> int:
        """Run the GETs, several at once, into ``path``; calls ``on_frame(i)`` (from the fetching threads)
        once frame ``i`` is in place. Returns the bytes fetched."""
        first_path = {}
        for f in files:
            for c in f.chunks:
                first_path.setdefault(manifest.frames[c.frame].pack, f.path)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        total = 0
        lock = threading.Lock()

        def one(read: tuple[str, ByteRange, list[int], int]) -> None:
            nonlocal total
            pack, rng, idx, _ = read
            try:
                data = self.blobs.get_range(f"packs/{pack}", rng.offset, rng.length)
            except NotFound as exc:
                raise CorruptEntry(f"{where}: pack {pack} (holding {first_path.get(pack)}) is missing "
                                   f"from {self.blobs.describe()}") from exc
            except BlobStoreUnavailable as exc:
                raise BlobStoreUnavailable(f"{where}: fetching pack {pack} (holding "
                                           f"{first_path.get(pack)}): {exc}") from exc
            if len(data) != rng.length:
                raise CorruptEntry(f"{where}: pack {pack} (holding {first_path.get(pack)}) is truncated: "
                                   f"{len(data)} of {rng.length} bytes at offset {rng.offset}")
            view = memoryview(data)
            for i in idx:
                fr = manifest.frames[i]
                chunk = view[fr.offset - rng.offset:fr.offset - rng.offset + fr.length]
                os.pwrite(fd, chunk, placed[i].offset)
            with lock:
                total += len(data)
            for i in idx:
                on_frame(i)

        try:
            with ThreadPoolExecutor(max_workers=self.fetch_concurrency, thread_name_prefix="stoker-fetch") as ex:
                for _ in ex.map(one, sorted(reads, key=lambda r: -r[1].length)):
                    pass
        finally:
            os.close(fd)
        return total

    def _resolve(self, key: str, restore_keys: Sequence[str]) -> _Resolved | None:
        record = self.store.lookup(key)
        if record is not None:
            return self._local(record.key, record.manifest, exact=True)
        remote = self._remote_pointer(key)
        if remote is not None:
            return self._remote(key, remote, exact=True)
        for prefix in restore_keys:
            record = self.store.newest_under(prefix)
            if record is not None:
                return self._local(record.key, record.manifest, exact=False)
            newest = None
            for obj in self.blobs.list(f"keys/{encode_key(prefix)}"):
                if newest is None or (obj.modified, obj.name) > (newest.modified, newest.name):
                    newest = obj
            if newest is not None:
                from stoker.agent.cache.blobs import decode_key

                found = decode_key(newest.name.removeprefix("keys/"))
                pointer = self._remote_pointer(found)
                if pointer is not None:
                    return self._remote(found, pointer, exact=False)
        return None

    def _local(self, key: str, name: str, *, exact: bool) -> _Resolved:
        record = self.store.lookup(key)
        assert record is not None
        data = self.store.read_manifest(record)
        manifest = self._local_manifest(name)
        if manifest is None:
            raise CorruptEntry(f"entry {key}: its local manifest {name} does not match its digest")
        return _Resolved(key, manifest, name, data, local=True, exact=exact)

    def _remote_pointer(self, key: str) -> dict | None:
        try:
            raw = self.blobs.get(f"keys/{encode_key(key)}")
        except NotFound:
            return None
        try:
            pointer = json.loads(raw)
            str(pointer["manifest"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"entry {key}: its key pointer in {self.blobs.describe()} is malformed") from exc
        return pointer

    def _remote(self, key: str, pointer: dict, *, exact: bool) -> _Resolved:
        name = str(pointer["manifest"])
        try:
            data = self.blobs.get(f"manifests/{name}")
        except NotFound as exc:
            raise CorruptEntry(f"entry {key}: manifest {name} is missing from {self.blobs.describe()}") from exc
        if hashlib.sha256(data).hexdigest() != name:
            raise CorruptEntry(f"entry {key}: manifest {name} does not match its digest")
        manifest = mf.parse(data, where=f"{key} ({name})")
        return _Resolved(key, manifest, name, data, local=False, exact=exact)

    def _write_stat_cache(self, workspace: Path, roots: tuple[str, ...], key: str, manifest: str, *,
                          recorded_ns: int | None = None) -> None:
        """Record what this workspace now holds — the files of ``roots`` of ``manifest`` — as the stat
        cache for the next save, written last (see :func:`tree.load_stat_cache`). ``recorded_ns``: a
        moment before which every file was as the manifest says (default: now)."""
        path = self.store.workspace_file(workspace)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(tree.stat_cache_bytes({}, recorded_ns or time.time_ns(), key=key, manifest=manifest,
                                              workspace=str(workspace.resolve()), from_manifest=True,
                                              roots=list(roots)))
        os.replace(tmp, path)
        _prune_stat_caches(path.parent, keep=64)

    def _stat_records(self, cache_path: Path) -> tuple[dict[str, tree.StatRecord], int, str | None]:
        """(records, recorded_ns, name of the manifest the workspace was restored from or saved as)."""
        records, recorded_ns, extra = tree.load_stat_cache(cache_path)
        name = str(extra.get("manifest", "")) or None
        if extra.get("from_manifest"):
            manifest = self._local_manifest(name or "")
            if manifest is None:  # evicted since: every file is hashed again
                return {}, 0, None
            records = tree.records_from_manifest(manifest, tuple(extra.get("roots", ())))
        return records, recorded_ns, name

    def _unchanged(self, roots: tuple[str, ...], walked: list[tree.WalkedPath], digests: dict[str, str],
                   name: str | None) -> mf.Manifest | None:
        """The local manifest ``name`` if the walked tree is exactly its content (paths, types, modes,
        mtimes, sizes, digests, link targets), else None."""
        manifest = self._local_manifest(name) if name else None
        if manifest is None or manifest.roots != roots or len(manifest.files) != len(walked):
            return None
        if [(w.path, w.type, w.mode, w.mtime_ns, w.size, w.target) for w in walked] != \
                [(f.path, f.type, f.mode, f.mtime_ns, f.size, f.target) for f in manifest.files]:
            return None
        if [digests[w.path] for w in walked if w.type == mf.FILE] != \
                [f.digest for f in manifest.files if f.type == mf.FILE]:
            return None
        return manifest

    def _local_manifest(self, name: str) -> mf.Manifest | None:
        """A manifest the local store holds, parsed (and remembered), or None."""
        with self._lock:
            manifest = self._parsed.get(name)
        if manifest is not None:
            return manifest
        if len(name) != 64 or not all(c in "0123456789abcdef" for c in name):
            return None
        try:
            data = (self.store.root / "manifests" / name).read_bytes()
        except (OSError, ValueError):
            return None
        if hashlib.sha256(data).hexdigest() != name:
            return None
        # Validated before the store accepted it, and its name (checked just now) is its SHA-256.
        manifest = mf.parse(data, where=f"local {name}", check=False)
        with self._lock:
            self._parsed[name] = manifest
            while len(self._parsed) > 8:
                self._parsed.pop(next(iter(self._parsed)))
        return manifest

    # -- save ------------------------------------------------------------------------------------------
    def save(self, key: str, workspace: Path, paths: Sequence[str],
             progress: ProgressFn | None = None) -> SaveResult:
        start = time.monotonic()
        started_ns = time.time_ns()
        roots = tree.check_roots(paths)
        walked = tree.walk(workspace, roots)
        if not walked:
            raise CacheError(f"entry {key}: none of {list(roots)} exists in {workspace}")
        cache_path = self.store.workspace_file(workspace)
        stat_cache, recorded_ns, last_manifest = self._stat_records(cache_path)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="stoker-save") as pool:
            digests, _ = tree.digests(workspace, walked, stat_cache, recorded_ns, pool)
            previous = self._remote_pointer(key)
            # Unchanged since the last restore or save of this workspace, and the key still names that
            # manifest: nothing to pack, build or upload (a stat walk and one GET of the pointer).
            manifest = None
            if previous is not None and str(previous.get("manifest")) == last_manifest:
                manifest = self._unchanged(roots, walked, digests, last_manifest)
            if manifest is not None:
                record = self.store.lookup(key)
                if record is not None and record.manifest == last_manifest:
                    self.store.touch(key)
                else:
                    self._commit_local(key, manifest, None, {}, str(last_manifest))
                self._write_stat_cache(workspace, roots, key, str(last_manifest), recorded_ns=started_ns)
                regular = [w for w in walked if w.type == mf.FILE]
                return SaveResult(key=key, saved=False, bytes=sum(w.size for w in regular),
                                  files=len(regular), bytes_uploaded=0, seconds=time.monotonic() - start)
            known = self._known_chunks(previous)
            items: dict[str, packing.ContentItem] = {}
            for w in walked:
                if w.type == mf.FILE and w.size and digests[w.path] not in known \
                        and digests[w.path] not in items:
                    items[digests[w.path]] = packing.ContentItem(digests[w.path], w.size, w.path,
                                                                 workspace / w.path)
            item_list = list(items.values())
            plans = packing.plan_packs(item_list)
            frames: list[mf.Frame] = []
            frame_index: dict[FrameId, int] = {}
            new_chunks: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
            uploaded = 0
            with self.store.staging() as staging, \
                    ThreadPoolExecutor(max_workers=2, thread_name_prefix="stoker-upload") as uploader:
                staged: dict[str, Path] = {}
                uploads = []
                done_bytes = 0
                total_new = sum(i.size for i in item_list)
                for n, plan in enumerate(plans):
                    written = packing.write_pack(plan, item_list, staging / f"pack-{n}", pool)
                    staged[f"p-{written.name}"] = written.path
                    uploads.append(uploader.submit(self._upload_pack, written))
                    uploaded += written.size
                    for fplan, wf in zip(plan.frames, written.frames):
                        fid = (written.name, wf.offset)
                        frame_index[fid] = len(frames)
                        frames.append(mf.Frame(written.name, wf.offset, wf.length, wf.raw_size))
                        pos = 0
                        for piece in fplan.pieces:
                            new_chunks[item_list[piece.item].digest].append(
                                (frame_index[fid], pos, piece.length))
                            pos += piece.length
                    done_bytes += plan.raw_size
                    if progress is not None:
                        progress(_progress(done_bytes, total_new, start))
                for u in uploads:
                    uploaded -= u.result()
                manifest = self._build_manifest(key, roots, walked, digests, known, frames, frame_index,
                                                new_chunks)
                content_id = _content_id(manifest)
                if previous is not None and previous.get("content") == content_id:
                    saved = False
                    record = self.store.lookup(key)
                    manifest_name = str(previous["manifest"])
                    if record is None or record.manifest != manifest_name:
                        self._commit_local(key, manifest, None, staged, manifest_name)
                    else:
                        self.store.touch(key)
                else:
                    saved = True
                    data = mf.encode(manifest)
                    manifest_name = hashlib.sha256(data).hexdigest()
                    self.blobs.put(f"manifests/{manifest_name}", data)
                    self.blobs.put(f"keys/{encode_key(key)}", json.dumps(
                        {"manifest": manifest_name, "content": content_id, "created": manifest.created}).encode())
                    uploaded += len(data)
                    self._commit_local(key, manifest, data, staged, manifest_name)
        record = self.store.lookup(key)
        if record is not None and record.manifest == manifest_name and self._unchanged(
                roots, walked, digests, manifest_name) is not None:
            # The local manifest is exactly what was walked: name it instead of writing 25k records.
            self._write_stat_cache(workspace, roots, key, manifest_name, recorded_ns=started_ns)
        else:
            records = {w.path: tree.StatRecord(w.size, w.mtime_ns, w.ino, w.ctime_ns, digests[w.path])
                       for w in walked if w.type == mf.FILE}
            tmp = cache_path.with_name(f".tmp-{uuid.uuid4().hex}")
            tmp.write_bytes(tree.stat_cache_bytes(records, started_ns, key=key, manifest=manifest_name,
                                                  workspace=str(workspace.resolve())))
            os.replace(tmp, cache_path)
        self._schedule_refill(key)
        regular = [w for w in walked if w.type == mf.FILE]
        return SaveResult(key=key, saved=saved, bytes=sum(w.size for w in regular), files=len(regular),
                          bytes_uploaded=uploaded if saved else 0, seconds=time.monotonic() - start)

    def _upload_pack(self, written: packing.WrittenPack) -> int:
        """Upload a pack unless the blob store has it; returns the bytes *not* uploaded."""
        name = f"packs/{written.name}"
        if self.blobs.exists(name):
            return written.size
        self.blobs.put_file(name, written.path)
        with self._lock:
            self._packs_present.add(written.name)
        return 0

    def _commit_local(self, key: str, manifest: mf.Manifest, data: bytes | None, staged: dict[str, Path],
                      manifest_name: str) -> None:
        if data is None:
            data = self.blobs.get(f"manifests/{manifest_name}")
            manifest = mf.parse(data, where=f"{key} ({manifest_name})")
        frames_map: dict[FrameId, LocalFrame] = {}
        used: dict[str, Path] = {}
        for fr in manifest.frames:
            local_name = f"p-{fr.pack}"
            if local_name in staged:
                frames_map[(fr.pack, fr.offset)] = LocalFrame(local_name, fr.offset, fr.length)
                used[local_name] = staged[local_name]
                continue
            found = self.store.locate((fr.pack, fr.offset))
            if found is None:
                log.info("entry %s saved to the blob store but not kept locally: frames missing", key)
                return
            frames_map[(fr.pack, fr.offset)] = found[1]
        need = sum(p.stat().st_size for p in used.values()) + len(data)
        self.store.make_room(need, what=f"entry {key}")
        self.store.commit(key=key, created=manifest.created, manifest_name=manifest_name,
                          manifest_bytes=data, frames=frames_map, staged_files=used,
                          total_bytes=manifest.total_bytes, files=manifest.file_count,
                          sketch=mf.content_sketch(manifest))
        self._learn(manifest_name, manifest)
        with self._lock:
            self._parsed[manifest_name] = manifest
            while len(self._parsed) > 8:
                self._parsed.pop(next(iter(self._parsed)))

    def _known_chunks(self, previous: dict | None) -> dict[str, KnownChunks]:
        """Digest → where the blob store holds it, from local manifests and the key's current one."""
        _, entries = self.store.inventory()
        for info in entries:
            record = self.store.lookup(info.key)
            if record is not None and record.manifest not in self._known_from:
                local = self._local_manifest(record.manifest)
                if local is not None:
                    self._learn(record.manifest, local)
        if previous is not None and str(previous["manifest"]) not in self._known_from:
            try:
                resolved = self._remote(str(previous.get("key", "")) or "(previous)", previous, exact=True)
                self._learn(resolved.manifest_name, resolved.manifest)
            except CacheError as exc:
                log.warning("ignoring the previous manifest of this key: %s", exc)
        with self._lock:
            packs = {fr.pack for chunks in self._known.values() for fr, _, _ in chunks}
            unchecked = packs - self._packs_present
        for pack in unchecked:
            if self.blobs.exists(f"packs/{pack}"):
                with self._lock:
                    self._packs_present.add(pack)
        with self._lock:
            return {d: c for d, c in self._known.items() if all(fr.pack in self._packs_present for fr, _, _ in c)}

    def _learn(self, name: str, manifest: mf.Manifest) -> None:
        with self._lock:
            if name in self._known_from:
                return
            self._known_from.add(name)
            for f in manifest.files:
                if f.type == mf.FILE and f.chunks and f.digest not in self._known:
                    self._known[f.digest] = tuple((manifest.frames[c.frame], c.raw_offset, c.raw_length)
                                                  for c in f.chunks)

    def _build_manifest(self, key: str, roots: tuple[str, ...], walked: list[tree.WalkedPath],
                        digests: dict[str, str], known: dict[str, KnownChunks], frames: list[mf.Frame],
                        frame_index: dict[FrameId, int],
                        new_chunks: dict[str, list[tuple[int, int, int]]]) -> mf.Manifest:
        files = []
        for w in walked:
            if w.type == mf.FILE:
                digest = digests[w.path]
                if w.size == 0:
                    chunks: tuple[mf.Chunk, ...] = ()
                elif digest in new_chunks:
                    chunks = tuple(mf.Chunk(*c) for c in new_chunks[digest])
                else:
                    parts = []
                    for fr, raw_offset, raw_length in known[digest]:
                        fid = (fr.pack, fr.offset)
                        if fid not in frame_index:
                            frame_index[fid] = len(frames)
                            frames.append(fr)
                        parts.append(mf.Chunk(frame_index[fid], raw_offset, raw_length))
                    chunks = tuple(parts)
                files.append(mf.FileEntry(w.path, w.type, w.mode, w.mtime_ns, w.size, digest, None, chunks))
            else:
                files.append(mf.FileEntry(w.path, w.type, w.mode, w.mtime_ns, target=w.target))
        manifest = mf.Manifest(key=key, created=time.time(), frames=tuple(frames), files=tuple(files),
                               roots=roots)
        mf.validate(manifest, where=f"{key} (new)")
        return manifest


def _content_id(manifest: mf.Manifest) -> str:
    """Identity of an entry's content (files and where they live), ignoring key and time."""
    h = hashlib.sha256()
    for f in manifest.files:
        h.update(repr((f.path, f.type, f.mode, f.mtime_ns, f.size, f.digest, f.target,
                       [(manifest.frames[c.frame], c.raw_offset, c.raw_length) for c in f.chunks])).encode())
    return h.hexdigest()


def _progress(done: int, total: int, start: float):
    from stoker.agent.cache.api import Progress

    return Progress(done, total, 0, 0, done / max(time.monotonic() - start, 1e-9))


def _select(manifest: mf.Manifest, roots: tuple[str, ...]) -> list[mf.FileEntry]:
    """The manifest's entries at or under ``roots``."""
    if manifest.roots and set(manifest.roots) <= set(roots):
        return list(manifest.files)  # validate() saw every path lie under the manifest's roots
    under = tuple(r + "/" for r in roots)
    exact = set(roots)
    return [f for f in manifest.files if f.path in exact or f.path.startswith(under)]


def _check_no_symlink_ancestors(workspace: Path, rel: str, where: str) -> None:
    """Publishing must not follow a symlink the workspace holds on the way to ``rel``."""
    current = workspace
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise UnsafeTree(f"{where}: {current.relative_to(workspace)} in the workspace is not a directory")


def _remove_tree(path: Path) -> None:
    """Remove a staging directory; read-only directories inside it (restored modes) are made writable."""
    if not os.path.lexists(path):
        return

    def retry(func, p, _exc) -> None:
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=retry)


def _prune_stat_caches(directory: Path, keep: int) -> None:
    entries = sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
    for p in entries[keep:]:
        p.unlink(missing_ok=True)


def verify_entry(cache: ContentCache, key: str) -> int:
    """Decompress every frame of a local entry and check every file's digest; returns files checked."""
    record = cache.store.lookup(key)
    if record is None:
        raise NotFound(f"entry {key} is not in the local store")
    resolved = cache._local(key, record.manifest, exact=True)
    manifest = resolved.manifest
    fds: dict[Path, int] = {}
    try:
        def locate(i: int) -> tuple[int, int]:
            fr = manifest.frames[i]
            found = cache.store.locate((fr.pack, fr.offset))
            if found is None:
                raise CorruptEntry(f"entry {key}: frame {fr.pack}@{fr.offset} is not in the local store")
            path, lf = found
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return fds[path], lf.offset

        for i in range(len(manifest.frames)):
            locate(i)
        hydrate.write_files(manifest, list(manifest.files), None, locate, workers=cache.workers,
                            where=f"entry {key}")
    finally:
        for fd in fds.values():
            os.close(fd)
    return manifest.file_count


def gc_blobs(blobs: BlobStore, *, grace_s: float, now: float, dry_run: bool = False) -> tuple[int, int]:
    """Delete packs and manifests no key points at (directly or through its manifest) and older than
    ``grace_s`` (a save in progress uploads packs before its pointer). Returns (objects, bytes) deleted."""
    live_manifests: set[str] = set()
    live_packs: set[str] = set()
    for obj in blobs.list("keys/"):
        try:
            pointer = json.loads(blobs.get(obj.name))
            name = str(pointer["manifest"])
            manifest = mf.parse(blobs.get(f"manifests/{name}"), where=obj.name)
        except (CacheError, ValueError, KeyError, TypeError) as exc:
            log.warning("gc: skipping %s: %s", obj.name, exc)
            continue
        live_manifests.add(name)
        live_packs.update(manifest.packs)
    deleted = deleted_bytes = 0
    for kind, live in (("manifests/", live_manifests), ("packs/", live_packs)):
        for obj in list(blobs.list(kind)):
            if obj.name.removeprefix(kind) in live or now - obj.modified < grace_s:
                continue
            if not dry_run:
                blobs.delete(obj.name)
            deleted += 1
            deleted_bytes += obj.size
    return deleted, deleted_bytes
