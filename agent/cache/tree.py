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
from typing import NamedTuple

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, UnsafeTree

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


def _parents_are_directories(base: str, root: str) -> bool:
    """Whether every parent component of ``root`` under ``base`` is a real directory (False when one is
    missing). A symlink among them is refused: the build could point it anywhere the agent can read, and the
    save would pack what it names (the node's TLS key, once)."""
    parts = root.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        rel = "/".join(parts[:depth])
        try:
            st = os.lstat(base + rel)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeTree(f"{rel}: a symlink, at a parent of the cache path {root}; refusing to follow it")
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True


def walk(workspace: Path, roots: Sequence[str]) -> list[WalkedPath]:
    """Every path under ``roots`` of ``workspace`` (pre-order, by name); roots that do not exist are left
    out. Iterative, one ``lstat`` per entry (``DirEntry.stat``), no generator per path."""
    out: list[WalkedPath] = []
    roots_t = tuple(roots)
    base = str(workspace) + "/"
    append = out.append
    new = tuple.__new__
    for root in roots_t:
        if not _parents_are_directories(base, root):
            continue
        try:
            st = os.lstat(base + root)
        except FileNotFoundError:
            continue
        stack: list[tuple[str, os.stat_result]] = [(root, st)]
        while stack:
            rel, st = stack.pop()
            mode = st.st_mode
            if S_ISREG(mode):
                append(
                    new(
                        WalkedPath,
                        (
                            rel,
                            mf.FILE,
                            mode & _PERM,
                            st.st_mtime_ns,
                            st.st_size,
                            st.st_ino,
                            st.st_ctime_ns,
                            None,
                        ),
                    )
                )
            elif S_ISDIR(mode):
                append(new(WalkedPath, (rel, mf.DIR, mode & _PERM, st.st_mtime_ns, 0, 0, 0, None)))
                try:
                    with os.scandir(base + rel) as it:
                        entries = sorted([(e.name, e) for e in it], reverse=True)
                    children = [(f"{rel}/{name}", e.stat(follow_symlinks=False)) for name, e in entries]
                except OSError as exc:
                    raise CacheError(f"cannot list {rel}: {exc.strerror}") from exc
                stack.extend(children)
            elif stat.S_ISLNK(mode):
                target = os.readlink(base + rel)
                real = os.path.realpath(base + rel)
                real_root = os.path.realpath(base)
                inside = any(
                    real == os.path.join(real_root, r) or real.startswith(os.path.join(real_root, r) + "/")
                    for r in roots_t
                )
                if not mf.symlink_stays_inside(rel, target, roots_t) or not inside:
                    raise UnsafeTree(f"{rel}: symlink to {target!r} leaves the saved tree")
                append(WalkedPath(rel, mf.SYMLINK, 0o777, st.st_mtime_ns, target=target))
            else:
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
    return out


S_ISREG = stat.S_ISREG
S_ISDIR = stat.S_ISDIR
_PERM = 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)


def open_saved_file(path: str | Path):
    """Open a file of a tree being saved for reading, as untrusted input: never through a symlink in its last
    component, never blocking (a FIFO the build swapped in after the walk), and only if it is still a regular
    file; else UnsafeTree naming it. (Its parents were checked by the walk; a swap of a parent directory
    while the save runs is not caught here.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeTree(
                f"{path}: became a symlink while it was being saved; refusing to follow it"
            ) from exc
        raise
    if not S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeTree(f"{path}: is no longer a regular file (changed while it was being saved)")
    return os.fdopen(fd, "rb", buffering=0)


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open_saved_file(path) as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def digests(
    workspace: Path,
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
            return w.path, hash_file(workspace / w.path)
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
