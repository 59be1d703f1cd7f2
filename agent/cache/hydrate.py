"""Writing an entry's files from its frames: decompress and write on every core, verify every byte.

:func:`write_files` creates a tree (or only checks an entry, with no destination); :func:`apply_diff` turns
a ready tree into another entry's tree, writing only what differs. Both create the directories, symlinks
and empty files first, then run the files' tasks (:mod:`.write_tasks`) with the cache's writer
(:mod:`.writers`): on threads (:mod:`.writer_threads`) or in forked helpers (:mod:`.writer_forked`),
each task as soon as its frames have been fetched; directories get their modes and mtimes last, deepest
first. Everything is reached beneath the destination following no symlink (:mod:`.safe_open`).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from itertools import compress
from pathlib import Path
from typing import NamedTuple

from stoker.agent.cache import manifest as mf
from stoker.agent.cache import write_tasks
from stoker.agent.cache.api import CorruptEntry, ProgressFn
from stoker.agent.cache.safe_open import Parents, Root, swaps_refused
from stoker.agent.cache.write_tasks import (
    EMPTY_DIGEST,
    FetchFn,
    FrameLocator,
    ProgressCounter,
    StopFn,
    Stopped,
    Task,
    never,
    plan_tasks,
)
from stoker.agent.cache.writer_forked import run_forked
from stoker.agent.cache.writer_threads import run_threaded
from stoker.agent.cache.writers import Writer

try:  # apply_diff's comparison in C (agent/cache/_fastio.c), where it is built
    from stoker.agent.cache import _fastio as _compiled  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - without a C compiler: the same comparison in Python below
    _compiled = None

_TIMES_PER_TASK = 2000
"""Existing entries whose mtimes one task sets."""


def write_files(
    manifest: mf.Manifest,
    files: Sequence[mf.FileEntry],
    dest: Path | None,
    locate: FrameLocator,
    *,
    writer: Writer,
    workers: int,
    where: str,
    progress: ProgressFn | None = None,
    set_times: Sequence[mf.FileEntry] = (),
    fetch: FetchFn | None = None,
    missing: Sequence[int] = (),
    stop: StopFn | None = None,
) -> None:
    """Create ``files`` (directories, symlinks, files) under ``dest`` and verify every digest.

    With ``dest`` None, only decompress and verify. ``locate`` must return descriptors opened before the
    call (helper processes inherit them). ``set_times``: existing files and symlinks whose mtime to set,
    shared out among the same writers. ``missing`` frames are not readable yet: ``fetch(on_frame)``
    brings them, calling ``on_frame(i)`` as each lands, and the writers start on every task whose frames
    are there (fetching overlaps writing). ``stop``: asked before the work, after the directories and
    before each task (threads); when it answers True the call raises :class:`~.write_tasks.Stopped` (the
    caller removes what was written).
    """
    stop = stop or never
    with swaps_refused(where):
        root = None if dest is None else Root(dest, writer.compiled)
        try:
            if stop():
                raise Stopped(f"{where}: stopped before writing")
            regular = [f for f in files if f.type == mf.FILE]
            counter = ProgressCounter(len(regular), sum(f.size for f in regular), progress)
            if root is not None:
                _create_entries(files, root, where, counter, writer.umask, stop)
            tasks = plan_tasks(manifest, files)
            for i in range(0, len(set_times), _TIMES_PER_TASK):
                tasks.append(Task(0, None, tuple(set_times[i : i + _TIMES_PER_TASK]), times_only=True))
            if stop():
                raise Stopped(f"{where}: stopped after creating the directories")
            _run_tasks(
                manifest, tasks, root, locate, where, counter, writer, workers, fetch, set(missing), stop
            )
            counter.add(0, 0, force=True)
            if root is not None:
                dirs = [f for f in reversed(files) if f.type == mf.DIR]
                set_dir_meta(root, dirs, [not _keeps_dir_mode(f, writer.umask) for f in dirs], writer)
        finally:
            if root is not None:
                root.close()


_STOP_EVERY = 512
"""Entries created between two questions to ``stop`` (a few milliseconds of mkdir)."""


def _create_entries(
    files: Sequence[mf.FileEntry],
    root: Root,
    where: str,
    counter: ProgressCounter,
    umask: int,
    stop: StopFn = never,
) -> None:
    """Create the directories (with their final mode where the umask keeps it), symlinks and empty files;
    ``stop`` is asked every few hundred entries (a refill stops within milliseconds when the cache closes,
    not after a large tree's every directory)."""
    with Parents(root) as parents:
        for i, f in enumerate(files):
            if i % _STOP_EVERY == _STOP_EVERY - 1 and stop():
                raise Stopped(f"{where}: stopped while creating the directories")
            if f.type == mf.DIR:
                fd, name = parents(f.path)
                os.mkdir(name, f.mode if _keeps_dir_mode(f, umask) else 0o700, dir_fd=fd)
        for f in files:
            if f.type == mf.SYMLINK:
                fd, name = parents(f.path)
                assert f.target is not None, "validated manifests give every symlink a target"
                os.symlink(f.target, name, dir_fd=fd)
                os.utime(name, ns=(f.mtime_ns, f.mtime_ns), dir_fd=fd, follow_symlinks=False)
            elif f.type == mf.FILE and not f.chunks:
                if f.digest != EMPTY_DIGEST:
                    raise CorruptEntry(f"{where}: {f.path}: digest mismatch (empty file)")
                write_tasks.write_one(parents, f, b"", umask)
                counter.add(1, 0)


def _run_tasks(
    manifest: mf.Manifest,
    tasks: list[Task],
    root: Root | None,
    locate: FrameLocator,
    where: str,
    counter: ProgressCounter,
    writer: Writer,
    workers: int,
    fetch: FetchFn | None,
    missing: set[int],
    stop: StopFn,
) -> None:
    """Forked helpers for the Python writer when it may fork and there is more than one task; else threads."""
    helpers = max(1, workers) - 1 if writer.compiled is None and writer.forked and len(tasks) > 1 else 0
    if helpers:
        run_forked(manifest, tasks, root, locate, where, counter, writer, helpers, fetch, missing)
    else:
        run_threaded(
            manifest, tasks, root, locate, where, counter, writer, max(1, workers), fetch, missing, stop
        )


def set_dir_meta(root: Root, dirs: Sequence[mf.FileEntry], modes: Sequence[bool], writer: Writer) -> None:
    """Give directories ``dirs`` their mtimes, and their modes where ``modes`` says so (after everything
    beneath them is written: writing in a directory changes its mtime), deepest first. With the compiled
    writer, the mtimes of directories whose mode stays are set in one call without the GIL."""
    if writer.compiled is not None:
        # First, while every directory above them is still searchable: a mode set below may take that away.
        writer.compiled.set_times(root.fd, [f for f, mode in zip(dirs, modes) if not mode])
    for f, mode in zip(dirs, modes):
        if mode or writer.compiled is None:
            root.set_dir_meta(f, mode=mode)


def _keeps_dir_mode(f: mf.FileEntry, umask: int) -> bool:
    """A directory created with its final mode: the umask keeps it and the owner can still write in it."""
    return f.mode & 0o700 == 0o700 and f.mode & (0o777 & ~umask) == f.mode


_IDENTITY = operator.itemgetter(0, 1, 2, 4, 5, 6)
"""What a kept entry shares with its new version: path, type, mode, size, digest, target (FileEntry)."""
_META = operator.itemgetter(0, 2, 3)
"""Path, mode, mtime (FileEntry)."""
_PATH = operator.itemgetter(0)


def apply_diff(
    manifest: mf.Manifest,
    held: Sequence[mf.FileEntry],
    files: Sequence[mf.FileEntry],
    dest: Path,
    locate: FrameLocator,
    *,
    writer: Writer,
    workers: int,
    where: str,
    progress: ProgressFn | None = None,
    fetch: FetchFn | None = None,
    missing: Sequence[int] = (),
) -> None:
    """Turn the tree at ``dest``, which holds exactly ``held`` (a ready tree), into ``files``: remove what
    differs, write what is new or changed from its frames (every such digest checked), fix metadata
    (what :func:`diff_entries` says)."""
    diff = diff_entries(held, files)
    opened = _remove_entries(diff, dest, writer, where)
    write_files(
        manifest,
        diff.create,
        dest,
        locate,
        writer=writer,
        workers=workers,
        where=where,
        progress=progress,
        set_times=diff.set_times,
        fetch=fetch,
        missing=missing,
    )
    modes = [f.path in opened or changed for f, changed in zip(diff.dirs, diff.dir_modes)]
    with swaps_refused(where), Root(dest, writer.compiled) as root:
        set_dir_meta(root, diff.dirs, modes, writer)


class Diff(NamedTuple):
    """What turns a ready tree into an entry's tree (:func:`diff_entries`)."""

    removed: list[mf.FileEntry]
    """The held entries to remove, in the held order."""
    create: list[mf.FileEntry]
    """The entries to create, in the entry's order."""
    touched: dict[str, mf.FileEntry | None]
    """The directories that lose or gain an entry (``rpartition("/")[0]`` of both, so ``""`` above the
    roots), each with the held entry of that path, or None."""
    set_times: list[mf.FileEntry]
    """Kept files and symlinks whose mtime differs (or whose mode: never, a mode change recreates them)."""
    dirs: list[mf.FileEntry]
    """Kept directories whose mode or mtime differ or that are among ``touched``."""
    dir_modes: list[bool]
    """For each of ``dirs``: whether its mode differs from the held one."""


def diff_entries(held: Sequence[mf.FileEntry], files: Sequence[mf.FileEntry]) -> Diff:
    """Compare the entries of a ready tree (``held``) with those of the entry to restore (``files``), each
    with unique paths: an entry is kept when its path, type, mode, size, content digest and link target
    are the same, or when both are directories (its mode is fixed after); mtimes of kept entries are
    fixed after. In C (``_fastio.diff_entries``: no tuple made per entry, ~0.004 s for the bench tree
    against ~0.035 s) where it is built, else :func:`_diff_entries`, which gives the same result."""
    if _compiled is not None:
        found = _compiled.diff_entries(held, files, mf.DIR)
        if found is not None:
            return Diff(*found)
    with mf.gc_paused():  # ~100k tuples, no cycle among them
        return _diff_entries(held, files)


def _diff_entries(held: Sequence[mf.FileEntry], files: Sequence[mf.FileEntry]) -> Diff:
    """:func:`diff_entries` on sets of tuples made and filtered at C speed (``itemgetter``, ``compress``)."""
    held_ids = list(map(_IDENTITY, held))
    file_ids = list(map(_IDENTITY, files))
    keep = set(held_ids).intersection(file_ids)
    removed_entries = list(compress(held, map(operator.not_, map(keep.__contains__, held_ids))))
    create = list(compress(files, map(operator.not_, map(keep.__contains__, file_ids))))
    kept_dirs = {f.path for f in removed_entries if f.type == mf.DIR}.intersection(
        f.path for f in create if f.type == mf.DIR
    )
    if kept_dirs:  # a directory whose mode changed stays, with what it holds; its mode is fixed below
        removed_entries = [f for f in removed_entries if f.path not in kept_dirs]
        create = [f for f in create if f.path not in kept_dirs]
    removed = {f.path for f in removed_entries}
    created = {f.path for f in create}
    touched = {p.rpartition("/")[0] for p in removed} | {p.rpartition("/")[0] for p in created}
    # Kept entries whose mode or mtime differ, and kept directories whose contents changed: files' and
    # symlinks' mtimes are set by the writers alongside the new files, directories' after them.
    meta = set(map(_META, files)).difference(map(_META, held))
    fix = set(map(_PATH, meta)).difference(created) | (touched - created - removed)
    fixing = list(compress(files, map(fix.__contains__, map(_PATH, files))))
    dirs = list(compress(fixing, map(mf.DIR.__eq__, map(mf.TYPE, fixing))))
    held_at = {f.path: f for f in compress(held, map(touched.__contains__, map(mf.PATH, held)))}
    old_modes = {f.path: f.mode for f in held if f.type == mf.DIR and f.path in fix}
    return Diff(
        removed=removed_entries,
        create=create,
        touched={d: held_at.get(d) for d in touched},
        set_times=list(compress(fixing, map(mf.DIR.__ne__, map(mf.TYPE, fixing)))),
        dirs=dirs,
        dir_modes=[old_modes.get(f.path) != f.mode for f in dirs],
    )


def _remove_entries(diff: Diff, dest: Path, writer: Writer, where: str) -> dict[str, int]:
    """Remove ``diff.removed`` from the tree at ``dest``, children first, after making the kept
    directories among ``diff.touched`` writable; returns those directories and the modes they held."""
    removed = {f.path for f in diff.removed}
    opened: dict[str, int] = {}
    with swaps_refused(where), Root(dest, writer.compiled) as root:
        for d, f in sorted(diff.touched.items()):  # a directory before what it holds
            if f is not None and d and d not in removed and f.mode & 0o700 != 0o700:
                root.make_writable(d)  # let this process change a read-only directory
                opened[d] = f.mode
        with Parents(root) as parents:
            for f in reversed(diff.removed):  # children before their directory
                fd, name = parents(f.path)
                if f.type == mf.DIR:
                    held_open = parents.fds.pop(f.path, None)
                    if held_open is not None:
                        os.close(held_open)
                    os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
    return opened
