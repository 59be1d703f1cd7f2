"""Walking a workspace's trees for a save, and the stat cache that spares rehashing unchanged files.

The walk yields directories before their contents, in name order, and refuses anything a restore could
not reproduce safely: devices, FIFOs, sockets, absolute symlinks and symlinks that resolve outside the
saved trees (:class:`~stoker.agent.cache.api.UnsafeTree`, naming the path).

The stat cache works like git's index: per workspace, path → (size, mtime, inode, ctime, digest) as of the
last restore or save. A file whose four stat fields are unchanged keeps its digest; a file whose ctime is
not safely older than the moment the cache was recorded is "racily clean" and rehashed anyway. A restore
records no inode or ctime (0: it would cost an fstat per file): such a record holds while size and mtime
match and the file's ctime predates the recording, since any later write, rename or chmod moves the ctime.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import NamedTuple, Self

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, UnsafeTree
from stoker.agent.cache.safe_open import DIR_PATH, SWAPPED_ERRNOS, Root
from stoker.agent.cache.writers import CompiledIO

RACY_MARGIN_NS = 20_000_000
"""File timestamps come from a coarse kernel clock: a ctime this close to the recording is not trusted."""

EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


class WalkedPath(NamedTuple):
    path: str
    type: str
    mode: int
    mtime_ns: int
    size: int = 0
    ino: int = 0
    ctime_ns: int = 0
    target: str | None = None


class StatRecord(NamedTuple):
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    digest: str


def check_roots(paths: Sequence[str]) -> tuple[str, ...]:
    """Normalize the entry's top-level paths: relative, safe, none inside another."""
    roots = []
    for p in paths:
        norm = p.strip("/")
        mf.check_relative_path(norm, where="cache paths")
        roots.append(norm)
    for a in roots:
        for b in roots:
            if a != b and b.startswith(a + "/"):
                raise CacheError(f"cache paths {a!r} and {b!r} overlap")
    if len(set(roots)) != len(roots):
        raise CacheError(f"cache paths {list(paths)} repeat a path")
    return tuple(sorted(roots))


