"""Writing an entry's files from its frames: decompress and write on every core, verify every byte.

Work is cut into tasks — one per frame of small files, one per large file (its frames in order, hashed as
it goes) — and run largest first. Creating ~25k files is mostly per-file syscalls; made from Python they
serialise on the GIL, so threads alone do not scale. Two ways around it:

- the compiled writer (:mod:`._fastio`, built with the package where a C compiler is available) checks
  and writes a whole frame's files per call with the GIL released, so a pool of ``workers`` threads runs on
  every core — no process is forked, which matters in the agent, where gRPC's threads make forking risky;
- without it, and with ``processes`` (the default), the caller forks ``workers - 1`` helpers after the
  manifest is loaded and the directories exist, and every process — the caller included — takes the next
  task index from a shared pipe (reads of 4 bytes from a pipe are atomic: dynamic balancing without
  locks). Helpers report progress and errors over a second pipe, and die with their parent
  (``PR_SET_PDEATHSIG``). A helper that fails or is killed makes the whole call fail: the caller kills the
  other helpers and raises, and nothing is published (the caller writes into a staging directory).

Everything is created and changed beneath a descriptor of the destination opened once, following no
symlink in any component (``openat2`` RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS in the compiled writer; one
``O_NOFOLLOW`` directory at a time in Python): a directory swapped for a symlink while the restore runs
(a build process of the same user could do it) makes the restore fail; nothing is written through it.

Every file is checked against its digest before the restore can publish; frames whose header disagrees
with the size the manifest declares are refused before anything is allocated. Files are written with no
fsync; modes (only where the umask would change them) and mtimes are set on the open descriptor, then
directories get theirs deepest first.

Forking a process that has other threads is safe here because a helper runs only this module's code:
no imports, no logging, no locks shared with the parent's threads besides the allocator's (which glibc
resets at fork) — and it leaves with ``os._exit``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import hashlib
import os
import select
import signal
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, CorruptEntry, Progress, ProgressFn, UnsafeTree

try:
    from stoker.agent.cache import _fastio as FAST
except ImportError:  # not built (no C compiler at install time): the Python writer does the same work
    FAST = None
if os.environ.get("STOKER_CACHE_WRITER", "") == "python":  # an operator's (or a benchmark's) choice
    FAST = None
"""The compiled writer, or None (not built, or ``STOKER_CACHE_WRITER=python``). Tests set it to None to
exercise the Python path."""
# _fastio reads FileEntry and Chunk by position; keep it in step with manifest.py.
if (mf.FileEntry._fields[:8] != ("path", "type", "mode", "mtime_ns", "size", "digest", "target", "chunks")
        or mf.Chunk._fields != ("frame", "raw_offset", "raw_length")):  # pragma: no cover - a programming error
    raise ImportError("agent/cache/_fastio.c reads FileEntry/Chunk fields by position: update it")

_UMASK = os.umask(0)
os.umask(_UMASK)

FrameLocator = Callable[[int], tuple[int, int]]
"""Frame index → (open file descriptor, offset) of its compressed bytes."""
FetchFn = Callable[[Callable[[int], None]], None]
"""Fetches missing frames, calling its argument with each frame index once that frame is readable."""


class Stopped(CacheError):
    """The caller's ``stop`` asked :func:`write_files` to stop (for example: the cache is closing)."""


def _never() -> bool:
    return False


class HelperCrashed(CacheError):
    """A forked writer died without reporting an error (killed, or crashed: forking a process whose other
    threads are inside gRPC can leave the child unable to run). Every frame has been fetched by then."""


@dataclass(frozen=True)
class _Task:
    bytes: int
    frame: int | None
    files: tuple[mf.FileEntry, ...]
    times_only: bool = False
    """Set only the mtimes of ``files`` (files and symlinks that exist already)."""


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


_DCTX = threading.local()


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
    dctx = getattr(_DCTX, "dctx", None)
    if dctx is None:  # one decompression context per thread, reused (creating one costs more than a frame)
        dctx = _DCTX.dctx = zstandard.ZstdDecompressor()
    try:
        raw = dctx.decompress(blob)
    except zstandard.ZstdError as exc:
        raise CorruptEntry(f"{where}: frame at {frame.pack}@{frame.offset} is corrupt: {exc}") from exc
    if len(raw) != frame.raw_size:
        raise CorruptEntry(f"{where}: frame at {frame.pack}@{frame.offset} decompresses to {len(raw)} "
                           f"bytes, not {frame.raw_size}")
    return raw


