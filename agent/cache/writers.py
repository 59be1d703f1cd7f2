"""Which code writes an entry's restored files, chosen once when the cache is built.

Creating ~25k files is mostly per-file syscalls; made from Python they serialise on the GIL, so threads
alone do not scale. Three writers do the same work (same files, every digest checked):

- ``compiled``: :mod:`._fastio` (agent/cache/_fastio.c, built with the package where a C compiler is
  available) checks and writes a whole frame's files per call with the GIL released, so a pool of
  ``workers`` threads runs on every core — no process is forked, which matters in the agent, where gRPC's
  threads make forking risky (see :mod:`.writer_threads`);
- ``python-processes``: the Python writer, with ``workers - 1`` helper processes forked per restore
  (see :mod:`.writer_forked`);
- ``python-threads``: the Python writer on ``workers`` threads (what a restore falls back to when a
  forked helper crashes).

``auto`` is ``compiled`` when it is built, else ``python-processes``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, get_args

from stoker.agent.cache import manifest as mf

WriterKind = Literal["auto", "compiled", "python-processes", "python-threads"]
WRITER_KINDS: tuple[WriterKind, ...] = get_args(WriterKind)


class CompiledIO(Protocol):
    """The functions of :mod:`._fastio` (see agent/cache/_fastio.c)."""

    def open_beneath(self, root_fd: int, path: str, flags: int, mode: int, /) -> int:
        """Open ``path`` beneath ``root_fd`` following no symlink in any component."""
        ...

    def write_group(
        self, root_fd: int, data: bytes, files: Sequence[mf.FileEntry], umask: int, check: bool = True, /
    ) -> int | None:
        """Check (unless ``check`` is False: the frame was checked) and (``root_fd`` >= 0) write the files
        of one decompressed frame; the index of the first file whose digest does not match, or None."""
        ...

    def set_times(self, root_fd: int, entries: Sequence[mf.FileEntry], /) -> None:
        """Give each existing entry beneath ``root_fd`` its mtime, following no symlink."""
        ...


@dataclass(frozen=True)
class Writer:
    """The writer a cache uses, with what it needs to know about the process, read once."""

    compiled: CompiledIO | None
    """The compiled writer, or None for the Python writer."""
    forked: bool
    """Python writer only: write from forked helper processes rather than threads."""
    umask: int
    """The process's umask when the writer was chosen: files whose mode it would change get a chmod."""

    @property
    def kind(self) -> WriterKind:
        if self.compiled is not None:
            return "compiled"
        return "python-processes" if self.forked else "python-threads"

    def threads_only(self) -> Writer:
        """The same writer, never forking (the compiled writer never does)."""
        return replace(self, forked=False)


def writer_kind(text: str) -> WriterKind:
    """``text`` as a :data:`WriterKind`; a ValueError naming the choices otherwise."""
    for kind in WRITER_KINDS:
        if text == kind:
            return kind
    raise ValueError(f"cache.writer must be one of {', '.join(WRITER_KINDS)}, not {text!r}")


def load_compiled() -> CompiledIO | None:
    """The compiled writer, or None when it was not built (no C compiler at install time)."""
    try:
        from stoker.agent.cache import _fastio  # type: ignore[attr-defined]
    except ImportError:
        return None
    # _fastio reads FileEntry and Chunk by position; keep it in step with manifest.py.
    if mf.FileEntry._fields[:8] != (
        "path",
        "type",
        "mode",
        "mtime_ns",
        "size",
        "digest",
        "target",
        "chunks",
    ) or mf.Chunk._fields != ("frame", "raw_offset", "raw_length"):  # pragma: no cover - a programming error
        raise ImportError("agent/cache/_fastio.c reads FileEntry/Chunk fields by position: update it")
    compiled: CompiledIO = _fastio
    return compiled


def choose_writer(kind: WriterKind) -> Writer:
    """The writer ``kind`` names (``auto``: compiled when built). Reads the process's umask."""
    compiled = load_compiled() if kind in ("auto", "compiled") else None
    if kind == "compiled" and compiled is None:
        raise ValueError(
            "cache.writer is compiled, but the compiled writer (stoker.agent.cache._fastio) is not "
            "built: reinstall stoker where a C compiler is available"
        )
    return Writer(
        compiled=compiled, forked=compiled is None and kind != "python-threads", umask=_read_umask()
    )


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it: put it back at once
    os.umask(umask)
    return umask


@dataclass
class ActiveWriter:
    """The writer a cache's restores use now, on how many workers.

    Seen in the agent: a helper forked while gRPC's threads were busy died of SIGSEGV in gRPC's at-fork
    handler. With ``fallback_to_threads``, the restore that meets such a crash writes its files again with
    threads, and the cache keeps to threads from then on (:meth:`keep_to_threads`)."""

    writer: Writer
    workers: int
    fallback_to_threads: bool = True
    """When a forked writer dies without reporting an error, write with threads instead of failing."""

    def keep_to_threads(self) -> None:
        self.writer = self.writer.threads_only()
