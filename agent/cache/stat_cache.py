"""The stat cache of each workspace: what its trees held after the last restore or save, so that the next
save hashes only files whose stat changed (see :func:`.tree.load_stat_cache`).

A restore (or a save whose tree is exactly a local manifest) records only the manifest's name; a save
records every file's stat and digest. The file is written last, under the store's ``workspaces/``.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from stoker.agent.cache import tree
from stoker.agent.cache.resolve import LocalManifests
from stoker.agent.cache.store import LocalStore

_KEEP = 64
"""Stat caches kept (of the workspaces used last)."""


class StatCaches:
    """The stat caches of the workspaces the node's store has seen."""

    def __init__(self, store: LocalStore, manifests: LocalManifests) -> None:
        self._store = store
        self._manifests = manifests

    def path(self, workspace: Path) -> Path:
        return self._store.workspace_file(workspace)

    def record_manifest(
        self,
        workspace: Path,
        roots: tuple[str, ...],
        key: str,
        manifest: str,
        *,
        recorded_ns: int | None = None,
    ) -> None:
        """Record what this workspace now holds — the files of ``roots`` of ``manifest`` — as the stat
        cache for the next save. ``recorded_ns``: a moment before which every file was as the manifest
        says (default: now)."""
        path = self.path(workspace)
        _replace(
            path,
            tree.stat_cache_bytes(
                {},
                recorded_ns or time.time_ns(),
                key=key,
                manifest=manifest,
                workspace=str(workspace.resolve()),
                from_manifest=True,
                roots=list(roots),
            ),
        )
        _prune(path.parent, keep=_KEEP)

    def record_files(
        self, workspace: Path, records: dict[str, tree.StatRecord], recorded_ns: int, key: str, manifest: str
    ) -> None:
        """Record every file's stat and digest as a save saw them at ``recorded_ns``."""
        _replace(
            self.path(workspace),
            tree.stat_cache_bytes(
                records, recorded_ns, key=key, manifest=manifest, workspace=str(workspace.resolve())
            ),
        )

    def load(self, workspace: Path) -> tuple[dict[str, tree.StatRecord], int, str | None]:
        """(records, recorded_ns, name of the manifest the workspace was restored from or saved as)."""
        records, recorded_ns, extra = tree.load_stat_cache(self.path(workspace))
        name = str(extra.get("manifest", "")) or None
        if extra.get("from_manifest"):
            manifest = self._manifests.get(name or "")
            if manifest is None:  # evicted since: every file is hashed again
                return {}, 0, None
            records = tree.records_from_manifest(manifest, tuple(extra.get("roots", ())))
        return records, recorded_ns, name


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _prune(directory: Path, keep: int) -> None:
    entries = sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
    for p in entries[keep:]:
        p.unlink(missing_ok=True)