_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Root:
    """The destination directory, opened once; every path beneath it is reached following no symlink."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, _DIR_PATH)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> _Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, rel: str, flags: int, mode: int = 0o777) -> int:
        if FAST is not None:
            return FAST.open_beneath(self.fd, rel, flags, mode)
        head, _, name = rel.rpartition("/")
        parent = self._walk(head) if head else self.fd
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, rel) from None
        finally:
            if parent != self.fd:
                os.close(parent)

    def _walk(self, rel: str) -> int:
        fd = self.fd
        try:
            for part in rel.split("/"):
                if part in ("", ".", ".."):
                    raise UnsafeTree(f"{rel}: not a plain relative path")
                nxt = os.open(part, _DIR_PATH, dir_fd=fd)
                if fd != self.fd:
                    os.close(fd)
                fd = nxt
        except OSError as exc:
            if fd != self.fd:
                os.close(fd)
            raise OSError(exc.errno, exc.strerror, rel) from None
        except BaseException:
            if fd != self.fd:
                os.close(fd)
            raise
        return fd

    # A directory's mode and mtime are changed through an O_PATH descriptor (reached following no symlink)
    # and its /proc/self/fd link: unlike an O_RDONLY open, that needs no read permission on the directory.
    def set_dir_meta(self, f: mf.FileEntry, mode: bool) -> None:
        """Give directory ``f`` its mtime, and its mode too when ``mode``."""
        fd = self.open(f.path, _DIR_PATH)
        try:
            if mode:
                os.chmod(f"/proc/self/fd/{fd}", f.mode)
            os.utime(f"/proc/self/fd/{fd}", ns=(f.mtime_ns, f.mtime_ns))
        finally:
            os.close(fd)

    def make_writable(self, rel: str) -> None:
        fd = self.open(rel, _DIR_PATH)
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
        finally:
            os.close(fd)


class _Parents:
    """Descriptors of the directories holding a run of paths, each opened once (beneath the root)."""

    def __init__(self, root: _Root) -> None:
        self.root = root
        self.fds: dict[str, int] = {}

    def __call__(self, rel: str) -> tuple[int, str]:
        """(descriptor of ``rel``'s directory, ``rel``'s last component)."""
        head, _, name = rel.rpartition("/")
        if not head:
            return self.root.fd, name
        fd = self.fds.get(head)
        if fd is None:
            if len(self.fds) >= 128:
                self.close()
            fd = self.fds[head] = self.root.open(head, _DIR_PATH)
        return fd, name

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> _Parents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keeps_dir_mode(f: mf.FileEntry) -> bool:
    """A directory created with its final mode: the umask keeps it and the owner can still write in it."""
    return f.mode & 0o700 == 0o700 and f.mode & (0o777 & ~_UMASK) == f.mode


def write_files(manifest: mf.Manifest, files: Sequence[mf.FileEntry], dest: Path | None,
                locate: FrameLocator, *, workers: int, where: str,
                progress: ProgressFn | None = None, processes: bool = True,
                set_times: Sequence[mf.FileEntry] = (), fetch: FetchFn | None = None,
                missing: Sequence[int] = (), stop: Callable[[], bool] | None = None) -> None:
    """Create ``files`` (directories, symlinks, files) under ``dest`` and verify every digest.

    With ``dest`` None, only decompress and verify. ``locate`` must return descriptors opened before the
    call (helper processes inherit them). ``set_times``: existing files and symlinks whose mtime to set,
    shared out among the same writers. ``missing`` frames are not readable yet: ``fetch(on_frame)``
    brings them, calling ``on_frame(i)`` as each lands, and the writers start on every task whose frames
    are there (fetching overlaps writing). ``processes`` only matters without the compiled writer.
    ``stop``: asked before the work, after the directories and before each task (threads); when it
    answers True the call raises :class:`Stopped` (the caller removes what was written).
    """
    with _swaps_refused(where):
        root = None if dest is None else _Root(dest)
        try:
            _write_files(manifest, files, root, locate, workers, where, progress, processes, set_times,
                         fetch, missing, stop or _never)
        finally:
            if root is not None:
                root.close()


@contextmanager
def _swaps_refused(where: str) -> Iterator[None]:
    """A write beneath the destination that met a symlink (or a file) where the entry has a directory
    means the tree was changed under the restore: an UnsafeTree naming the path. Other errors pass."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _SWAPPED:
            raise
        raise _swapped(exc, where) from exc


