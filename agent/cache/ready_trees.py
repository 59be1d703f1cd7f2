"""Ready trees: entries kept also unpacked, so that a restore moves files instead of writing them.

After a restore or save of a key its files are unpacked again in the background (one core at nice 19) as
a *ready tree* in the node's store (see :mod:`.store`); the next restore of that key moves it into its
workspace, and a restore of a newer key under the same prefix claims the tree sharing the most content and
changes only what differs (see :func:`.hydrate.apply_diff`). A refill is an optimization: when it fails,
the next restore writes files.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from itertools import compress
from pathlib import Path

from stoker.agent.cache import hydrate
from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError
from stoker.agent.cache.resolve import LocalManifests
from stoker.agent.cache.store import LocalFrame, LocalStore, TreeRecord
from stoker.agent.cache.writer_forked import become_helper
from stoker.agent.cache.writers import ActiveWriter

log = logging.getLogger(__name__)


class ReadyTrees:
    """Makes ready trees (in a background thread, or on demand) and claims them for restores."""

    def __init__(
        self, store: LocalStore, manifests: LocalManifests, writing: ActiveWriter, keep: int
    ) -> None:
        self.keep = keep
        """Keep this many ready trees; 0 turns them off."""
        self.closing = False
        """Set by :meth:`stop`: background work stops (see :meth:`prepare`)."""
        self._store = store
        self._manifests = manifests
        self._writing = writing
        self._lock = threading.Lock()
        self._queue: list[str] = []
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = 0

    def stop(self) -> None:
        """Stop background work: a refill in progress is abandoned (the store's open() cleans it up)."""
        with self._lock:
            self.closing = True
            self._queue.clear()
            self._wake.notify_all()
            pid, thread = self._pid, self._thread
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if thread is not None:
            thread.join()
        self._thread = None

    def claim_closest(
        self, files: Sequence[mf.FileEntry], roots: tuple[str, ...], stage: Path
    ) -> list[mf.FileEntry] | None:
        """Claim the ready tree sharing the most content with ``files`` into ``stage``; returns the files
        it holds (under ``roots``), or None when no tree shares at least half of the target's bytes."""
        target = set(map(mf.DIGEST, files))
        want = set(roots)
        best: tuple[int, TreeRecord, list[mf.FileEntry]] | None = None
        for ready in self._store.trees():
            if not want <= set(ready.roots):
                continue
            manifest = self._manifests.get(ready.manifest)
            if manifest is None:
                continue
            held = manifest.under(roots)
            # Sizes of the held files whose content the target has (directories and symlinks: size 0).
            shared = sum(compress(map(mf.SIZE, held), map(target.__contains__, map(mf.DIGEST, held))))
            if best is None or shared > best[0]:
                best = (shared, ready, held)
        total = sum(map(mf.SIZE, files))
        if best is None or best[0] * 2 < total:
            return None
        _, ready, held = best
        if self._store.claim_tree(ready.key, ready.manifest, stage) is None:
            return None
        return held

    def schedule_refill(self, key: str) -> None:
        """Unpack ``key`` as a ready tree in the background unless one exists."""
        if not self.keep:
            return
        with self._lock:
            if self.closing or key in self._queue:
                return
            self._queue.append(key)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._refill_loop, name="stoker-cache-refill", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()

    def _refill_loop(self) -> None:
        try:  # this thread alone at the lowest priority (Linux: a thread is a schedulable task)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
        while True:
            with self._lock:
                while not self._queue and not self.closing:
                    self._wake.wait()
                if self.closing:
                    return
                key = self._queue.pop(0)
            try:
                self.prepare(key, background=True)
            except Exception:  # a refill is an optimization; the next restore writes files
                if not self.closing:
                    log.warning("could not prepare a ready tree of %s", key, exc_info=True)

    def prepare(self, key: str, *, background: bool = False) -> bool:
        """Unpack the local entry ``key`` (every digest checked) as a ready tree; False if it is not local,
        already has one, or does not fit. ``background``: at nice 19 on one core (this thread with the
        compiled writer, else a forked process)."""
        record = self._store.lookup(key)
        if record is None or self._store.tree_for(key, record.manifest) is not None:
            return False
        manifest = self._manifests.get(record.manifest)
        if manifest is None:
            return False
        frames: dict[int, tuple[Path, LocalFrame]] = {}
        for i, fr in enumerate(manifest.frames):
            found = self._store.locate((fr.pack, fr.offset))
            if found is None or found[1].length != fr.length:
                return False
            frames[i] = found
        nbytes = sum(
            -(-f.size // 4096) * 4096 if f.type == mf.FILE else 4096 * (f.type == mf.DIR)
            for f in manifest.files
        )
        with (
            self._store.pinned(sorted({lf.file for _, lf in frames.values()})),
            self._store.staging() as staging,
        ):
            tree_dir = staging / "tree"
            tree_dir.mkdir()
            # A tree is matched to other entries by its files' digests: when this node has not checked them
            # yet (a restore that trusted the frames' digests), check every file now, off the critical path.
            checked = record.files_checked
            unpack = manifest if checked else mf.without_frame_digests(manifest)
            self._unpack(unpack, frames, tree_dir, f"entry {key} (ready tree)", background)
            if not checked:
                self._store.set_files_checked(key, record.manifest)
            return self._store.add_tree(
                tree_dir,
                key=key,
                manifest=record.manifest,
                roots=manifest.roots,
                nbytes=nbytes,
                keep_trees=self.keep,
            )

    def _unpack(
        self,
        manifest: mf.Manifest,
        frames: dict[int, tuple[Path, LocalFrame]],
        tree_dir: Path,
        where: str,
        background: bool,
    ) -> None:
        fds: dict[Path, int] = {}
        try:
            for path, _ in frames.values():
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

            def locate(i: int) -> tuple[int, int]:
                path, lf = frames[i]
                return fds[path], lf.offset

            files = list(manifest.files)
            writer, workers = self._writing.writer, self._writing.workers
            if background and writer.compiled is not None:
                # The compiled writer runs without the GIL: this thread (nice 19, see _refill_loop) does
                # the work on one core, and no process is forked beside gRPC's threads.
                hydrate.write_files(
                    manifest,
                    files,
                    tree_dir,
                    locate,
                    writer=writer,
                    workers=1,
                    where=where,
                    stop=lambda: self.closing,
                )
            elif background:
                self._in_background_process(
                    lambda: hydrate.write_files(
                        manifest,
                        files,
                        tree_dir,
                        locate,
                        writer=writer.threads_only(),
                        workers=1,
                        where=where,
                    )
                )
            else:
                hydrate.write_files(
                    manifest, files, tree_dir, locate, writer=writer, workers=workers, where=where
                )
        finally:
            for fd in fds.values():
                os.close(fd)

    def _in_background_process(self, work: Callable[[], None]) -> None:
        """Run ``work`` in a forked child at nice 19 (it dies with this process) and wait for it."""
        with self._lock:
            if self.closing:
                raise CacheError("the cache is closing")
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    become_helper(parent)
                    os.nice(19)
                    work()
                    code = 0
                finally:
                    os._exit(code)
            self._pid = pid
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            with self._lock:
                self._pid = 0
        if os.waitstatus_to_exitcode(status) != 0:
            raise CacheError(
                f"ready tree: the background process failed ({os.waitstatus_to_exitcode(status)})"
            )
