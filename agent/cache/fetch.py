"""Fetching the frames a restore lacks: ranged GETs of the packs holding them, nearby ranges merged, several
at once, into one new file of the node's store."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import BlobStoreUnavailable, CorruptEntry, MissingObject, NotFound
from stoker.agent.cache.blobs import BlobStore, ByteRange, merge_ranges
from stoker.agent.cache.store import LocalFrame

MERGE_GAP = 256 << 10
"""Missing frames closer than this in one pack are fetched by one GET (the gap is read and dropped)."""
MAX_READ = 8 << 20
"""Longest single ranged GET."""


class Read(NamedTuple):
    """One ranged GET."""

    pack: str
    range: ByteRange
    frames: list[int]
    """The manifest's frames the range holds, in pack order."""
    out_offset: int
    """Where the first of them goes in the new file."""


class FetchPlan(NamedTuple):
    placed: dict[int, LocalFrame]
    """Frame index → where it will sit in the new file."""
    reads: list[Read]


def plan_fetch(manifest: mf.Manifest, missing: Sequence[int], path: Path, name: str) -> FetchPlan:
    """Where each of ``missing`` frames will sit in the new file ``path`` (created now, so that readers can
    open it before the bytes arrive; ``name`` is its name in the store), and the GETs."""
    by_pack: dict[str, list[int]] = defaultdict(list)
    for i in missing:
        by_pack[manifest.frames[i].pack].append(i)
    reads: list[Read] = []
    out_offset = 0
    placed: dict[int, LocalFrame] = {}
    for pack, frames in sorted(by_pack.items()):
        ranges = [ByteRange(manifest.frames[i].offset, manifest.frames[i].length) for i in frames]
        for rng, members in merge_ranges(ranges, gap=MERGE_GAP, max_length=MAX_READ):
            idx = [frames[m] for m in members]
            reads.append(Read(pack, rng, idx, out_offset))
            for i in idx:
                placed[i] = LocalFrame(name, out_offset, manifest.frames[i].length)
                out_offset += manifest.frames[i].length
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    return FetchPlan(placed, reads)


def run_fetch(
    blobs: BlobStore,
    concurrency: int,
    manifest: mf.Manifest,
    files: Sequence[mf.FileEntry],
    plan: FetchPlan,
    path: Path,
    where: str,
    on_frame: Callable[[int], None],
) -> int:
    """Run the plan's GETs, ``concurrency`` at once, into ``path``; calls ``on_frame(i)`` (from the fetching
    threads) once frame ``i`` is in place. Returns the bytes fetched."""
    first_path: dict[str, str] = {}  # pack → a file it holds, to name in errors
    for f in files:
        for c in f.chunks:
            first_path.setdefault(manifest.frames[c.frame].pack, f.path)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    total = 0
    lock = threading.Lock()

    def one(read: Read) -> None:
        nonlocal total
        pack, rng = read.pack, read.range
        try:
            data = blobs.get_range(f"packs/{pack}", rng.offset, rng.length)
        except NotFound as exc:
            raise MissingObject(
                f"{where}: pack {pack} (holding {first_path.get(pack)}) is missing from {blobs.describe()}"
            ) from exc
        except BlobStoreUnavailable as exc:
            raise BlobStoreUnavailable(
                f"{where}: fetching pack {pack} (holding {first_path.get(pack)}): {exc}"
            ) from exc
        if len(data) != rng.length:
            raise CorruptEntry(
                f"{where}: pack {pack} (holding {first_path.get(pack)}) is truncated: "
                f"{len(data)} of {rng.length} bytes at offset {rng.offset}"
            )
        view = memoryview(data)
        for i in read.frames:
            fr = manifest.frames[i]
            chunk = view[fr.offset - rng.offset : fr.offset - rng.offset + fr.length]
            os.pwrite(fd, chunk, plan.placed[i].offset)
        with lock:
            total += len(data)
        for i in read.frames:
            on_frame(i)

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stoker-fetch") as ex:
            for _ in ex.map(one, sorted(plan.reads, key=lambda r: -r.range.length)):
                pass
    finally:
        os.close(fd)
    return total