_SWAPPED = (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)


def _swapped(exc: OSError, where: str) -> UnsafeTree:
    return UnsafeTree(f"{where}: {exc.filename or '?'}: a directory of the tree being written was replaced "
                      f"(by a symlink or a file) while the restore ran; nothing is written through it "
                      f"({exc.strerror})")


def _write_files(manifest: mf.Manifest, files: Sequence[mf.FileEntry], root: _Root | None,
                 locate: FrameLocator, workers: int, where: str, progress: ProgressFn | None,
                 processes: bool, set_times: Sequence[mf.FileEntry], fetch: FetchFn | None,
                 missing: Sequence[int], stop: Callable[[], bool]) -> None:
    if stop():
        raise Stopped(f"{where}: stopped before writing")
    regular = [f for f in files if f.type == mf.FILE]
    counter = _Counter(len(regular), sum(f.size for f in regular), progress)
    if root is not None:
        with _Parents(root) as parents:
            for f in files:
                if f.type == mf.DIR:
                    fd, name = parents(f.path)
                    os.mkdir(name, f.mode if _keeps_dir_mode(f) else 0o700, dir_fd=fd)
            for f in files:
                if f.type == mf.SYMLINK:
                    fd, name = parents(f.path)
                    os.symlink(f.target, name, dir_fd=fd)
                    os.utime(name, ns=(f.mtime_ns, f.mtime_ns), dir_fd=fd, follow_symlinks=False)
                elif f.type == mf.FILE and not f.chunks:
                    if f.digest != _EMPTY_DIGEST:
                        raise CorruptEntry(f"{where}: {f.path}: digest mismatch (empty file)")
                    _write_one(parents, f, b"")
                    counter.add(1, 0)
    tasks = plan_tasks(manifest, files)
    for i in range(0, len(set_times), 2000):
        tasks.append(_Task(0, None, tuple(set_times[i:i + 2000]), times_only=True))
    if stop():
        raise Stopped(f"{where}: stopped after creating the directories")
    helpers = max(1, workers) - 1 if FAST is None and processes and len(tasks) > 1 else 0
    if helpers:
        _run_forked(manifest, tasks, root, locate, where, counter, helpers, fetch, set(missing))
    else:
        _run_threaded(manifest, tasks, root, locate, where, counter, max(1, workers), fetch, set(missing),
                      stop)
    counter.add(0, 0, force=True)
    if root is not None:
        for f in reversed(files):
            if f.type == mf.DIR:
                root.set_dir_meta(f, mode=not _keeps_dir_mode(f))


def apply_diff(manifest: mf.Manifest, held: Sequence[mf.FileEntry], files: Sequence[mf.FileEntry],
               dest: Path, locate: FrameLocator, *, workers: int, where: str,
               progress: ProgressFn | None = None, processes: bool = True, fetch: FetchFn | None = None,
               missing: Sequence[int] = ()) -> None:
    """Turn the tree at ``dest``, which holds exactly ``held`` (a ready tree), into ``files``: remove what
    differs, write what is new or changed from its frames (every such digest checked), fix metadata.

    The comparison runs on sets of tuples (C speed): an entry is kept when its path, type, content
    digest, mode (files) and link target are the same; modes and mtimes of kept entries are fixed after."""
    d = mf.DIR
    held_ids = [(f.path, d) if f.type == d else (f.path, f.type, f.digest, f.size, f.mode, f.target)
                for f in held]
    file_ids = [(f.path, d) if f.type == d else (f.path, f.type, f.digest, f.size, f.mode, f.target)
                for f in files]
    keep = set(held_ids).intersection(file_ids)
    removed_entries = [f for f, i in zip(held, held_ids) if i not in keep]
    create = [f for f, i in zip(files, file_ids) if i not in keep]
    removed = {f.path for f in removed_entries}
    created = {f.path for f in create}
    touched = {p.rpartition("/")[0] for p in removed} | {p.rpartition("/")[0] for p in created}
    old_meta = {f.path: f for f in held if f.path in touched}
    opened: dict[str, int] = {}
    with _swaps_refused(where), _Root(dest) as root:
        for d, f in old_meta.items():
            if d and d not in removed and f.mode & 0o700 != 0o700:
                root.make_writable(d)  # let this process change a read-only directory
                opened[d] = f.mode
        with _Parents(root) as parents:
            for f in reversed(removed_entries):  # children before their directory
                fd, name = parents(f.path)
                if f.type == mf.DIR:
                    held_open = parents.fds.pop(f.path, None)
                    if held_open is not None:
                        os.close(held_open)
                    os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
    # Kept entries whose mode or mtime differ, and kept directories whose contents changed: files' and
    # symlinks' mtimes are set by the writers alongside the new files, directories' after them.
    meta = {(f.path, f.mode, f.mtime_ns) for f in files} - {(f.path, f.mode, f.mtime_ns) for f in held}
    fix = {p for p, _, _ in meta if p not in created} | ((touched | set(opened)) - created - removed)
    fixing = [f for f in files if f.path in fix]
    write_files(manifest, create, dest, locate, workers=workers, where=where, progress=progress,
                processes=processes, set_times=[f for f in fixing if f.type != mf.DIR], fetch=fetch,
                missing=missing)
    old_modes = {f.path: f.mode for f in held if f.type == mf.DIR and f.path in fix}
    with _swaps_refused(where), _Root(dest) as root:
        for f in fixing:
            if f.type == mf.DIR:
                root.set_dir_meta(f, mode=f.path in opened or old_modes.get(f.path) != f.mode)


