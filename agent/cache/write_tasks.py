"""The units of a restore's work, shared by the threaded and the forked writers.

Work is cut into tasks — one per frame of small files, one per large file (its frames in order) — and run
largest first. Every byte is checked before the restore can publish: a frame the manifest gives a SHA-256
is checked as compressed bytes, which proves every file cut from it; the files of a frame without one
(manifests before version 4) are checked one by one against their digests. Frames whose header disagrees
with the size the manifest declares are refused before anything is allocated. Files are written with no
fsync; modes (only where the umask would change them) and mtimes are set on the open descriptor.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import zstandard

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, CorruptEntry, Progress, ProgressFn
from stoker.agent.cache.safe_open import Parents, Root
from stoker.agent.cache.writers import Writer

FrameLocator = Callable[[int], tuple[int, int]]
"""Frame index → (open file descriptor, offset) of its compressed bytes."""
FetchFn = Callable[[Callable[[int], None]], None]
"""Fetches missing frames, calling its argument with each frame index once that frame is readable."""
StopFn = Callable[[], bool]
"""Asked between pieces of work; True makes the writer raise :class:`Stopped`."""

EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Stopped(CacheError):
    """The caller's ``stop`` asked the writer to stop (for example: the cache is closing)."""


def never() -> bool:
    """A :data:`StopFn` that never stops."""
    return False


@dataclass(frozen=True)
class Task:
    bytes: int
    frame: int | None
    """The one frame holding every file of ``files``; None for a large file (one file, many frames)."""
    files: tuple[mf.FileEntry, ...]
    times_only: bool = False
    """Set only the mtimes of ``files`` (files and symlinks that exist already)."""

    def frames(self) -> set[int]:
        """The frames this task reads."""
        if self.times_only:
            return set()
        return {self.frame} if self.frame is not None else {c.frame for c in self.files[0].chunks}


class ProgressCounter:
    """Files and bytes written so far, reported to ``progress`` at most every 0.1 s (thread-safe)."""

    def __init__(self, files_total: int, bytes_total: int, progress: ProgressFn | None) -> None:
        self.lock = threading.Lock()
        self.files = 0
        self.bytes = 0
        self.files_total = files_total
        self.bytes_total = bytes_total
        self.progress = progress
        self.start = time.monotonic()
        self.last = 0.0

    def add(self, files: int, nbytes: int, *, force: bool = False) -> None:
        with self.lock:
            self.files += files
            self.bytes += nbytes
            now = time.monotonic()
            if self.progress is None or (now - self.last < 0.1 and not force):
                return
            self.last = now
            snapshot = Progress(
                self.bytes,
                self.bytes_total,
                self.files,
                self.files_total,
                self.bytes / max(now - self.start, 1e-9),
            )
        self.progress(snapshot)


def plan_tasks(manifest: mf.Manifest, files: Sequence[mf.FileEntry]) -> list[Task]:
    """Tasks for the regular, non-empty files among ``files``, largest first."""
    by_frame: dict[int, list[mf.FileEntry]] = defaultdict(list)
    tasks: list[Task] = []
    for f in files:
        if f.type != mf.FILE or not f.chunks:
            continue
        if (
            len(f.chunks) == 1
            and f.chunks[0].raw_length < manifest.frames[f.chunks[0].frame].raw_size // 2 + 1
        ):
            by_frame[f.chunks[0].frame].append(f)
        else:
            tasks.append(Task(f.size, None, (f,)))
    for frame, group in by_frame.items():
        tasks.append(Task(sum(f.size for f in group), frame, tuple(group)))
    tasks.sort(key=lambda t: -t.bytes)
    return tasks


def dependencies(tasks: Sequence[Task], missing: set[int]) -> tuple[list[int], dict[int, list[int]]]:
    """For each task, how many of its frames are still missing; for each missing frame, its tasks."""
    waits = [0] * len(tasks)
    waiting: dict[int, list[int]] = defaultdict(list)
    for n, task in enumerate(tasks):
        for i in task.frames() & missing:
            waits[n] += 1
            waiting[i].append(n)
    return waits, waiting


_DCTX = threading.local()


def read_frame(manifest: mf.Manifest, index: int, locate: FrameLocator, *, where: str) -> bytes:
    """The decompressed bytes of frame ``index``, exactly its declared raw size; checked against the
    frame's SHA-256 when the manifest gives one (see :func:`files_checked_by_frame`)."""
    frame = manifest.frames[index]
    fd, offset = locate(index)
    blob = os.pread(fd, frame.length, offset)
    if len(blob) != frame.length:
        raise CorruptEntry(f"{where}: pack {frame.pack} is truncated at offset {frame.offset}")
    if frame.digest is not None and hashlib.sha256(blob).digest() != frame.digest:
        # The manifest (checked against its own name) names these compressed bytes: decompression is
        # deterministic, so the files cut from them are what the manifest says without hashing each.
        raise CorruptEntry(
            f"{where}: frame at {frame.pack}@{frame.offset} is corrupt: it does not match its digest"
        )
    try:
        declared = zstandard.get_frame_parameters(blob).content_size
    except zstandard.ZstdError as exc:
        raise CorruptEntry(
            f"{where}: pack {frame.pack} holds no zstd frame at offset {frame.offset}"
        ) from exc
    if declared != frame.raw_size:
        raise CorruptEntry(
            f"{where}: frame at {frame.pack}@{frame.offset} declares {declared} bytes, "
            f"the manifest {frame.raw_size}"
        )
    dctx = getattr(_DCTX, "dctx", None)
    if dctx is None:  # one decompression context per thread, reused (creating one costs more than a frame)
        dctx = _DCTX.dctx = zstandard.ZstdDecompressor()
    try:
        raw: bytes = dctx.decompress(blob)
    except zstandard.ZstdError as exc:
        raise CorruptEntry(f"{where}: frame at {frame.pack}@{frame.offset} is corrupt: {exc}") from exc
    if len(raw) != frame.raw_size:
        raise CorruptEntry(
            f"{where}: frame at {frame.pack}@{frame.offset} decompresses to {len(raw)} "
            f"bytes, not {frame.raw_size}"
        )
    return raw


