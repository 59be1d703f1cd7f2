"""The node's local store: entries and their compressed content on the SSD, under a byte budget.

Pure core: no blob-store, RPC or database imports (an import-linter contract checks it). The bookkeeping
(:class:`StoreIndex`: what is held, what is shared, what to evict) is plain data with the clock injected;
:class:`LocalStore` keeps it on disk crash-safely.

Layout under the store directory::

    VERSION                 "stoker-cache-store 1"
    lock                    flock: one process owns the store
    generation              the inventory generation (survives restarts)
    staging/<id>/           everything being written; removed whole by open()
    frames/<id>             frames fetched or packed together, immutable once here
    manifests/<sha256>      the manifests of local entries (compressed, as in the blob store)
    entries/<sha256(key)>   one JSON record per complete entry: the completion marker, written last
    trees/<name>/           a *ready tree*: an entry's files unpacked and verified, waiting to be moved
                            (not copied, not linked) into the next workspace that restores the entry
    trees/<name>.json       its record, written last, deleted first
    workspaces/<sha256(ws)> per workspace: what the last restore/save wrote there (stat cache)

An entry exists exactly when its record exists, and a record is written (atomically, by rename) only after
its manifest and every frame file it names are in place. Eviction deletes the record first. So a kill -9 at
any point leaves either a complete entry or files no record names, which :meth:`LocalStore.open` deletes.
Content shared by entries (the same blob frame) is stored and counted once.

Ready trees are a derived cache on top: a tree is published by renaming its staging directory into
``trees/`` and then writing its record; it is claimed by deleting the record first and then renaming the
directory into a workspace, so a workspace never shares an inode with anything the store still holds and a
build (whatever its user) cannot change the store through its workspace. Their bytes count against the
budget, and they are evicted before any entry. ``open()`` deletes trees without a valid record.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from stoker.agent.cache.api import CacheError, EntryInfo, EntryWriter, InventoryListener
from stoker.common import scopes

STORE_FORMAT = "stoker-cache-store 1"
LOCK_WAIT_S = 2.0
"""How long :meth:`LocalStore.open` waits for the store's lock before calling it in use."""

FrameId = tuple[str, int]
"""A blob frame: (pack name, offset in the pack)."""


@dataclass(frozen=True)
class LocalFrame:
    file: str
    """Name of a file under ``frames/``."""
    offset: int
    length: int


