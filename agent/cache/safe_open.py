"""Opening paths beneath a restore's destination, following no symlink in any component.

Everything a restore creates or changes is reached beneath a descriptor of the destination opened once
(``openat2`` RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS in the compiled writer; one ``O_NOFOLLOW`` directory at
a time in Python): a directory swapped for a symlink while the restore runs (a build process of the same
user could do it) makes the restore fail; nothing is written through it.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import UnsafeTree
from stoker.agent.cache.writers import CompiledIO

DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""Flags of a directory descriptor used only to reach what lies beneath it."""
SWAPPED_ERRNOS = (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)
"""What opening beneath a root meets where a directory of the tree was replaced by a symlink or a file."""


_PINNED = re.compile(r"/proc/self/fd/\d+")


def pinned(fd: int) -> Path:
    """A path that reaches the directory open as ``fd`` (reached following no symlink by its opener) and no
    other, whatever is renamed or swapped along the way it was reached: a runner's workspace, checked once
    and then restored into and saved from through this path (agent/local_cache.py)."""
    return Path(f"/proc/self/fd/{fd}")


def open_dir(path: Path) -> int:
    """A DIR_PATH descriptor of the destination ``path``: a symlink there is refused, except the link of a
    :func:`pinned` directory, which is followed (it can lead nowhere else)."""
    if _PINNED.fullmatch(str(path)):
        return os.open(f"{path}/.", DIR_PATH)
    return os.open(path, DIR_PATH)


class Root:
    """The destination directory, opened once; every path beneath it is reached following no symlink."""

    def __init__(self, path: Path, compiled: CompiledIO | None) -> None:
        self.fd = open_dir(path)
        self._compiled = compiled

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, rel: str, flags: int, mode: int = 0o777) -> int:
        if self._compiled is not None:
            return self._compiled.open_beneath(self.fd, rel, flags, mode)
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
                nxt = os.open(part, DIR_PATH, dir_fd=fd)
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
        fd = self.open(f.path, DIR_PATH)
        try:
            if mode:
                os.chmod(f"/proc/self/fd/{fd}", f.mode)
            os.utime(f"/proc/self/fd/{fd}", ns=(f.mtime_ns, f.mtime_ns))
        finally:
            os.close(fd)

    def make_writable(self, rel: str) -> None:
        fd = self.open(rel, DIR_PATH)
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
        finally:
            os.close(fd)


class Parents:
    """Descriptors of the directories holding a run of paths, each opened once (beneath the root)."""

    def __init__(self, root: Root) -> None:
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
            fd = self.fds[head] = self.root.open(head, DIR_PATH)
        return fd, name

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def swaps_refused(where: str) -> Iterator[None]:
    """A write beneath the destination that met a symlink (or a file) where the entry has a directory
    means the tree was changed under the restore: an UnsafeTree naming the path. Other errors pass."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in SWAPPED_ERRNOS:
            raise
        raise swapped(exc, where) from exc


def swapped(exc: OSError, where: str) -> UnsafeTree:
    """The error for ``exc``, an open beneath the root that met a replaced directory."""
    return UnsafeTree(
        f"{where}: {exc.filename or '?'}: a directory of the tree being written was replaced "
        f"(by a symlink or a file) while the restore ran; nothing is written through it "
        f"({exc.strerror})"
    )