def _run_task(manifest: mf.Manifest, task: _Task, root: _Root | None, locate: FrameLocator, where: str,
              counter: _Counter | None) -> tuple[int, int]:
    """Write (or, with ``root`` None, only check) one task's files; returns (files, bytes)."""
    if task.times_only:
        with _Parents(root) as parents:  # type: ignore[arg-type]
            for f in task.files:
                fd, name = parents(f.path)
                os.utime(name, ns=(f.mtime_ns, f.mtime_ns), dir_fd=fd, follow_symlinks=False)
        return 0, 0
    if task.frame is not None:
        raw = read_frame(manifest, task.frame, locate, where=where)
        if FAST is not None:
            bad = FAST.write_group(-1 if root is None else root.fd, raw, task.files, _UMASK)
            if bad is not None:
                raise CorruptEntry(f"{where}: {task.files[bad].path}: content does not match its digest")
            return len(task.files), task.bytes
        view = memoryview(raw)
        sha256 = hashlib.sha256
        with _Parents(root) if root is not None else nullcontext() as parents:
            for f in task.files:
                c = f.chunks[0]
                data = view[c.raw_offset:c.raw_offset + c.raw_length]
                if sha256(data).hexdigest() != f.digest:
                    raise CorruptEntry(f"{where}: {f.path}: content does not match its digest")
                if root is not None:
                    _write_one(parents, f, data)
        return len(task.files), task.bytes
    (f,) = task.files
    _write_large(manifest, f, root, locate, where, counter)
    return 1, 0 if counter is not None else f.size


def _dependencies(tasks: list[_Task], missing: set[int]) -> tuple[list[int], dict[int, list[int]]]:
    """For each task, how many of its frames are still missing; for each missing frame, its tasks."""
    waits = [0] * len(tasks)
    waiting: dict[int, list[int]] = defaultdict(list)
    for n, task in enumerate(tasks):
        if task.times_only:
            continue
        frames = {task.frame} if task.frame is not None else {c.frame for c in task.files[0].chunks}
        for i in frames & missing:
            waits[n] += 1
            waiting[i].append(n)
    return waits, waiting


