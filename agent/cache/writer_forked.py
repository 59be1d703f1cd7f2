"""Running a restore's tasks in forked helper processes (the Python writer's default).

The caller forks ``workers - 1`` helpers after the manifest is loaded and the directories exist, and every
process — the caller included — takes the next task index from a shared pipe (reads of 4 bytes from a
pipe are atomic: dynamic balancing without locks). Helpers report progress and errors over a second pipe,
and die with their parent (``PR_SET_PDEATHSIG``). A helper that fails or is killed makes the whole call
fail: the caller kills the other helpers and raises, and nothing is published (the caller writes into a
staging directory).

Forking a process that has other threads is safe here because a helper runs only the writers' code: no
imports, no logging, no locks shared with the parent's threads besides the allocator's (which glibc
resets at fork) — and it leaves with ``os._exit``.
"""

from __future__ import annotations

import fcntl
import gc
import os
import select
import signal
import struct
import threading
from collections.abc import Sequence

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, CorruptEntry, UnsafeTree
from stoker.agent.cache.libc import die_with_parent
from stoker.agent.cache.safe_open import SWAPPED_ERRNOS, Root, swapped
from stoker.agent.cache.write_tasks import (
    FetchFn,
    FrameLocator,
    ProgressCounter,
    Task,
    dependencies,
    run_task,
)
from stoker.agent.cache.writers import Writer

_MSG = struct.Struct("<cIQ")
"""Helper → caller: (b"P", files, bytes) progress, or (b"E", length, error kind) then the message."""
_ERRORS = (CacheError, CorruptEntry, UnsafeTree)
_F_SETPIPE_SZ = 1031


class HelperCrashed(CacheError):
    """A forked writer died without reporting an error (killed, or crashed: forking a process whose other
    threads are inside gRPC can leave the child unable to run). Every frame has been fetched by then."""


class _Pipes:
    """The task pipe (caller → everyone: task indices) and the result pipe (helpers → caller)."""

    def __init__(self) -> None:
        self.task_r, self.task_w = os.pipe2(os.O_CLOEXEC)
        self.res_r, self.res_w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.task_w, _F_SETPIPE_SZ, 1 << 20)  # room for every task index at once
        except OSError:
            pass

    def send(self, indices: Sequence[int]) -> None:
        os.write(self.task_w, b"".join(struct.pack("<I", n) for n in indices))

    def close_task_w(self) -> None:
        """No more tasks: once the pipe is empty every reader sees its end."""
        os.close(self.task_w)
        self.task_w = -1

    def close_res_w(self) -> None:
        os.close(self.res_w)
        self.res_w = -1

    def close(self) -> None:
        for fd in (self.task_r, self.task_w, self.res_r, self.res_w):
            if fd >= 0:
                os.close(fd)


class _Reports:
    """What the helpers report on the result pipe: progress goes to the counter, errors are kept."""

    def __init__(self, fd: int, counter: ProgressCounter) -> None:
        self.fd = fd
        self.counter = counter
        self.pending = b""
        self.errors: list[BaseException] = []

    def read(self, *, block: bool) -> bool:
        """Read the helpers' messages (all until every helper closed its end when ``block``, else what is
        there now); False once every helper closed its end."""
        while True:
            if not block and not select.select([self.fd], [], [], 0)[0]:
                return True
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return False
            self.pending += chunk
            self._parse()

    def _parse(self) -> None:
        while len(self.pending) >= _MSG.size:
            tag, a, b = _MSG.unpack_from(self.pending)
            if tag == b"P":
                self.pending = self.pending[_MSG.size :]
                self.counter.add(a, b)
            elif len(self.pending) >= _MSG.size + a:
                text = self.pending[_MSG.size : _MSG.size + a].decode(errors="replace")
                self.pending = self.pending[_MSG.size + a :]
                self.errors.append(_ERRORS[b](text) if b < len(_ERRORS) else CacheError(text))
            else:
                break


