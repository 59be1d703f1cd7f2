"""Saving a workspace's trees as an entry: walk, hash what changed, upload only content the blob store lacks.

Object layout in the blob store::

    packs/<sha256>        independent zstd frames; immutable
    manifests/<sha256>    compressed manifest, binary version 2 (see :mod:`.manifest`); immutable
    keys/<encoded key>    {"manifest": <sha256>, "content": <sha256>, "created": <unix s>}; written last

A save uploads packs, then the manifest, then the key pointer, so a pointer always names a complete
manifest whose packs exist; when two agents save one key at once, the last pointer written wins and both
candidates are complete. A tree unchanged since the workspace's last restore or save (its stat cache, see
:mod:`.stat_cache`) is only checked: nothing is packed, built or uploaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from stoker.agent.cache import manifest as mf
from stoker.agent.cache import packing, tree
from stoker.agent.cache.api import CacheError, EntryWriter, Progress, ProgressFn, SaveResult
from stoker.agent.cache.blobs import BlobStore, encode_key
from stoker.agent.cache.known_content import KnownChunks, KnownContent
from stoker.agent.cache.ready_trees import ReadyTrees
from stoker.agent.cache.resolve import EntryResolver, KeyPointer, LocalManifests
from stoker.agent.cache.stat_cache import StatCaches
from stoker.agent.cache.store import FrameId, LocalFrame, LocalStore
from stoker.agent.cache.writers import CompiledIO

log = logging.getLogger(__name__)


@dataclass
class _NewContent:
    """What a save packed: the new manifest's frames so far and where each new content lives in them."""

    frames: list[mf.Frame] = field(default_factory=list)
    frame_index: dict[FrameId, int] = field(default_factory=dict)
    new_chunks: dict[str, list[tuple[int, int, int]]] = field(default_factory=lambda: defaultdict(list))
    """Digest → (frame index, offset in its raw bytes, length) of each piece."""
    staged: dict[str, Path] = field(default_factory=dict)
    """The packs written, by their name in the node's store."""
    uploaded: int = 0
    """Bytes of the packs the blob store did not hold."""


@dataclass(frozen=True)
class _Walked:
    """A workspace's trees as walked and hashed."""

    roots: tuple[str, ...]
    paths: list[tree.WalkedPath]
    digests: dict[str, str]