def _run_threaded(manifest: mf.Manifest, tasks: list[_Task], root: _Root | None, locate: FrameLocator,
                  where: str, counter: _Counter, workers: int, fetch: FetchFn | None,
                  missing: set[int], stop: Callable[[], bool] = _never) -> None:
    """Run ``tasks`` on ``workers`` threads, each task as soon as its frames are there."""
    if workers == 1:  # no thread to start (this may run in a forked child of a threaded process)
        if fetch is not None:
            fetch(lambda i: None)
        for task in tasks:
            if stop():
                raise Stopped(f"{where}: stopped")
            counter.add(*_run_task(manifest, task, root, locate, where, counter))
        return
    waits, waiting = _dependencies(tasks, missing)
    failed: list[BaseException] = []

    def run(task: _Task) -> None:
        if failed:
            return
        if stop():
            failed.append(Stopped(f"{where}: stopped"))
            return
        try:
            counter.add(*_run_task(manifest, task, root, locate, where, counter))
        except BaseException as exc:  # noqa: BLE001 - the caller raises it
            failed.append(exc)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stoker-hydrate") as pool:
        try:
            for n, task in enumerate(tasks):
                if not waits[n]:
                    pool.submit(run, task)
            if fetch is not None:
                lock = threading.Lock()

                def on_frame(i: int) -> None:
                    with lock:
                        for n in waiting.pop(i, ()):
                            waits[n] -= 1
                            if not waits[n]:
                                pool.submit(run, tasks[n])

                fetch(on_frame)
            if waiting:
                raise CacheError(f"{where}: frames {sorted(waiting)[:5]} were never fetched")
        except BaseException as exc:
            failed.append(exc)  # the queued tasks return at once
            raise
    if failed:
        raise failed[0]


_MSG = struct.Struct("<cIQ")
"""Helper → caller: (b"P", files, bytes) progress, or (b"E", length, error kind) then the message."""
_ERRORS = (CacheError, CorruptEntry, UnsafeTree)
_PR_SET_PDEATHSIG = 1
_F_SETPIPE_SZ = 1031
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc to load
    _libc = None


def _run_forked(manifest: mf.Manifest, tasks: list[_Task], root: _Root | None, locate: FrameLocator,
                where: str, counter: _Counter, helpers: int, fetch: FetchFn | None = None,
                missing: set[int] | None = None) -> None:
    """Run ``tasks`` in this process and ``helpers`` forked ones (see the module docstring)."""
    waits, waiting = _dependencies(tasks, missing or set())
    task_r, task_w = os.pipe2(os.O_CLOEXEC)
    res_r, res_w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(task_w, _F_SETPIPE_SZ, 1 << 20)  # room for every task index at once
    except OSError:
        pass
    pids: list[int] = []
    try:
        parent = os.getpid()
        gc.freeze()  # keep the collector from touching (and copying) every shared page in the helpers
        try:
            for _ in range(helpers):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the helper (exercised by the tests)
                    _helper(manifest, tasks, root, locate, where, task_r, task_w, res_w, parent)
                pids.append(pid)
        finally:
            gc.unfreeze()
        os.close(res_w)
        res_w = -1
        pending = b""
        errors: list[BaseException] = []

        def drain(block: bool) -> bool:
            """Read the helpers' messages; False once every helper closed its end."""
            nonlocal pending
            while True:
                if not block and not select.select([res_r], [], [], 0)[0]:
                    return True
                chunk = os.read(res_r, 65536)
                if not chunk:
                    return False
                pending += chunk
                while len(pending) >= _MSG.size:
                    tag, a, b = _MSG.unpack_from(pending)
                    if tag == b"P":
                        pending = pending[_MSG.size:]
                        counter.add(a, b)
                    elif len(pending) >= _MSG.size + a:
                        text = pending[_MSG.size:_MSG.size + a].decode(errors="replace")
                        pending = pending[_MSG.size + a:]
                        errors.append(_ERRORS[b](text) if b < len(_ERRORS) else CacheError(text))
                    else:
                        break
                if block:
                    continue

        try:
            # A 4-byte read from a pipe is atomic, so each process takes the next task index; an empty
            # pipe with no writer left means the work is done. Tasks whose frames are all readable go in
            # now, the others as the fetch brings their last frame.
            os.write(task_w, b"".join(struct.pack("<I", n) for n in range(len(tasks)) if not waits[n]))
            if fetch is not None:
                lock = threading.Lock()

                def on_frame(i: int) -> None:
                    with lock:
                        ready = []
                        for n in waiting.pop(i, ()):
                            waits[n] -= 1
                            if not waits[n]:
                                ready.append(n)
                        if ready:
                            os.write(task_w, b"".join(struct.pack("<I", n) for n in ready))

                fetch(on_frame)
            if waiting:
                raise CacheError(f"{where}: frames {sorted(waiting)[:5]} were never fetched")
            os.close(task_w)
            task_w = -1
            while not errors:
                n = _read_index(task_r)
                if n is None:
                    break
                counter.add(*_run_task(manifest, tasks[n], root, locate, where, counter))
                drain(False)
        except BaseException:
            _kill(pids)
            raise
        if errors:
            _kill(pids)
            raise errors[0]
        while drain(True):
            pass
        failed = []
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                failed.append(code)
        pids = []
        if errors:
            raise errors[0]
        if failed:
            how = ", ".join(f"killed by signal {-c}" if c < 0 else f"exit status {c}" for c in failed)
            raise HelperCrashed(f"{where}: a restore helper process failed ({how}); nothing was published")
    finally:
        _kill(pids)
        for fd in (task_r, task_w, res_r, res_w):
            if fd >= 0:
                os.close(fd)