class OpenWorkspace:
    """A workspace opened for a save, read as untrusted input: the build may have left symlinks anywhere
    and a process of it may still change the tree while the save reads it.

    Everything is reached beneath one descriptor of the workspace, following no symlink in any component
    (:class:`~.safe_open.Root`: ``openat2`` RESOLVE_NO_SYMLINKS in the compiled module, else one
    ``O_NOFOLLOW`` directory at a time): directories are listed through descriptors opened that way, and a
    file is read only if what opens is still the regular file the walk saw (same inode). A symlink is
    recorded as a symlink (its target as text) and never followed; one where a directory or file was is
    an :class:`~.api.UnsafeTree` naming the path."""

    def __init__(self, path: Path, compiled: CompiledIO | None) -> None:
        try:
            self.root = Root(path, compiled)
        except FileNotFoundError:
            raise CacheError(f"workspace {path} does not exist") from None

    def close(self) -> None:
        self.root.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_file(self, w: WalkedPath) -> int:
        """A read-only descriptor of the walked file ``w``: refused if a symlink stands anywhere on its path
        now, or if what opens is no longer that regular file (O_NONBLOCK: a FIFO swapped in cannot block)."""
        try:
            fd = self.root.open(w.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in SWAPPED_ERRNOS:
                raise _changed(w.path, "a symlink or a file now stands on its path") from None
            raise CacheError(f"cannot read {w.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not S_ISREG(st.st_mode) or st.st_ino != w.ino:
            os.close(fd)
            raise _changed(w.path, "another file now stands there")
        return fd

    def parent_of(self, root: str) -> int | None:
        """A descriptor of the directory holding the cache path ``root`` (the workspace's own for a
        top-level one; close it unless it is ``self.root.fd``), or None when a parent does not exist."""
        head = root.rpartition("/")[0]
        if not head:
            return self.root.fd
        fd = self.root.fd
        done: list[str] = []
        for part in head.split("/"):
            done.append(part)
            try:
                nxt = os.open(part, DIR_PATH, dir_fd=fd)
            except OSError as exc:
                err = None if exc.errno == errno.ENOENT else _bad_parent("/".join(done), root, part, fd, exc)
                if fd != self.root.fd:
                    os.close(fd)
                if err is None:
                    return None
                raise err from None
            if fd != self.root.fd:
                os.close(fd)
            fd = nxt
        return fd


def _bad_parent(parent: str, root: str, name: str, dir_fd: int, exc: OSError) -> UnsafeTree:
    try:
        link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        link = False
    what = "a symlink" if link else "not a directory"
    return UnsafeTree(
        f"{parent}: a parent of the cache path {root!r} is {what} in the workspace; cache paths are read "
        f"following no symlink ({exc.strerror})"
    )


def _changed(path: str, how: str) -> UnsafeTree:
    return UnsafeTree(f"{path}: changed while the save read it ({how}); nothing is read through a symlink")


def walk(workspace: OpenWorkspace, roots: Sequence[str]) -> list[WalkedPath]:
    """Every path under ``roots`` of ``workspace`` (pre-order, by name); roots that do not exist are left
    out. One ``fstatat`` per entry, one descriptor per directory (open while its subtree is walked)."""
    out: list[WalkedPath] = []
    links: dict[str, str] = {}
    roots_t = tuple(roots)
    for root in roots_t:
        parent = workspace.parent_of(root)
        if parent is None:
            continue
        try:
            try:
                st = os.stat(root.rpartition("/")[2], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                continue
            _walk_from(parent, root, st, out, links)
        finally:
            if parent != workspace.root.fd:
                os.close(parent)
    for rel, target in links.items():
        if not mf.symlink_stays_inside(rel, target, roots_t, links, within_roots=True):
            raise UnsafeTree(f"{rel}: symlink to {target!r} leaves the saved tree")
    return out


def _walk_from(
    parent: int, root: str, st: os.stat_result, out: list[WalkedPath], links: dict[str, str]
) -> None:
    """Walk ``root`` (lstat ``st``, in the directory ``parent``) depth first, name order, into ``out``."""
    # Each frame: a directory's descriptor, its path, and its children still to visit (last first).
    frames: list[tuple[int, str, list[tuple[str, os.stat_result]]]] = []
    entry: tuple[int, str, os.stat_result] | None = (parent, root, st)
    try:
        while True:
            if entry is not None:
                frame = _visit(*entry, out, links)
                if frame is not None:
                    frames.append(frame)
            if not frames:
                return
            fd, rel, children = frames[-1]
            if children:
                name, child_st = children.pop()
                entry = (fd, f"{rel}/{name}", child_st)
            else:
                os.close(fd)
                frames.pop()
                entry = None
    finally:
        for fd, _, _ in frames:
            os.close(fd)


def _visit(
    parent: int, rel: str, st: os.stat_result, out: list[WalkedPath], links: dict[str, str]
) -> tuple[int, str, list[tuple[str, os.stat_result]]] | None:
    """Record ``rel`` (in the directory ``parent``, lstat ``st``); for a directory, return its frame."""
    name = rel.rpartition("/")[2]
    mode = st.st_mode
    if S_ISREG(mode):
        out.append(
            WalkedPath(rel, mf.FILE, mode & _PERM, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        )
        return None
    if S_ISDIR(mode):
        try:
            fd = os.open(name, _DIR_READ, dir_fd=parent)
        except OSError as exc:
            if exc.errno in SWAPPED_ERRNOS:
                raise _changed(rel, "a symlink or a file now stands where a directory was") from None
            raise CacheError(f"cannot list {rel}: {exc.strerror}") from None
        try:
            dst = os.fstat(fd)  # the directory opened, not the one the lstat saw, if they differ
            with os.scandir(fd) as it:
                entries = sorted([(e.name, e) for e in it], reverse=True)
            children = [(n, e.stat(follow_symlinks=False)) for n, e in entries]
        except OSError as exc:
            os.close(fd)
            raise CacheError(f"cannot list {rel}: {exc.strerror}") from exc
        out.append(WalkedPath(rel, mf.DIR, dst.st_mode & _PERM, dst.st_mtime_ns))
        return fd, rel, children
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=parent)
        except OSError as exc:
            raise _changed(rel, f"no longer a symlink: {exc.strerror}") from None
        if not target or target.startswith("/") or "\0" in target:  # chains are checked after the walk
            raise UnsafeTree(f"{rel}: symlink to {target!r} leaves the saved tree")
        links[rel] = target
        out.append(WalkedPath(rel, mf.SYMLINK, 0o777, st.st_mtime_ns, target=target))
        return None
    kind = (
        "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "unsupported"
    )
    raise UnsafeTree(f"{rel}: is {kind}; only files, directories and symlinks are cached")


S_ISREG = stat.S_ISREG
S_ISDIR = stat.S_ISDIR
_PERM = 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""Flags of a directory descriptor the walk lists."""


def hash_file(workspace: OpenWorkspace, w: WalkedPath) -> str:
    h = hashlib.sha256()
    with open(workspace.open_file(w), "rb", buffering=0) as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def digests(
    workspace: OpenWorkspace,
    walked: Sequence[WalkedPath],
    cache: dict[str, StatRecord],
    recorded_ns: int,
    pool: Executor,
) -> tuple[dict[str, str], int]:
    """Digest of every regular file (path → hex) and how many had to be hashed."""
    result: dict[str, str] = {}
    todo: list[WalkedPath] = []
    for w in walked:
        if w.type != mf.FILE:
            continue
        if w.size == 0:
            result[w.path] = EMPTY_DIGEST
            continue
        rec = cache.get(w.path)
        if (
            rec is not None
            and rec.size == w.size
            and rec.mtime_ns == w.mtime_ns
            and (rec.ino == 0 or (rec.ino == w.ino and rec.ctime_ns == w.ctime_ns))
            and w.ctime_ns < recorded_ns - RACY_MARGIN_NS
        ):
            result[w.path] = rec.digest
        else:
            todo.append(w)

    def one(w: WalkedPath) -> tuple[str, str]:
        try:
            return w.path, hash_file(workspace, w)
        except OSError as exc:
            raise CacheError(f"cannot read {w.path}: {exc.strerror}") from exc

    todo.sort(key=lambda w: -w.size)
    for path, digest in pool.map(one, todo):
        result[path] = digest
    return result, len(todo)


def load_stat_cache(path: Path) -> tuple[dict[str, StatRecord], int, dict]:
    """(records, recorded_ns, extra fields) from a stat-cache file; empty when absent or unreadable.

    A restore writes no records, only ``"from_manifest": true`` and the manifest's name: its records are
    the manifest's files (size, mtime, digest; inode and ctime unknown), which the caller derives with
    :func:`records_from_manifest` (so that a restore does not spend time writing a record per file)."""
    try:
        doc = json.loads(path.read_bytes())
        records = {p: StatRecord(*r) for p, r in doc["files"].items()}
        return (
            records,
            int(doc["recorded_ns"]),
            {k: v for k, v in doc.items() if k not in ("files", "recorded_ns")},
        )
    except (OSError, ValueError, KeyError, TypeError):
        return {}, 0, {}


def stat_cache_bytes(records: dict[str, StatRecord], recorded_ns: int, **extra) -> bytes:
    doc = {
        "recorded_ns": recorded_ns,
        **extra,
        "files": {p: [r.size, r.mtime_ns, r.ino, r.ctime_ns, r.digest] for p, r in records.items()},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def records_from_manifest(manifest: mf.Manifest, roots: Sequence[str]) -> dict[str, StatRecord]:
    """The stat records a restore of ``roots`` of ``manifest`` stands for (inode and ctime unknown: 0)."""
    prefixes = tuple(r + "/" for r in roots)
    return {
        f.path: StatRecord(f.size, f.mtime_ns, 0, 0, f.digest or "")
        for f in manifest.files
        if f.type == mf.FILE and (f.path in roots or f.path.startswith(prefixes))
    }
