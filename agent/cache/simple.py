"""A deliberately simple :class:`BuildCache`: whole-entry tarballs in a local blob directory.

Each entry is one zstd-compressed tar of its paths, stored as ``<blobs>/simple/<key>.tar.zst``; the
node keeps unpacked entries under ``<root>/entries``. It fetches whole entries (no deltas) and only
supports ``file://`` blob stores. It exists as a small reference implementation of the interface;
the content-addressed cache replaces it as the default.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import zstandard

from stoker.agent.cache.api import (
    CacheError,
    EntryInfo,
    InventoryListener,
    Progress,
    ProgressFn,
    RestoreResult,
    SaveResult,
    UnsafeTree,
)

_COMPLETE = "COMPLETE"


class SimpleCache:
    def __init__(self, root: Path, blobs_dir: Path, budget_bytes: int) -> None:
        self._root = root
        self._entries_dir = root / "entries"
        self._staging = root / "staging"
        self._blobs = blobs_dir / "simple"
        self._budget = budget_bytes
        self._lock = threading.RLock()
        self._index: dict[str, EntryInfo] = {}
        self._generation = 0
        self._listeners: list[InventoryListener] = []
        self._evicted = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            shutil.rmtree(self._staging, ignore_errors=True)
            for d in (self._entries_dir, self._staging, self._blobs):
                d.mkdir(parents=True, exist_ok=True)
            self._index.clear()
            for entry_dir in self._entries_dir.iterdir():
                meta = entry_dir / "meta.json"
                if not (entry_dir / _COMPLETE).exists() or not meta.exists():
                    shutil.rmtree(entry_dir, ignore_errors=True)
                    continue
                info = EntryInfo(**json.loads(meta.read_text()))
                self._index[info.key] = info

    def inventory(self) -> tuple[int, list[EntryInfo]]:
        with self._lock:
            return self._generation, list(self._index.values())

    def subscribe(self, listener: InventoryListener) -> None:
        self._listeners.append(listener)

    def disk_usage(self) -> tuple[int, int]:
        with self._lock:
            used = sum(e.bytes for e in self._index.values())
        return used, max(0, self._budget - used)

    @property
    def evicted_bytes_total(self) -> int:
        return self._evicted

    # -- restore -------------------------------------------------------------------------------
    def restore(self, key: str, restore_keys: Sequence[str], workspace: Path, paths: Sequence[str],
                progress: ProgressFn | None = None) -> RestoreResult:
        started = time.monotonic()
        found, warmth, fetched = self._locate(key, restore_keys, progress)
        if found is None:
            return RestoreResult("cold", None, 0, 0, 0, time.monotonic() - started)
        tree = self._entry_dir(found.key) / "tree"
        for rel in paths:
            src = tree / rel
            if src.exists() or src.is_symlink():
                _copy(src, workspace / rel)
        self._touch(found.key)
        return RestoreResult(warmth, found.key, fetched, found.bytes, found.files, time.monotonic() - started)

    def prewarm(self, key: str, restore_keys: Sequence[str]) -> RestoreResult:
        started = time.monotonic()
        found, warmth, fetched = self._locate(key, restore_keys, None)
        if found is None:
            return RestoreResult("cold", None, 0, 0, 0, time.monotonic() - started)
        self._touch(found.key)
        return RestoreResult(warmth, found.key, fetched, 0, 0, time.monotonic() - started)

    def _locate(self, key: str, restore_keys: Sequence[str], progress: ProgressFn | None):
        with self._lock:
            if key in self._index:
                return self._index[key], "warm", 0
        if key and self._blob(key).exists():
            return self._fetch(key, progress), "cold", self._blob(key).stat().st_size
        for prefix in restore_keys:
            with self._lock:
                local = [e for e in self._index.values() if e.key.startswith(prefix)]
            if local:
                return max(local, key=lambda e: e.created), "partial", 0
            remote = self._remote_newest(prefix)
            if remote is not None:
                return self._fetch(remote, progress), "cold", self._blob(remote).stat().st_size
        return None, "cold", 0

    def _remote_newest(self, prefix: str) -> str | None:
        quoted = _quote(prefix)
        best: tuple[float, str] | None = None
        for meta in self._blobs.glob("*.json"):
            if not meta.name.startswith(quoted):
                continue
            doc = json.loads(meta.read_text())
            if best is None or doc["created"] > best[0]:
                best = (doc["created"], doc["key"])
        return None if best is None else best[1]

    def _fetch(self, key: str, progress: ProgressFn | None) -> EntryInfo:
        blob = self._blob(key)
        meta = json.loads(blob.with_suffix("").with_suffix(".json").read_text())
        stage = Path(os.path.realpath(self._staging)) / f"fetch-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "tree").mkdir(parents=True)
        total = blob.stat().st_size
        try:
            with blob.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    tar.extractall(stage / "tree", filter="tar")
        except (tarfile.TarError, zstandard.ZstdError, OSError) as exc:
            shutil.rmtree(stage, ignore_errors=True)
            raise CacheError(f"entry {key}: cannot unpack {blob}: {exc}") from exc
        if progress:
            progress(Progress(total, total, meta["files"], meta["files"]))
        now = time.time()
        info = EntryInfo(key=key, bytes=meta["bytes"], files=meta["files"], created=meta["created"], last_used=now)
        self._publish(stage, info)
        return info

    # -- save ----------------------------------------------------------------------------------
    def save(self, key: str, workspace: Path, paths: Sequence[str], progress: ProgressFn | None = None) -> SaveResult:
        started = time.monotonic()
        stage = self._staging / f"save-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "tree").mkdir(parents=True)
        files = size = 0
        for rel in paths:
            src = workspace / rel
            if not src.exists():
                continue
            _check_tree(src, workspace)
            _copy(src, stage / "tree" / rel)
        for dirpath, dirnames, filenames in os.walk(stage / "tree"):
            for name in filenames + dirnames:
                st = os.lstat(os.path.join(dirpath, name))
                files += 1
                size += st.st_size if not os.path.isdir(os.path.join(dirpath, name)) else 0
        blob = self._blob(key)
        tmp = blob.with_name(blob.name + f".tmp-{os.getpid()}")
        with tmp.open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as writer:
            with tarfile.open(fileobj=writer, mode="w|") as tar:
                for rel in paths:
                    if (stage / "tree" / rel).exists():
                        tar.add(stage / "tree" / rel, arcname=rel)
        uploaded = tmp.stat().st_size
        now = time.time()
        meta_path = blob.with_suffix("").with_suffix(".json")
        tmp.replace(blob)
        meta_path.write_text(json.dumps({"key": key, "bytes": size, "files": files, "created": now}))
        if progress:
            progress(Progress(size, size, files, files))
        info = EntryInfo(key=key, bytes=size, files=files, created=now, last_used=now)
        self._publish(stage, info)
        return SaveResult(key, True, size, files, uploaded, time.monotonic() - started)

    # -- bookkeeping ---------------------------------------------------------------------------
    def evict(self, key: str) -> bool:
        with self._lock:
            info = self._index.pop(key, None)
            if info is None:
                return False
            self._drop_dir(self._entry_dir(key))
            self._evicted += info.bytes
            self._changed([], [key])
            return True

    def _publish(self, stage: Path, info: EntryInfo) -> None:
        (stage / "meta.json").write_text(json.dumps(info.__dict__))
        (stage / _COMPLETE).write_text("")
        with self._lock:
            target = self._entry_dir(info.key)
            if target.exists():
                self._drop_dir(target)
            stage.rename(target)
            self._index[info.key] = info
            removed = self._make_room(keep=info.key)
            self._changed([info], removed)

    def _make_room(self, keep: str) -> list[str]:
        removed = []
        used = sum(e.bytes for e in self._index.values())
        for victim in sorted(self._index.values(), key=lambda e: e.last_used):
            if used <= self._budget:
                break
            if victim.key == keep:
                continue
            del self._index[victim.key]
            self._drop_dir(self._entry_dir(victim.key))
            used -= victim.bytes
            self._evicted += victim.bytes
            removed.append(victim.key)
        return removed

    def _touch(self, key: str) -> None:
        with self._lock:
            info = self._index.get(key)
            if info is None:
                return
            info = EntryInfo(info.key, info.bytes, info.files, info.created, time.time())
            self._index[key] = info
            (self._entry_dir(key) / "meta.json").write_text(json.dumps(info.__dict__))
            self._changed([info], [])

    def _changed(self, upserted: list[EntryInfo], removed: list[str]) -> None:
        self._generation += 1
        for listener in self._listeners:
            listener(self._generation, upserted, removed)

    def _drop_dir(self, path: Path) -> None:
        doomed = self._staging / f"drop-{path.name}-{time.monotonic_ns()}"
        path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _entry_dir(self, key: str) -> Path:
        return self._entries_dir / hashlib.sha256(key.encode()).hexdigest()[:32]

    def _blob(self, key: str) -> Path:
        return self._blobs / (_quote(key) + ".tar.zst")


def _quote(key: str) -> str:
    return urllib.parse.quote(key, safe="")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink() or src.is_file():
        shutil.copy2(src, dst, follow_symlinks=False)
    else:
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def _check_tree(top: Path, workspace: Path) -> None:
    """Refuse devices, FIFOs, sockets and symlinks that leave the workspace."""
    root = os.path.realpath(workspace)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            import stat as stat_mod

            if stat_mod.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if os.path.commonpath([root, target]) != root:
                    raise UnsafeTree(f"{os.path.relpath(path, workspace)}: symlink leaves the workspace")
            elif not (stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISDIR(st.st_mode)):
                raise UnsafeTree(f"{os.path.relpath(path, workspace)}: not a file, directory or symlink")
