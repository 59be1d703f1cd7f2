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

STAGING_PREFIX = ".stoker-staging-"


def new_stage(workspace: Path) -> Path:
    """A fresh staging path in ``workspace`` (not created), after removing any a killed restore left."""
    workspace.mkdir(parents=True, exist_ok=True)
    for leftover in workspace.glob(STAGING_PREFIX + "*"):
        remove_tree(leftover)
    return workspace / f"{STAGING_PREFIX}{uuid.uuid4().hex}"


def publish(stage: Path, workspace: Path, present: set[str], where: str, *, sync: bool) -> None:
    """Rename the roots ``present`` from ``stage`` into ``workspace`` (after one syncfs when ``sync``)."""
    if sync:
        syncfs(stage)
    for r in sorted(present):
        _check_no_symlink_ancestors(workspace, r, where)
        target = workspace / r
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target):
            os.rename(target, stage / f".replaced-{uuid.uuid4().hex}")
        os.rename(stage / r, target)


def _check_no_symlink_ancestors(workspace: Path, rel: str, where: str) -> None:
    """Publishing must not follow a symlink the workspace holds on the way to ``rel``."""
    current = workspace
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise UnsafeTree(f"{where}: {current.relative_to(workspace)} in the workspace is not a directory")


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