@dataclass(frozen=True)
class EntryRecord:
    key: str
    manifest: str
    """Name (SHA-256) of the manifest under ``manifests/``."""
    created: float
    last_used: float
    bytes: int
    files: int
    frames: dict[FrameId, LocalFrame] = field(default_factory=dict)
    sketch: tuple[int, ...] = ()
    """Bottom-k MinHash of the entry's content digests (see :attr:`EntryInfo.sketch`)."""
    writer: EntryWriter | None = None
    """Who saved the entry (from its manifest; None for manifests before version 3)."""
    files_checked: bool = True
    """Every file of the entry was checked against its own digest on this node (or packed from bytes that
    were): only then may a save reuse the entry's content by digest, or a partial restore match a ready
    tree of it by digest. A restore that proved its files through the frames' digests alone leaves it
    False until the background ready tree checks them (records written before frame digests: True, every
    restore checked every file then)."""

    def info(self) -> EntryInfo:
        return EntryInfo(
            key=self.key,
            bytes=self.bytes,
            files=self.files,
            created=self.created,
            last_used=self.last_used,
            sketch=self.sketch,
            writer=self.writer,
        )

    def to_json(self) -> builtins.bytes:  # builtins: a field of this class is named bytes
        return json.dumps(
            {
                "key": self.key,
                "manifest": self.manifest,
                "created": self.created,
                "last_used": self.last_used,
                "bytes": self.bytes,
                "files": self.files,
                "frames": [[p, o, lf.file, lf.offset, lf.length] for (p, o), lf in self.frames.items()],
                "sketch": list(self.sketch),
                "writer": self.writer.to_dict() if self.writer else {},
                "files_checked": self.files_checked,
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def from_json(data: builtins.bytes) -> EntryRecord:
        d = json.loads(data)
        return EntryRecord(
            key=str(d["key"]),
            manifest=str(d["manifest"]),
            created=float(d["created"]),
            last_used=float(d["last_used"]),
            bytes=int(d["bytes"]),
            files=int(d["files"]),
            frames={(str(p), int(o)): LocalFrame(str(f), int(lo), int(n)) for p, o, f, lo, n in d["frames"]},
            sketch=tuple(int(x) for x in d.get("sketch", ())),
            writer=EntryWriter.from_dict(d.get("writer")),
            files_checked=d.get("files_checked", True) is True,
        )


@dataclass(frozen=True)
class TreeRecord:
    """A ready tree: the files of ``roots`` of entry ``key`` (manifest ``manifest``) under
    ``trees/<name>/``."""

    name: str
    key: str
    manifest: str
    roots: tuple[str, ...]
    bytes: int
    """Disk bytes the tree takes (file sizes rounded up to 4 KiB blocks, plus a block per directory)."""
    made: float

    def to_json(self) -> builtins.bytes:  # builtins: a field of this class is named bytes
        return json.dumps(
            {
                "name": self.name,
                "key": self.key,
                "manifest": self.manifest,
                "roots": list(self.roots),
                "bytes": self.bytes,
                "made": self.made,
            }
        ).encode()

    @staticmethod
    def from_json(data: builtins.bytes) -> TreeRecord:
        d = json.loads(data)
        return TreeRecord(
            str(d["name"]),
            str(d["key"]),
            str(d["manifest"]),
            tuple(str(r) for r in d["roots"]),
            int(d["bytes"]),
            float(d["made"]),
        )


class StoreIndex:
    """What the store holds: entries, the frame files and manifests they share, and their sizes."""

    def __init__(self) -> None:
        self.entries: dict[str, EntryRecord] = {}
        self.file_sizes: dict[str, int] = {}
        self.manifest_sizes: dict[str, int] = {}
        self._file_refs: dict[str, int] = {}
        self._manifest_refs: dict[str, int] = {}
        self._frames: dict[FrameId, LocalFrame] = {}
        self._frame_refs: dict[FrameId, int] = {}
        self.trees: dict[str, TreeRecord] = {}
        """Ready trees by name."""

    def used_bytes(self) -> int:
        return (
            sum(self.file_sizes.values())
            + sum(self.manifest_sizes.values())
            + sum(t.bytes for t in self.trees.values())
        )

    def tree_for(self, key: str, manifest: str) -> TreeRecord | None:
        """The newest ready tree of entry ``key`` as of manifest ``manifest``."""
        found = [t for t in self.trees.values() if t.key == key and t.manifest == manifest]
        return max(found, key=lambda t: t.made) if found else None

    def trees_to_drop(self, need: int, budget: int, keep_trees: int) -> list[str]:
        """Oldest ready trees to drop so that at most ``keep_trees`` remain and, if possible, ``need`` more
        bytes fit (trees go before any entry)."""
        drop: list[str] = []
        used = self.used_bytes()
        by_age = sorted(self.trees.values(), key=lambda t: t.made)
        for i, t in enumerate(by_age):
            if len(by_age) - i > keep_trees or used + need > budget:
                drop.append(t.name)
                used -= t.bytes
        return drop

    def locate(self, frame: FrameId) -> LocalFrame | None:
        return self._frames.get(frame)

    def add(self, record: EntryRecord, file_sizes: dict[str, int], manifest_size: int) -> list[str]:
        """Add (or replace) an entry; returns the files and manifests no longer referenced (to delete)."""
        garbage = self.remove(record.key) if record.key in self.entries else []
        self.entries[record.key] = record
        for name in {lf.file for lf in record.frames.values()}:
            self._file_refs[name] = self._file_refs.get(name, 0) + 1
            self.file_sizes.setdefault(name, file_sizes[name])
        self._manifest_refs[record.manifest] = self._manifest_refs.get(record.manifest, 0) + 1
        self.manifest_sizes.setdefault(record.manifest, manifest_size)
        for fid, lf in record.frames.items():
            self._frame_refs[fid] = self._frame_refs.get(fid, 0) + 1
            self._frames.setdefault(fid, lf)
        keep_files = set(self._file_refs)
        return [
            g
            for g in garbage
            if g not in keep_files and g.removeprefix("manifest:") not in self._manifest_refs
        ]

    def remove(self, key: str) -> list[str]:
        """Drop an entry; returns frame files and ``manifest:<name>`` no longer referenced."""
        record = self.entries.pop(key)
        garbage: list[str] = []
        for name in {lf.file for lf in record.frames.values()}:
            self._file_refs[name] -= 1
            if not self._file_refs[name]:
                del self._file_refs[name]
                del self.file_sizes[name]
                garbage.append(name)
        self._manifest_refs[record.manifest] -= 1
        if not self._manifest_refs[record.manifest]:
            del self._manifest_refs[record.manifest]
            del self.manifest_sizes[record.manifest]
            garbage.append("manifest:" + record.manifest)
        for fid in record.frames:
            self._frame_refs[fid] -= 1
            if not self._frame_refs[fid]:
                del self._frame_refs[fid]
                del self._frames[fid]
        # A frame still referenced may have pointed into a file that just lost its last entry: repoint.
        for fid, lf in list(self._frames.items()):
            if lf.file not in self.file_sizes:
                self._frames[fid] = next(r.frames[fid] for r in self.entries.values() if fid in r.frames)
        return garbage

    def freed_by(self, keys: Iterable[str]) -> int:
        """Bytes that removing ``keys`` together would free."""
        keys = set(keys)
        files: set[str] = set()
        manifests: set[str] = set()
        for k in keys:
            r = self.entries[k]
            files.update(lf.file for lf in r.frames.values())
            manifests.add(r.manifest)
        for k, r in self.entries.items():
            if k not in keys:
                files.difference_update(lf.file for lf in r.frames.values())
                manifests.discard(r.manifest)
        return sum(self.file_sizes[f] for f in files) + sum(self.manifest_sizes[m] for m in manifests)

    def victims(
        self, need: int, budget: int, pinned: set[str], *, tenant: str | None = None, tenant_budget: int = 0
    ) -> list[str] | None:
        """Least recently used entries to evict so that ``need`` more bytes fit; None if impossible.
        (Ready trees count as used; drop them first with :meth:`trees_to_drop`.)

        With ``tenant_budget`` and the ``tenant`` that needs the room (``scopes.tenant_of`` of its key):
        that tenant's own entries go first (least recently used first), then other entries, but never one
        that would leave its tenant holding less than ``tenant_budget`` (:meth:`tenant_bytes`)."""
        if self.used_bytes() + need <= budget:
            return []
        lru = sorted(self.entries.values(), key=lambda r: (r.last_used, r.created, r.key))
        order = [r for r in lru if r.key not in pinned]
        held: dict[str, int] = {}
        if tenant_budget > 0 and tenant is not None:
            own = [r for r in order if scopes.tenant_of(r.key) == tenant]
            order = own + [r for r in order if scopes.tenant_of(r.key) != tenant]
            held = self.tenant_bytes()
        chosen: list[str] = []
        for record in order:
            owner = scopes.tenant_of(record.key)
            if held and owner and owner != tenant:
                size = self.entry_bytes(record)
                if held.get(owner, 0) - size < tenant_budget:
                    continue  # protected: its tenant would drop below its budget
                held[owner] -= size
            chosen.append(record.key)
            if self.used_bytes() - self.freed_by(chosen) + need <= budget:
                return chosen
        return None

    def entry_bytes(self, record: EntryRecord) -> int:
        """The bytes an entry references on disk: its frames and its manifest (shared ones counted in
        full for each entry)."""
        return sum(lf.length for lf in record.frames.values()) + self.manifest_sizes.get(record.manifest, 0)

    def tenant_bytes(self) -> dict[str, int]:
        """Per tenant with entries here, the bytes its entries reference (:meth:`entry_bytes`)."""
        held: dict[str, int] = {}
        for record in self.entries.values():
            owner = scopes.tenant_of(record.key)
            if owner:
                held[owner] = held.get(owner, 0) + self.entry_bytes(record)
        return held

    def newest_under(self, prefix: str) -> EntryRecord | None:
        matches = self.under(prefix)
        return matches[0] if matches else None

    def under(self, prefix: str) -> list[EntryRecord]:
        """The entries whose key starts with ``prefix``, newest first."""
        matches = [r for k, r in self.entries.items() if k.startswith(prefix)]
        return sorted(matches, key=lambda r: (r.created, r.key), reverse=True)


def _key_file(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class LocalStore:
    """The store on disk (see the module docstring). Thread-safe; one process per directory."""

    def __init__(
        self,
        root: Path,
        budget_bytes: int,
        *,
        clock: Callable[[], float] = time.time,
        tenant_budget_bytes: int = 0,
    ) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self.tenant_budget_bytes = tenant_budget_bytes
        """See ``CacheSettings.tenant_budget_bytes``."""
        self.clock = clock
        self.index = StoreIndex()
        self.generation = 0
        self.evicted_bytes_total = 0
        self._lock = threading.RLock()
        self._listeners: list[InventoryListener] = []
        self._pins: dict[str, int] = {}
        self._deferred: set[str] = set()
        self._lock_fd: int | None = None
        self._trash_threads: set[threading.Thread] = set()

    # -- lifecycle -------------------------------------------------------------------------------------
    def open(self) -> None:
        for d in ("staging", "frames", "manifests", "entries", "workspaces", "trees"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        version = self.root / "VERSION"
        if version.exists() and version.read_text().strip() != STORE_FORMAT:
            raise CacheError(
                f"cache store {self.root} has format {version.read_text().strip()!r}; "
                f"this agent reads {STORE_FORMAT!r}"
            )
        version.write_text(STORE_FORMAT + "\n")
        if self._lock_fd is None:
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            # A previous owner killed with -9 may leave restore helpers (forked, so holding the lock's
            # open file) for the moment it takes their PR_SET_PDEATHSIG to land: wait briefly for them.
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError as exc:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise CacheError(
                            f"cache store {self.root} is in use by another process (the node's agent? a job "
                            "placed on this node restores and saves through it: stoker lease restore/save)"
                        ) from exc
                    time.sleep(0.02)
            self._lock_fd = fd
        with self._lock:
            for leftover in (self.root / "staging").iterdir():
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
            self.index = StoreIndex()
            frames_dir, manifests_dir = self.root / "frames", self.root / "manifests"
            file_sizes = {e.name: e.stat().st_size for e in os.scandir(frames_dir)}
            manifest_sizes = {e.name: e.stat().st_size for e in os.scandir(manifests_dir)}
            for e in os.scandir(self.root / "entries"):
                path = Path(e.path)
                try:
                    record = EntryRecord.from_json(path.read_bytes())
                    ok = (
                        _key_file(record.key) == e.name
                        and record.manifest in manifest_sizes
                        and all(
                            lf.file in file_sizes and lf.offset + lf.length <= file_sizes[lf.file]
                            for lf in record.frames.values()
                        )
                    )
                except (OSError, ValueError, KeyError, TypeError):
                    ok = False
                if not ok:
                    path.unlink(missing_ok=True)
                    continue
                self.index.add(record, file_sizes, manifest_sizes[record.manifest])
            self._load_trees()
            for name in set(file_sizes) - set(self.index.file_sizes):
                (frames_dir / name).unlink(missing_ok=True)
            for name in set(manifest_sizes) - set(self.index.manifest_sizes):
                (manifests_dir / name).unlink(missing_ok=True)
            try:
                self.generation = int((self.root / "generation").read_text())
            except (OSError, ValueError):
                self.generation = 0
            self._changed([r.info() for r in self.index.entries.values()], [])

    def _load_trees(self) -> None:
        trees_dir = self.root / "trees"
        for e in os.scandir(trees_dir):
            if not e.name.endswith(".json"):
                continue
            try:
                tree = TreeRecord.from_json(Path(e.path).read_bytes())
                entry = self.index.entries.get(tree.key)
                ok = (
                    e.name == tree.name + ".json"
                    and entry is not None
                    and entry.manifest == tree.manifest
                    and (trees_dir / tree.name).is_dir()
                )
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if ok:
                self.index.trees[tree.name] = tree
            else:
                os.unlink(e.path)
        for e in os.scandir(trees_dir):
            if not e.name.endswith(".json") and e.name not in self.index.trees:
                shutil.rmtree(e.path, ignore_errors=True) if e.is_dir(follow_symlinks=False) else os.unlink(
                    e.path
                )

    def close(self) -> None:
        for t in list(self._trash_threads):
            t.join()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- queries ---------------------------------------------------------------------------------------
    def inventory(self) -> tuple[int, list[EntryInfo]]:
        with self._lock:
            return self.generation, sorted(
                (r.info() for r in self.index.entries.values()), key=lambda i: i.key
            )

    def subscribe(self, listener: InventoryListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def lookup(self, key: str) -> EntryRecord | None:
        with self._lock:
            return self.index.entries.get(key)

    def newest_under(self, prefix: str) -> EntryRecord | None:
        with self._lock:
            return self.index.newest_under(prefix)

    def under(self, prefix: str) -> list[EntryRecord]:
        """The entries whose key starts with ``prefix``, newest first."""
        with self._lock:
            return self.index.under(prefix)

    def tree_for(self, key: str, manifest: str) -> TreeRecord | None:
        with self._lock:
            return self.index.tree_for(key, manifest)

    def trees(self) -> list[TreeRecord]:
        with self._lock:
            return list(self.index.trees.values())

    def read_manifest(self, record: EntryRecord) -> bytes:
        return (self.root / "manifests" / record.manifest).read_bytes()

    def locate(self, frame: FrameId) -> tuple[Path, LocalFrame] | None:
        with self._lock:
            lf = self.index.locate(frame)
            return (self.root / "frames" / lf.file, lf) if lf else None

    def disk_usage(self) -> tuple[int, int]:
        with self._lock:
            used = self.index.used_bytes()
            return used, max(0, self.budget_bytes - used)

    def workspace_file(self, workspace: Path) -> Path:
        return self.root / "workspaces" / hashlib.sha256(str(workspace.resolve()).encode()).hexdigest()

    # -- changes ---------------------------------------------------------------------------------------
    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh staging directory, removed on exit (whatever was not moved out of it)."""
        path = self.root / "staging" / uuid.uuid4().hex
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def pinned(self, files: Sequence[str]) -> Iterator[None]:
        """Keep the frame ``files`` on disk while a restore reads them: evicting their entries still
        frees their bytes in the books, but the files are deleted only once unpinned."""
        with self._lock:
            for f in files:
                self._pins[f] = self._pins.get(f, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for f in files:
                    self._pins[f] -= 1
                    if not self._pins[f]:
                        del self._pins[f]
                        if f in self._deferred and f not in self.index.file_sizes:
                            (self.root / "frames" / f).unlink(missing_ok=True)
                        self._deferred.discard(f)

    def make_room(self, need: int, *, what: str, for_key: str | None = None) -> None:
        """Evict least recently used, unpinned entries until ``need`` more bytes fit the budget; for the
        entry ``for_key``, with tenant budgets, as :meth:`StoreIndex.victims` says."""
        with self._lock:
            for name in self.index.trees_to_drop(need, self.budget_bytes, keep_trees=len(self.index.trees)):
                self._drop_tree(name)
            tenant = scopes.tenant_of(for_key) if for_key is not None else None
            victims = self.index.victims(
                need, self.budget_bytes, set(), tenant=tenant, tenant_budget=self.tenant_budget_bytes
            )
            if victims is None:
                protected = " (other tenants' entries are within their tenant budgets)" if tenant else ""
                raise CacheError(
                    f"{what}: needs {need} bytes but the cache budget is {self.budget_bytes} bytes{protected}"
                )
            for key in victims:
                self._evict(key)

    def commit(
        self,
        *,
        key: str,
        created: float,
        manifest_name: str,
        manifest_bytes: bytes,
        frames: dict[FrameId, LocalFrame],
        staged_files: dict[str, Path],
        total_bytes: int,
        files: int,
        sketch: tuple[int, ...] = (),
        writer: EntryWriter | None = None,
        files_checked: bool = True,
    ) -> EntryInfo:
        """Publish an entry: move staged frame files and the manifest in, then write its record last.

        ``frames`` maps every frame of the manifest to a local frame, either in ``staged_files`` (name →
        staged path) or in a file the store already holds.
        """
        with self._lock:
            for name, path in staged_files.items():
                os.replace(path, self.root / "frames" / name)
            manifest_path = self.root / "manifests" / manifest_name
            if not manifest_path.exists():
                tmp = self.root / "staging" / f"m-{uuid.uuid4().hex}"
                tmp.write_bytes(manifest_bytes)
                os.replace(tmp, manifest_path)
            file_sizes = dict(self.index.file_sizes)
            for name in {lf.file for lf in frames.values()}:
                if name not in file_sizes:
                    file_sizes[name] = (self.root / "frames" / name).stat().st_size
            record = EntryRecord(
                key=key,
                manifest=manifest_name,
                created=created,
                last_used=self.clock(),
                bytes=total_bytes,
                files=files,
                frames=frames,
                sketch=sketch,
                writer=writer,
                files_checked=files_checked,
            )
            for tree in [
                t for t in self.index.trees.values() if t.key == key and t.manifest != manifest_name
            ]:
                self._drop_tree(tree.name)
            self._write_record(record)
            garbage = self.index.add(record, file_sizes, len(manifest_bytes))
            self._delete(garbage)
            self._changed([record.info()], [])
            return record.info()

    def touch(self, key: str) -> None:
        """Mark an entry used now (LRU)."""
        with self._lock:
            record = self.index.entries.get(key)
            if record is None:
                return
            record = replace(record, last_used=max(self.clock(), record.last_used))
            self._write_record(record)
            self.index.entries[key] = record
            self._changed([record.info()], [])

    def evict(self, key: str) -> bool:
        with self._lock:
            if key not in self.index.entries:
                return False
            self._evict(key)
            return True

    def _evict(self, key: str) -> None:
        for tree in [t for t in self.index.trees.values() if t.key == key]:
            self._drop_tree(tree.name)
        freed = self.index.freed_by([key])
        (self.root / "entries" / _key_file(key)).unlink(missing_ok=True)
        garbage = self.index.remove(key)
        self._delete(garbage)
        self.evicted_bytes_total += freed
        self._changed([], [key])

    def set_sketch(self, key: str, sketch: tuple[int, ...]) -> None:
        """Record an entry's content sketch (for records written before sketches existed)."""
        with self._lock:
            record = self.index.entries.get(key)
            if record is None or record.sketch == sketch:
                return
            record = replace(record, sketch=sketch)
            self._write_record(record)
            self.index.entries[key] = record
            self._changed([record.info()], [])

    def set_files_checked(self, key: str, manifest: str) -> None:
        """Record that every file of entry ``key`` (still at ``manifest``) was checked against its digest."""
        with self._lock:
            record = self.index.entries.get(key)
            if record is None or record.manifest != manifest or record.files_checked:
                return
            record = replace(record, files_checked=True)
            self._write_record(record)
            self.index.entries[key] = record

    def add_tree(
        self, staged: Path, *, key: str, manifest: str, roots: Sequence[str], nbytes: int, keep_trees: int
    ) -> bool:
        """Publish the ready tree staged at ``staged`` (a directory under ``staging/``) for entry ``key``
        as of ``manifest``. Older trees beyond ``keep_trees`` go first; a tree never evicts an entry: if it
        does not fit the budget it is dropped (False)."""
        with self._lock:
            entry = self.index.entries.get(key)
            fits = False
            if entry is not None and entry.manifest == manifest and keep_trees > 0:
                for name in self.index.trees_to_drop(nbytes, self.budget_bytes, keep_trees - 1):
                    self._drop_tree(name)
                fits = self.index.used_bytes() + nbytes <= self.budget_bytes
            if not fits:
                self._trash(staged)
                return False
            name = f"{_key_file(key)[:24]}-{uuid.uuid4().hex[:12]}"
            os.rename(staged, self.root / "trees" / name)
            tree = TreeRecord(name, key, manifest, tuple(roots), nbytes, self.clock())
            tmp = self.root / "staging" / f"t-{uuid.uuid4().hex}"
            tmp.write_bytes(tree.to_json())
            os.replace(tmp, self.root / "trees" / f"{name}.json")
            self.index.trees[name] = tree
            return True

    def claim_tree(self, key: str, manifest: str, dest: Path) -> TreeRecord | None:
        """Take the ready tree of ``key`` as of ``manifest`` out of the store by renaming it to ``dest``
        (which must not exist, on the store's filesystem). Its record is deleted first: from then on the
        store neither counts nor serves it. None when there is no such tree or it cannot be moved there."""
        with self._lock:
            tree = self.index.tree_for(key, manifest)
            if tree is None:
                return None
            path = self.root / "trees" / tree.name
            try:
                if os.stat(dest.parent).st_dev != os.stat(path).st_dev:
                    return None  # another filesystem: a move would be a copy
            except OSError:
                return None
            (self.root / "trees" / f"{tree.name}.json").unlink(missing_ok=True)
            del self.index.trees[tree.name]
            try:
                os.rename(path, dest)
            except OSError:
                self._trash(path)
                return None
            return tree

    def _drop_tree(self, name: str) -> None:
        tree = self.index.trees.pop(name, None)
        if tree is None:
            return
        (self.root / "trees" / f"{name}.json").unlink(missing_ok=True)
        self._trash(self.root / "trees" / name)

    def _trash(self, path: Path) -> None:
        """Delete a directory tree in the background: moved under ``staging/`` at once (so ``open()``
        finishes the job after a crash), unlinked file by file in a thread."""
        try:
            target = self.root / "staging" / f"trash-{uuid.uuid4().hex}"
            os.rename(path, target)
        except OSError:
            return
        thread = threading.Thread(
            target=self._empty_trash, args=(target,), name="stoker-cache-trash", daemon=True
        )
        self._trash_threads.add(thread)
        thread.start()

    def _empty_trash(self, target: Path) -> None:
        shutil.rmtree(target, ignore_errors=True)
        self._trash_threads.discard(threading.current_thread())

    def _write_record(self, record: EntryRecord) -> None:
        tmp = self.root / "staging" / f"r-{uuid.uuid4().hex}"
        tmp.write_bytes(record.to_json())
        os.replace(tmp, self.root / "entries" / _key_file(record.key))

    def _delete(self, garbage: Iterable[str]) -> None:
        for g in garbage:
            if g.startswith("manifest:"):
                (self.root / "manifests" / g.removeprefix("manifest:")).unlink(missing_ok=True)
            elif g in self._pins:
                self._deferred.add(g)
            else:
                (self.root / "frames" / g).unlink(missing_ok=True)

    def _changed(self, upserted: list[EntryInfo], removed: list[str]) -> None:
        self.generation += 1
        tmp = self.root / "staging" / f"g-{uuid.uuid4().hex}"
        tmp.write_text(str(self.generation))
        os.replace(tmp, self.root / "generation")
        for listener in list(self._listeners):
            listener(self.generation, upserted, removed)
