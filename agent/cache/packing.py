"""Cutting new content into frames and packs, and writing packs.

Only content the blob store lacks is packed: a file whose digest is already stored keeps pointing at its
old frame, so inserting one package does not move any other package's bytes (the trap of fixed-size packs
in path order). New content is grouped at stable boundaries — one group per top-level package directory
(``node_modules/<pkg>``, ``node_modules/@scope/<pkg>``, otherwise the first two path components) —
consecutive tiny groups are merged up to :data:`GROUP_MIN` so frames compress well, and files larger than
:data:`FRAME_TARGET` are split into frames of that size. A frame never spans two groups; a pack holds whole
groups up to about :data:`PACK_TARGET` raw bytes (a huge group is cut at a frame boundary).
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

import zstandard

from stoker.agent.cache.api import CacheError

FRAME_TARGET = 4 << 20
GROUP_MIN = 1 << 20
PACK_TARGET = 128 << 20
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class ContentItem:
    """One distinct content to store: read from ``source``, known by ``digest``."""

    digest: str
    size: int
    path: str
    """The first workspace-relative path holding it (groups by package, names it in errors)."""
    source: Callable[[], int]
    """Opens it: a read-only descriptor (see :meth:`.tree.OpenWorkspace.open_file`)."""


@dataclass(frozen=True)
class Piece:
    item: int
    offset: int
    length: int


@dataclass(frozen=True)
class FramePlan:
    pieces: tuple[Piece, ...]

    @property
    def raw_size(self) -> int:
        return sum(p.length for p in self.pieces)


@dataclass(frozen=True)
class PackPlan:
    frames: tuple[FramePlan, ...]

    @property
    def raw_size(self) -> int:
        return sum(f.raw_size for f in self.frames)


@dataclass(frozen=True)
class WrittenFrame:
    offset: int
    length: int
    raw_size: int
    digest: bytes
    """SHA-256 of the compressed frame: a restore that checks it need not hash the files it holds."""


@dataclass(frozen=True)
class WrittenPack:
    name: str
    """The SHA-256 of the pack's bytes."""
    path: Path
    frames: tuple[WrittenFrame, ...]
    size: int


def group_key(path: str) -> str:
    """The stable group a path belongs to: its top-level package directory."""
    parts = path.split("/")
    if "node_modules" in parts:
        i = parts.index("node_modules")
        take = i + 2
        if take < len(parts) and parts[i + 1].startswith("@"):
            take += 1
        return "/".join(parts[:take])
    return "/".join(parts[:2])


def plan_packs(
    items: Sequence[ContentItem],
    *,
    frame_target: int = FRAME_TARGET,
    group_min: int = GROUP_MIN,
    pack_target: int = PACK_TARGET,
) -> list[PackPlan]:
    """Cut ``items`` into packs of frames (see the module docstring). Pure; deterministic."""
    order = sorted(range(len(items)), key=lambda i: items[i].path)
    groups: list[list[int]] = []
    last_key = None
    for i in order:
        key = group_key(items[i].path)
        if key != last_key:
            groups.append([])
            last_key = key
        groups[-1].append(i)
    merged: list[list[int]] = []
    acc = 0
    for g in groups:
        size = sum(items[i].size for i in g)
        if merged and acc < group_min:
            merged[-1].extend(g)
            acc += size
        else:
            merged.append(list(g))
            acc = size
    packs: list[PackPlan] = []
    current: list[FramePlan] = []
    current_raw = 0
    for g in merged:
        for frame in _frames_of_group(items, g, frame_target):
            if current and current_raw + frame.raw_size > pack_target and current_raw >= pack_target // 2:
                packs.append(PackPlan(tuple(current)))
                current, current_raw = [], 0
            current.append(frame)
            current_raw += frame.raw_size
        if current_raw >= pack_target:
            packs.append(PackPlan(tuple(current)))
            current, current_raw = [], 0
    if current:
        packs.append(PackPlan(tuple(current)))
    return packs


def _frames_of_group(items: Sequence[ContentItem], group: list[int], frame_target: int) -> list[FramePlan]:
    frames: list[FramePlan] = []
    small: list[Piece] = []
    small_raw = 0
    for i in group:
        size = items[i].size
        if size > frame_target:
            for off in range(0, size, frame_target):
                frames.append(FramePlan((Piece(i, off, min(frame_target, size - off)),)))
            continue
        if small and small_raw + size > frame_target:
            frames.append(FramePlan(tuple(small)))
            small, small_raw = [], 0
        small.append(Piece(i, 0, size))
        small_raw += size
    if small:
        frames.append(FramePlan(tuple(small)))
    return frames


def write_pack(
    plan: PackPlan,
    items: Sequence[ContentItem],
    out: Path,
    pool: Executor,
    *,
    window: int = 8,
    level: int = ZSTD_LEVEL,
) -> WrittenPack:
    """Write ``plan`` to ``out`` as independent zstd frames; compress on ``pool``, verify every source
    against its digest as it is read (a file that changed since it was hashed is an error)."""
    pack_hash = hashlib.sha256()
    written: list[WrittenFrame] = []
    pending: deque[tuple[Future, int]] = deque()
    offset = 0
    big_hashers: dict[int, tuple[hashlib._Hash, int]] = {}
    with open(out, "wb") as f:

        def drain(limit: int) -> None:
            nonlocal offset
            while len(pending) > limit:
                fut, raw_size = pending.popleft()
                blob = fut.result()
                f.write(blob)
                pack_hash.update(blob)
                written.append(WrittenFrame(offset, len(blob), raw_size, hashlib.sha256(blob).digest()))
                offset += len(blob)

        for frame in plan.frames:
            data = _read_frame(frame, items, big_hashers)
            pending.append((pool.submit(_compress_and_check, data, frame, items, level), len(data)))
            drain(window)
        drain(0)
    return WrittenPack(name=pack_hash.hexdigest(), path=out, frames=tuple(written), size=offset)


def _read_frame(
    frame: FramePlan, items: Sequence[ContentItem], big_hashers: dict[int, tuple[hashlib._Hash, int]]
) -> bytes:
    parts = []
    for p in frame.pieces:
        item = items[p.item]
        try:
            fd = item.source()
            try:
                data = _pread_all(fd, p.length, p.offset)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CacheError(f"cannot read {item.path}: {exc.strerror}") from exc
        if len(data) != p.length:
            raise CacheError(f"{item.path} changed while it was being saved (it is shorter now)")
        if p.length != item.size:
            hasher, done = big_hashers.get(p.item) or (hashlib.sha256(), 0)
            hasher.update(data)
            done += len(data)
            big_hashers[p.item] = (hasher, done)
            if done == item.size and hasher.hexdigest() != item.digest:
                raise CacheError(f"{item.path} changed while it was being saved")
        parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _compress_and_check(data: bytes, frame: FramePlan, items: Sequence[ContentItem], level: int) -> bytes:
    pos = 0
    view = memoryview(data)
    for p in frame.pieces:
        item = items[p.item]
        if p.length == item.size and hashlib.sha256(view[pos : pos + p.length]).hexdigest() != item.digest:
            raise CacheError(f"{item.path} changed while it was being saved")
        pos += p.length
    # The frame checksum (XXH64 of the content, checked as it decompresses) is a second guard behind the
    # frame's SHA-256 in the manifest; 4 bytes a frame.
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True).compress(data)
