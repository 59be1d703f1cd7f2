"""Writing an entry's files from its frames: decompress and write on every core, verify every byte.

Work is cut into tasks — one per frame of small files, one per large file (its frames in order, hashed as
it goes) — and run largest first on a thread pool (zstd and hashing release the GIL). Every file is checked
against its digest before the restore can publish; frames whose header disagrees with the size the manifest
declares are refused before anything is allocated. Files are written with no fsync; modes and mtimes
are set on the open descriptor, then directories get theirs deepest first.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import zstandard

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, CorruptEntry, Progress, ProgressFn
from stoker.agent.cache.tree import StatRecord

_UMASK = os.umask(0)
os.umask(_UMASK)

FrameLocator = Callable[[int], tuple[int, int]]
"""Frame index → (open file descriptor, offset) of its compressed bytes."""


@dataclass(frozen=True)
class _Task:
    bytes: int
    frame: int | None
    files: tuple[mf.FileEntry, ...]


class _Counter:
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
            snapshot = Progress(self.bytes, self.bytes_total, self.files, self.files_total,
                                self.bytes / max(now - self.start, 1e-9))
        self.progress(snapshot)


def plan_tasks(manifest: mf.Manifest, files: Sequence[mf.FileEntry]) -> list[_Task]:
    """Tasks for the regular, non-empty files among ``files``, largest first."""
    by_frame: dict[int, list[mf.FileEntry]] = defaultdict(list)
    tasks: list[_Task] = []
    for f in files:
        if f.type != mf.FILE or not f.chunks:
            continue
        if len(f.chunks) == 1 and f.chunks[0].raw_length < manifest.frames[f.chunks[0].frame].raw_size // 2 + 1:
            by_frame[f.chunks[0].frame].append(f)
        else:
            tasks.append(_Task(f.size, None, (f,)))
    for frame, group in by_frame.items():
        tasks.append(_Task(sum(f.size for f in group), frame, tuple(group)))
    tasks.sort(key=lambda t: -t.bytes)
    return tasks


def read_frame(manifest: mf.Manifest, index: int, locate: FrameLocator, *, where: str) -> bytes:
    """The decompressed bytes of frame ``index``, exactly its declared raw size."""
    frame = manifest.frames[index]
    fd, offset = locate(index)
    blob = os.pread(fd, frame.length, offset)
    if len(blob) != frame.length:
        raise CorruptEntry(f"{where}: pack {frame.pack} is truncated at offset {frame.offset}")
    try:
        declared = zstandard.get_frame_parameters(blob).content_size
    except zstandard.ZstdError as exc:
        raise CorruptEntry(f"{where}: pack {frame.pack} holds no zstd frame at offset {frame.offset}") from exc
    if declared != frame.raw_size:
        raise CorruptEntry(f"{where}: frame at {frame.pack}@{frame.offset} declares {declared} bytes, "
                           f"the manifest {frame.raw_size}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob)
    except zstandard.ZstdError as exc:
        raise CorruptEntry(f"{where}: frame at {frame.pack}@{frame.offset} is corrupt: {exc}") from exc
    if len(raw) != frame.raw_size:
        raise CorruptEntry(f"{where}: frame at {frame.pack}@{frame.offset} decompresses to {len(raw)} "
                           f"bytes, not {frame.raw_size}")
    return raw


def write_files(manifest: mf.Manifest, files: Sequence[mf.FileEntry], dest: Path | None,
                locate: FrameLocator, *, workers: int, where: str,
                progress: ProgressFn | None = None) -> dict[str, StatRecord]:
    """Create ``files`` (directories, symlinks, files) under ``dest`` and verify every digest.

    With ``dest`` None, only decompress and verify. Returns the stat record of each written file.
    """
    regular = [f for f in files if f.type == mf.FILE]
    counter = _Counter(len(regular), sum(f.size for f in regular), progress)
    records: dict[str, StatRecord] = {}
    if dest is not None:
        for f in files:
            if f.type == mf.DIR:
                os.mkdir(dest / f.path, 0o700)
        for f in files:
            if f.type == mf.SYMLINK:
                os.symlink(f.target, dest / f.path)
                os.utime(dest / f.path, ns=(f.mtime_ns, f.mtime_ns), follow_symlinks=False)
            elif f.type == mf.FILE and not f.chunks:
                if f.digest != hashlib.sha256(b"").hexdigest():
                    raise CorruptEntry(f"{where}: {f.path}: digest mismatch (empty file)")
                records[f.path] = _write_one(dest / f.path, f, [b""])
                counter.add(1, 0)
    tasks = plan_tasks(manifest, files)

    def run(task: _Task) -> list[tuple[str, StatRecord]]:
        out = []
        if task.frame is not None:
            raw = memoryview(read_frame(manifest, task.frame, locate, where=where))
            for f in task.files:
                c = f.chunks[0]
                data = raw[c.raw_offset:c.raw_offset + c.raw_length]
                if hashlib.sha256(data).hexdigest() != f.digest:
                    raise CorruptEntry(f"{where}: {f.path}: content does not match its digest")
                if dest is not None:
                    out.append((f.path, _write_one(dest / f.path, f, [data])))
            counter.add(len(task.files), task.bytes)
        else:
            (f,) = task.files
            out.append((f.path, _write_large(manifest, f, dest, locate, where, counter)))
            counter.add(1, 0)
        return out

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="stoker-hydrate") as pool:
        futures = [pool.submit(run, t) for t in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in futures:
            if fut in done and fut.exception() is not None:
                for other in futures:
                    other.cancel()
                raise fut.exception()
        for fut in futures:
            records.update(fut.result())
    counter.add(0, 0, force=True)
    if dest is not None:
        for f in reversed(files):
            if f.type == mf.DIR:
                os.chmod(dest / f.path, f.mode)
                os.utime(dest / f.path, ns=(f.mtime_ns, f.mtime_ns))
    return records


def _open_for(path: Path, f: mf.FileEntry) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, f.mode)
    if f.mode & _UMASK:
        os.fchmod(fd, f.mode)
    return fd


def _finish(fd: int, f: mf.FileEntry) -> StatRecord:
    os.utime(fd, ns=(f.mtime_ns, f.mtime_ns))
    os.close(fd)
    # Inode and ctime unknown (0): the stat cache then trusts the file only while its ctime predates the
    # moment the restore recorded it, which any later change breaks (see tree.digests).
    return StatRecord(f.size, f.mtime_ns, 0, 0, f.digest or "")


def _write_one(path: Path, f: mf.FileEntry, parts: Sequence[bytes | memoryview]) -> StatRecord:
    fd = _open_for(path, f)
    try:
        for data in parts:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
    except BaseException:
        os.close(fd)
        raise
    return _finish(fd, f)


def _write_large(manifest: mf.Manifest, f: mf.FileEntry, dest: Path | None, locate: FrameLocator,
                 where: str, counter: _Counter) -> StatRecord:
    hasher = hashlib.sha256()
    fd = _open_for(dest / f.path, f) if dest is not None else None
    try:
        for c in f.chunks:
            raw = memoryview(read_frame(manifest, c.frame, locate, where=where))
            data = raw[c.raw_offset:c.raw_offset + c.raw_length]
            hasher.update(data)
            while fd is not None and data:
                n = os.write(fd, data)
                data = data[n:]
            counter.add(0, c.raw_length)
        if hasher.hexdigest() != f.digest:
            raise CorruptEntry(f"{where}: {f.path}: content does not match its digest")
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    if fd is None:
        return StatRecord(f.size, f.mtime_ns, 0, 0, f.digest or "")
    return _finish(fd, f)


def syncfs(path: Path) -> None:
    """One syncfs(2) of the filesystem holding ``path`` (instead of an fsync per file)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise CacheError(f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
