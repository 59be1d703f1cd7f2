"""The two C library calls the cache needs that :mod:`os` lacks: prctl(PR_SET_PDEATHSIG) and syncfs(2)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from stoker.agent.cache.api import CacheError

_PR_SET_PDEATHSIG = 1


def _load() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no libc to load
        return None


# Bound at import, not on first use: binding it takes the dynamic loader's lock, which a helper forked from
# a threaded process must never try to take (another thread may have held it at the fork). Nothing in the
# process changes: libc is mapped already.
_LIBC = _load()


def die_with_parent(sig: int) -> None:
    """Have the kernel send this process ``sig`` when its parent dies (where libc can be loaded)."""
    libc = _LIBC
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def syncfs(path: Path) -> None:
    """One syncfs(2) of the filesystem holding ``path`` (instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = _LIBC
        if libc is None or libc.syncfs(fd) != 0:
            err = ctypes.get_errno() if libc is not None else 0
            raise CacheError(f"syncfs {path}: {os.strerror(err) if err else 'no libc'}")
    finally:
        os.close(fd)