class Saver:
    """Saves workspaces into one node's store and the blob store."""

    def __init__(
        self,
        store: LocalStore,
        blobs: BlobStore,
        resolver: EntryResolver,
        manifests: LocalManifests,
        known: KnownContent,
        stat_caches: StatCaches,
        ready: ReadyTrees,
        workers: int,
        compiled: CompiledIO | None,
    ) -> None:
        """``compiled``: the compiled module's ``open_beneath`` opens the workspace's files (else Python
        walks each path one directory at a time); see :class:`.tree.OpenWorkspace`."""
        self._compiled = compiled
        self._store = store
        self._blobs = blobs
        self._resolver = resolver
        self._manifests = manifests
        self._known = known
        self._stat_caches = stat_caches
        self._ready = ready
        self._workers = workers

    def save(
        self,
        key: str,
        workspace: Path,
        roots: tuple[str, ...],
        progress: ProgressFn | None,
        writer: EntryWriter | None = None,
    ) -> SaveResult:
        start = time.monotonic()
        started_ns = time.time_ns()
        with tree.OpenWorkspace(workspace, self._compiled) as opened:
            paths = tree.walk(opened, roots)
            if not paths:
                raise CacheError(f"entry {key}: none of {list(roots)} exists in {workspace}")
            stat_cache, recorded_ns, last_manifest = self._stat_caches.load(workspace)
            with ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="stoker-save") as pool:
                digests, _ = tree.digests(opened, paths, stat_cache, recorded_ns, pool)
                walked = _Walked(roots, paths, digests)
                previous = self._resolver.remote_pointer(key)
                # Unchanged since the last restore or save of this workspace, and the key still names that
                # manifest: nothing to pack, build or upload (a stat walk and one GET of the pointer).
                if (
                    last_manifest is not None
                    and previous is not None
                    and str(previous.get("manifest")) == last_manifest
                ):
                    same = self._unchanged(walked, last_manifest)
                    if same is not None:
                        self._keep_unchanged(key, same, last_manifest)
                        self._stat_caches.record_manifest(
                            workspace, roots, key, last_manifest, recorded_ns=started_ns
                        )
                        return _result(key, False, paths, 0, start)
                known = self._known.chunks(previous)
                with self._store.staging() as staging:
                    content = self._pack_and_upload(opened, walked, known, staging, pool, progress, start)
                    manifest = replace(_build_manifest(key, walked, known, content), writer=writer)
                    saved, manifest_name = self._publish(key, manifest, previous, content)
        self._record_stat_cache(key, workspace, walked, manifest_name, started_ns)
        self._ready.schedule_refill(key)
        return _result(key, saved, paths, content.uploaded if saved else 0, start)

    def _keep_unchanged(self, key: str, manifest: mf.Manifest, name: str) -> None:
        record = self._store.lookup(key)
        if record is not None and record.manifest == name:
            self._store.touch(key)
        else:
            # Its digests came from the workspace's stat cache, which names that manifest: not checked here.
            self._commit_local(key, manifest, None, {}, name, files_checked=False)

    def _pack_and_upload(
        self,
        workspace: tree.OpenWorkspace,
        walked: _Walked,
        known: dict[str, KnownChunks],
        staging: Path,
        pool: Executor,
        progress: ProgressFn | None,
        start: float,
    ) -> _NewContent:
        """Pack into ``staging`` every content neither the blob store nor an earlier file of this save
        holds, and upload the packs (two at a time, while the next is packed) that the blob store lacks."""
        items: dict[str, packing.ContentItem] = {}
        for w in walked.paths:
            if w.type != mf.FILE or not w.size:
                continue
            digest = walked.digests[w.path]
            if digest not in known and digest not in items:
                items[digest] = packing.ContentItem(digest, w.size, w.path, partial(workspace.open_file, w))
        item_list = list(items.values())
        plans = packing.plan_packs(item_list)
        content = _NewContent()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stoker-upload") as uploader:
            uploads: list[Future[int]] = []
            done_bytes = 0
            total_new = sum(i.size for i in item_list)
            for n, plan in enumerate(plans):
                written = packing.write_pack(plan, item_list, staging / f"pack-{n}", pool)
                content.staged[f"p-{written.name}"] = written.path
                uploads.append(uploader.submit(self._upload_pack, written))
                content.uploaded += written.size
                _add_pack(content, plan, written, item_list)
                done_bytes += plan.raw_size
                if progress is not None:
                    progress(
                        Progress(
                            done_bytes, total_new, 0, 0, done_bytes / max(time.monotonic() - start, 1e-9)
                        )
                    )
            for u in uploads:
                content.uploaded -= u.result()
        return content

    def _upload_pack(self, written: packing.WrittenPack) -> int:
        """Upload a pack unless the blob store has it; returns the bytes *not* uploaded."""
        name = f"packs/{written.name}"
        if self._blobs.exists(name):
            return written.size
        self._blobs.put_file(name, written.path)
        self._known.pack_present(written.name)
        return 0

    def _publish(
        self, key: str, manifest: mf.Manifest, previous: KeyPointer | None, content: _NewContent
    ) -> tuple[bool, str]:
        """Upload the manifest, then the key's pointer, unless the key names the same content already;
        keep the entry in the node's store. Returns (saved, the manifest's name)."""
        content_id = _content_id(manifest)
        if previous is not None and previous.get("content") == content_id:
            record = self._store.lookup(key)
            manifest_name = str(previous["manifest"])
            if record is None or record.manifest != manifest_name:
                self._commit_local(key, manifest, None, content.staged, manifest_name)
            else:
                self._store.touch(key)
            return False, manifest_name
        data = mf.encode(manifest)
        manifest_name = hashlib.sha256(data).hexdigest()
        self._blobs.put(f"manifests/{manifest_name}", data)
        self._blobs.put(
            f"keys/{encode_key(key)}",
            json.dumps(
                {
                    "manifest": manifest_name,
                    "content": content_id,
                    "created": manifest.created,
                    # Copies of the manifest's size and writer, so that listing keys reads no manifest.
                    "bytes": manifest.total_bytes,
                    "writer": manifest.writer.to_dict() if manifest.writer else {},
                }
            ).encode(),
        )
        content.uploaded += len(data)
        self._commit_local(key, manifest, data, content.staged, manifest_name)
        return True, manifest_name

    def _commit_local(
        self,
        key: str,
        manifest: mf.Manifest,
        data: bytes | None,
        staged: dict[str, Path],
        manifest_name: str,
        *,
        files_checked: bool = True,
    ) -> None:
        """Keep the entry in the node's store too, if every frame is at hand (staged, or in the store).
        ``data`` None: the manifest ``manifest_name`` is fetched from the blob store. ``files_checked``: this
        save packed or hashed every file's bytes (see :attr:`.store.EntryRecord.files_checked`)."""
        if data is None:
            data = self._blobs.get(f"manifests/{manifest_name}")
            manifest = mf.parse(data, where=f"{key} ({manifest_name})")
        frames_map: dict[FrameId, LocalFrame] = {}
        used: dict[str, Path] = {}
        for fr in manifest.frames:
            local_name = f"p-{fr.pack}"
            if local_name in staged:
                frames_map[(fr.pack, fr.offset)] = LocalFrame(local_name, fr.offset, fr.length)
                used[local_name] = staged[local_name]
                continue
            found = self._store.locate((fr.pack, fr.offset))
            if found is None:
                log.info("entry %s saved to the blob store but not kept locally: frames missing", key)
                return
            frames_map[(fr.pack, fr.offset)] = found[1]
        need = sum(p.stat().st_size for p in used.values()) + len(data)
        self._store.make_room(need, what=f"entry {key}", for_key=key)
        self._store.commit(
            key=key,
            created=manifest.created,
            manifest_name=manifest_name,
            manifest_bytes=data,
            frames=frames_map,
            staged_files=used,
            total_bytes=manifest.total_bytes,
            files=manifest.file_count,
            sketch=mf.content_sketch(manifest),
            writer=manifest.writer,
            files_checked=files_checked,
        )
        if files_checked:
            self._known.learn(manifest_name, manifest)
        self._manifests.remember(manifest_name, manifest)

    def _record_stat_cache(
        self, key: str, workspace: Path, walked: _Walked, manifest_name: str, started_ns: int
    ) -> None:
        record = self._store.lookup(key)
        if (
            record is not None
            and record.manifest == manifest_name
            and self._unchanged(walked, manifest_name) is not None
        ):
            # The local manifest is exactly what was walked: name it instead of writing every file's record.
            self._stat_caches.record_manifest(
                workspace, walked.roots, key, manifest_name, recorded_ns=started_ns
            )
        else:
            records = {
                w.path: tree.StatRecord(w.size, w.mtime_ns, w.ino, w.ctime_ns, walked.digests[w.path])
                for w in walked.paths
                if w.type == mf.FILE
            }
            self._stat_caches.record_files(workspace, records, started_ns, key, manifest_name)

    def _unchanged(self, walked: _Walked, name: str) -> mf.Manifest | None:
        """The local manifest ``name`` if the walked tree is exactly its content (paths, types, modes,
        mtimes, sizes, digests, link targets), else None."""
        manifest = self._manifests.get(name) if name else None
        if manifest is None or manifest.roots != walked.roots or len(manifest.files) != len(walked.paths):
            return None
        if [(w.path, w.type, w.mode, w.mtime_ns, w.size, w.target) for w in walked.paths] != [
            (f.path, f.type, f.mode, f.mtime_ns, f.size, f.target) for f in manifest.files
        ]:
            return None
        if [walked.digests[w.path] for w in walked.paths if w.type == mf.FILE] != [
            f.digest for f in manifest.files if f.type == mf.FILE
        ]:
            return None
        return manifest