def run_forked(
    manifest: mf.Manifest,
    tasks: Sequence[Task],
    root: Root | None,
    locate: FrameLocator,
    where: str,
    counter: ProgressCounter,
    writer: Writer,
    helpers: int,
    fetch: FetchFn | None = None,
    missing: set[int] | None = None,
) -> None:
    """Run ``tasks`` in this process and ``helpers`` forked ones (see the module docstring)."""
    pipes = _Pipes()
    pids: list[int] = []
    try:
        parent = os.getpid()
        gc.freeze()  # keep the collector from touching (and copying) every shared page in the helpers
        try:
            for _ in range(helpers):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the helper (exercised by the tests)
                    _helper(manifest, tasks, root, locate, where, pipes, parent, writer)
                pids.append(pid)
        finally:
            gc.unfreeze()
        pipes.close_res_w()
        reports = _Reports(pipes.res_r, counter)
        try:
            _hand_out(tasks, pipes, where, fetch, missing or set())
            _take_tasks(manifest, tasks, root, locate, where, counter, writer, pipes, reports)
        except BaseException:
            _kill(pids)
            raise
        if reports.errors:
            _kill(pids)
            raise reports.errors[0]
        while reports.read(block=True):
            pass
        failed = _reap(pids)
        if reports.errors:
            raise reports.errors[0]
        if failed:
            how = ", ".join(f"killed by signal {-c}" if c < 0 else f"exit status {c}" for c in failed)
            raise HelperCrashed(f"{where}: a restore helper process failed ({how}); nothing was published")
    finally:
        _kill(pids)
        pipes.close()


def _hand_out(
    tasks: Sequence[Task], pipes: _Pipes, where: str, fetch: FetchFn | None, missing: set[int]
) -> None:
    """Put every task on the task pipe: those whose frames are all readable now, the others as the fetch
    brings their last frame; then close it."""
    waits, waiting = dependencies(tasks, missing)
    pipes.send([n for n in range(len(tasks)) if not waits[n]])
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
                    pipes.send(ready)

        fetch(on_frame)
    if waiting:
        raise CacheError(f"{where}: frames {sorted(waiting)[:5]} were never fetched")
    pipes.close_task_w()


def _take_tasks(
    manifest: mf.Manifest,
    tasks: Sequence[Task],
    root: Root | None,
    locate: FrameLocator,
    where: str,
    counter: ProgressCounter,
    writer: Writer,
    pipes: _Pipes,
    reports: _Reports,
) -> None:
    """The caller's share: take task indices until the pipe ends or a helper reports an error."""
    while not reports.errors:
        n = _read_index(pipes.task_r)
        if n is None:
            break
        counter.add(*run_task(manifest, tasks[n], root, locate, where, counter, writer))
        reports.read(block=False)


def _read_index(fd: int) -> int | None:
    """The next task index from the task pipe, or None at its end."""
    got = os.read(fd, 4)
    while got and len(got) < 4:  # never split by the writer (whole indices), but be exact
        more = os.read(fd, 4 - len(got))
        if not more:
            break
        got += more
    return int(struct.unpack("<I", got)[0]) if len(got) == 4 else None


def _reap(pids: list[int]) -> list[int]:
    """Wait for every helper; the exit codes that were not 0 (negative: killed by that signal)."""
    failed = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            failed.append(code)
    pids.clear()
    return failed


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
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(3)


def _helper(
    manifest: mf.Manifest,
    tasks: Sequence[Task],
    root: Root | None,
    locate: FrameLocator,
    where: str,
    pipes: _Pipes,
    parent: int,
    writer: Writer,
) -> None:  # pragma: no cover - in a helper
    code = 0
    try:
        os.close(pipes.task_w)  # the parent's end: the pipe must read as ended once the parent closes it
        become_helper(parent)
        while True:
            n = _read_index(pipes.task_r)
            if n is None:
                break
            files, nbytes = run_task(manifest, tasks[n], root, locate, where, None, writer)
            os.write(pipes.res_w, _MSG.pack(b"P", files, nbytes))
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.errno in SWAPPED_ERRNOS:
            exc = swapped(exc, where)
        kind = next((i for i, cls in reversed(list(enumerate(_ERRORS))) if isinstance(exc, cls)), None)
        text = (
            str(exc) if kind is not None else f"{where}: restore helper failed: {type(exc).__name__}: {exc}"
        )
        data = text.encode()[:3000]
        try:
            os.write(pipes.res_w, _MSG.pack(b"E", len(data), kind if kind is not None else 99) + data)
        except OSError:
            pass
        code = 1
    finally:
        os._exit(code)