def files_checked_by_frame(frame: mf.Frame) -> bool:
    """Whether :func:`read_frame` proves the files cut from ``frame`` (it checks the frame's digest), so
    they need not be hashed one by one."""
    return frame.digest is not None


def run_task(
    manifest: mf.Manifest,
    task: Task,
    root: Root | None,
    locate: FrameLocator,
    where: str,
    counter: ProgressCounter | None,
    writer: Writer,
) -> tuple[int, int]:
    """Write (or, with ``root`` None, only check) one task's files; returns (files, bytes).

    ``counter``: where a large file reports its bytes as it goes (None in a forked helper, which reports
    the whole task's bytes through its return value instead)."""
    if task.times_only:
        assert root is not None, "mtimes are only set in a tree being written"
        if writer.compiled is not None:
            writer.compiled.set_times(root.fd, task.files)  # the GIL released: on every core
            return 0, 0
        with Parents(root) as parents:
            for f in task.files:
                fd, name = parents(f.path)
                os.utime(name, ns=(f.mtime_ns, f.mtime_ns), dir_fd=fd, follow_symlinks=False)
        return 0, 0
    if task.frame is not None:
        raw = read_frame(manifest, task.frame, locate, where=where)
        check = not files_checked_by_frame(manifest.frames[task.frame])
        if writer.compiled is not None:
            bad = writer.compiled.write_group(
                -1 if root is None else root.fd, raw, task.files, writer.umask, check
            )
            if bad is not None:
                raise CorruptEntry(f"{where}: {task.files[bad].path}: content does not match its digest")
            return len(task.files), task.bytes
        _write_group(raw, task.files, root, where, writer.umask, check)
        return len(task.files), task.bytes
    (f,) = task.files
    _write_large(manifest, f, root, locate, where, counter, writer.umask)
    return 1, 0 if counter is not None else f.size


def _write_group(
    raw: bytes, files: Sequence[mf.FileEntry], root: Root | None, where: str, umask: int, check: bool
) -> None:
    """Check (unless the frame was checked: ``check`` False) and write, with a ``root``, the small files
    ``files`` held in one decompressed frame."""
    view = memoryview(raw)
    sha256 = hashlib.sha256
    with Parents(root) if root is not None else nullcontext() as parents:
        for f in files:
            c = f.chunks[0]
            data = view[c.raw_offset : c.raw_offset + c.raw_length]
            if check and sha256(data).hexdigest() != f.digest:
                raise CorruptEntry(f"{where}: {f.path}: content does not match its digest")
            if parents is not None:
                write_one(parents, f, data, umask)


def write_one(parents: Parents, f: mf.FileEntry, data: bytes | memoryview, umask: int) -> None:
    """Create file ``f`` (which must not exist) holding ``data``, with its mode and mtime."""
    dir_fd, name = parents(f.path)
    try:
        fd = os.open(name, _OPEN_FLAGS, f.mode, dir_fd=dir_fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, f.path) from None
    try:
        if f.mode & umask:
            os.fchmod(fd, f.mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.utime(fd, ns=(f.mtime_ns, f.mtime_ns))
    finally:
        os.close(fd)


def _write_large(
    manifest: mf.Manifest,
    f: mf.FileEntry,
    root: Root | None,
    locate: FrameLocator,
    where: str,
    counter: ProgressCounter | None,
    umask: int,
) -> None:
    # Hashed as it goes unless every frame of the file is checked by its digest.
    hasher = (
        None if all(files_checked_by_frame(manifest.frames[c.frame]) for c in f.chunks) else hashlib.sha256()
    )
    fd = None
    if root is not None:
        fd = root.open(f.path, _OPEN_FLAGS, f.mode)
    try:
        if fd is not None and f.mode & umask:
            os.fchmod(fd, f.mode)
        for c in f.chunks:
            raw = memoryview(read_frame(manifest, c.frame, locate, where=where))
            data = raw[c.raw_offset : c.raw_offset + c.raw_length]
            if hasher is not None:
                hasher.update(data)
            while fd is not None and data:
                n = os.write(fd, data)
                data = data[n:]
            if counter is not None:
                counter.add(0, c.raw_length)
        if hasher is not None and hasher.hexdigest() != f.digest:
            raise CorruptEntry(f"{where}: {f.path}: content does not match its digest")
        if fd is not None:
            os.utime(fd, ns=(f.mtime_ns, f.mtime_ns))
    finally:
        if fd is not None:
            os.close(fd)