def _add_pack(
    content: _NewContent,
    plan: packing.PackPlan,
    written: packing.WrittenPack,
    items: Sequence[packing.ContentItem],
) -> None:
    """Add the frames of a pack just written to ``content``, and where each new content lies in them."""
    for fplan, wf in zip(plan.frames, written.frames):
        fid = (written.name, wf.offset)
        content.frame_index[fid] = len(content.frames)
        content.frames.append(mf.Frame(written.name, wf.offset, wf.length, wf.raw_size, wf.digest))
        pos = 0
        for piece in fplan.pieces:
            content.new_chunks[items[piece.item].digest].append((content.frame_index[fid], pos, piece.length))
            pos += piece.length


def _build_manifest(
    key: str, walked: _Walked, known: dict[str, KnownChunks], content: _NewContent
) -> mf.Manifest:
    """The new entry's manifest: new content where this save packed it, the rest where it was known."""
    frames, frame_index = content.frames, content.frame_index
    files = []
    for w in walked.paths:
        if w.type != mf.FILE:
            files.append(mf.FileEntry(w.path, w.type, w.mode, w.mtime_ns, target=w.target))
            continue
        digest = walked.digests[w.path]
        if w.size == 0:
            chunks: tuple[mf.Chunk, ...] = ()
        elif digest in content.new_chunks:
            chunks = tuple(mf.Chunk(*c) for c in content.new_chunks[digest])
        else:
            parts = []
            for fr, raw_offset, raw_length in known[digest]:
                fid = (fr.pack, fr.offset)
                if fid not in frame_index:
                    frame_index[fid] = len(frames)
                    frames.append(fr)
                parts.append(mf.Chunk(frame_index[fid], raw_offset, raw_length))
            chunks = tuple(parts)
        files.append(mf.FileEntry(w.path, w.type, w.mode, w.mtime_ns, w.size, digest, None, chunks))
    manifest = mf.Manifest(
        key=key, created=time.time(), frames=tuple(frames), files=tuple(files), roots=walked.roots
    )
    mf.validate(manifest, where=f"{key} (new)")
    return manifest


def _content_id(manifest: mf.Manifest) -> str:
    """Identity of an entry's content (files and where they live), ignoring key and time."""
    h = hashlib.sha256()
    for f in manifest.files:
        h.update(
            repr(
                (
                    f.path,
                    f.type,
                    f.mode,
                    f.mtime_ns,
                    f.size,
                    f.digest,
                    f.target,
                    [(manifest.frames[c.frame], c.raw_offset, c.raw_length) for c in f.chunks],
                )
            ).encode()
        )
    return h.hexdigest()


def _result(
    key: str, saved: bool, paths: Sequence[tree.WalkedPath], uploaded: int, start: float
) -> SaveResult:
    regular = [w for w in paths if w.type == mf.FILE]
    return SaveResult(
        key=key,
        saved=saved,
        bytes=sum(w.size for w in regular),
        files=len(regular),
        bytes_uploaded=uploaded,
        seconds=time.monotonic() - start,
    )