def _read_index(fd: int) -> int | None:
    """The next task index from the task pipe, or None at its end."""
    got = os.read(fd, 4)
    while got and len(got) < 4:  # never split by the writer (whole indices), but be exact
        more = os.read(fd, 4 - len(got))
        if not more:
            break
        got += more
    return struct.unpack("<I", got)[0] if len(got) == 4 else None


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    pids.clear()


def become_helper(parent: int) -> None:  # pragma: no cover - runs in forked children
    """Set up a process just forked from ``parent`` to do file work only: no collector, the parent's
    signal wiring (asyncio's wakeup fd, its handlers) undone, and killed when the parent dies."""
    gc.disable()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(3)


def _helper(manifest: mf.Manifest, tasks: list[_Task], root: _Root | None, locate: FrameLocator,
            where: str, task_r: int, task_w: int, res_w: int,
            parent: int) -> None:  # pragma: no cover - in a helper
    code = 0
    try:
        os.close(task_w)  # the parent's end: the pipe must read as ended once the parent closes it
        become_helper(parent)
        while True:
            n = _read_index(task_r)
            if n is None:
                break
            files, nbytes = _run_task(manifest, tasks[n], root, locate, where, None)
            os.write(res_w, _MSG.pack(b"P", files, nbytes))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the caller
        if isinstance(exc, OSError) and exc.errno in _SWAPPED:
            exc = _swapped(exc, where)
        kind = next((i for i, cls in reversed(list(enumerate(_ERRORS))) if isinstance(exc, cls)), None)
        text = (str(exc) if kind is not None else f"{where}: restore helper failed: {type(exc).__name__}: {exc}")
        data = text.encode()[:3000]
        try:
            os.write(res_w, _MSG.pack(b"E", len(data), kind if kind is not None else 99) + data)
        except OSError:
            pass
        code = 1
    finally:
        os._exit(code)


_EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_one(parents: _Parents, f: mf.FileEntry, data: bytes | memoryview) -> None:
    dir_fd, name = parents(f.path)
    try:
        fd = os.open(name, _OPEN_FLAGS, f.mode, dir_fd=dir_fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, f.path) from None
    try:
        if f.mode & _UMASK:
            os.fchmod(fd, f.mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.utime(fd, ns=(f.mtime_ns, f.mtime_ns))
    finally:
        os.close(fd)


def _write_large(manifest: mf.Manifest, f: mf.FileEntry, root: _Root | None, locate: FrameLocator,
                 where: str, counter: _Counter | None) -> None:
    hasher = hashlib.sha256()
    fd = None
    if root is not None:
        fd = root.open(f.path, _OPEN_FLAGS, f.mode)
    try:
        if fd is not None and f.mode & _UMASK:
            os.fchmod(fd, f.mode)
        for c in f.chunks:
            raw = memoryview(read_frame(manifest, c.frame, locate, where=where))
            data = raw[c.raw_offset:c.raw_offset + c.raw_length]
            hasher.update(data)
            while fd is not None and data:
                n = os.write(fd, data)
                data = data[n:]
            if counter is not None:
                counter.add(0, c.raw_length)
        if hasher.hexdigest() != f.digest:
            raise CorruptEntry(f"{where}: {f.path}: content does not match its digest")
        if fd is not None:
            os.utime(fd, ns=(f.mtime_ns, f.mtime_ns))
    finally:
        if fd is not None:
            os.close(fd)


def syncfs(path: Path) -> None:
    """One syncfs(2) of the filesystem holding ``path`` (instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc is None or _libc.syncfs(fd) != 0:
            err = ctypes.get_errno() if _libc is not None else 0
            raise CacheError(f"syncfs {path}: {os.strerror(err) if err else 'no libc'}")
    finally:
        os.close(fd)
