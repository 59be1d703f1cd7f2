"""A restore's staging directory inside the workspace, and publishing it: one rename per root.

A restore builds its trees in ``<workspace>/.stoker-staging-<random>`` and then renames each root into
place, so a build never sees a half-written tree; whatever a root replaces is moved into the staging
directory first and removed with it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from stoker.agent.cache.api import UnsafeTree
from stoker.agent.cache.libc import syncfs
from stoker.agent.cache.safe_open import DIR_PATH, SWAPPED_ERRNOS, open_dir

STAGING_PREFIX = ".stoker-staging-"


def new_stage(workspace: Path) -> Path:
    """A fresh staging path in ``workspace`` (not created), after removing any a killed restore left."""
    workspace.mkdir(parents=True, exist_ok=True)
    for leftover in workspace.glob(STAGING_PREFIX + "*"):
        remove_tree(leftover)
    return workspace / f"{STAGING_PREFIX}{uuid.uuid4().hex}"


def publish(stage: Path, workspace: Path, present: set[str], where: str, *, sync: bool) -> None:
    """Rename the roots ``present`` from ``stage`` into ``workspace`` (after one syncfs when ``sync``).

    Each rename is made between directory descriptors reached from the workspace's (and the stage's)
    following no symlink, creating missing parents on the way: a symlink planted at a parent of a root —
    before the restore or while it runs — is refused (naming it), never written through, and one swapped in
    after its directory was opened changes nothing outside the workspace."""
    if sync:
        syncfs(stage)
    ws_fd = open_dir(workspace)
    try:
        stage_fd = os.open(stage, DIR_PATH)
        try:
            for r in sorted(present):
                _publish_root(r, stage_fd, ws_fd, where)
        finally:
            os.close(stage_fd)
    finally:
        os.close(ws_fd)


def _publish_root(r: str, stage_fd: int, ws_fd: int, where: str) -> None:
    """Move root ``r`` from the stage into the workspace; what it replaces goes into the stage."""
    head, _, name = r.rpartition("/")
    src = _open_dirs(stage_fd, head, where, create=False)
    try:
        dst = _open_dirs(ws_fd, head, where, create=True)
        try:
            if _lexists(name, dst):
                replaced = f".replaced-{uuid.uuid4().hex}"
                os.rename(name, replaced, src_dir_fd=dst, dst_dir_fd=stage_fd)
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
        finally:
            _close(dst, ws_fd)
    finally:
        _close(src, stage_fd)


def _open_dirs(top: int, rel: str, where: str, *, create: bool) -> int:
    """A descriptor of the directory ``rel`` beneath ``top`` (``top`` itself for ""), reached following no
    symlink; with ``create``, missing directories are made. An UnsafeTree names a component that is a
    symlink or not a directory."""
    fd = top
    done: list[str] = []
    try:
        for part in rel.split("/") if rel else ():
            done.append(part)
            if create:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nxt = os.open(part, DIR_PATH, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in SWAPPED_ERRNOS:
                    raise
                raise UnsafeTree(
                    f"{where}: {'/'.join(done)} in the workspace is not a directory (a symlink or a file); "
                    "nothing is written through it"
                ) from None
            _close(fd, top)
            fd = nxt
    except BaseException:
        _close(fd, top)
        raise
    return fd


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _close(fd: int, keep: int) -> None:
    if fd != keep:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a staging directory; read-only directories inside it (restored modes) are made writable."""
    if not os.path.lexists(path):
        return

    def retry(func: Callable[[str], object], p: str, _exc: object) -> None:
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
