"""The shared blob store a cache saves to and hydrates from, behind a small protocol.

Object names are flat strings with ``/`` separators: ``packs/<sha256>``, ``manifests/<sha256>``,
``keys/<encoded key>``. Packs and manifests are immutable and named by their content, so two agents
writing the same one write the same bytes. Keys are mutable pointers, written last.

Cache keys are encoded character by character (:func:`encode_key`) so that the encoding of a prefix is a
prefix of the encoding: listing ``keys/<encode_key(prefix)>`` finds every key under a restore-key prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from stoker.agent.cache.api import CacheError

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def encode_key(key: str) -> str:
    """Percent-encode every byte outside ``[A-Za-z0-9._-]``; prefix-preserving and reversible."""
    out = []
    for ch in key:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


def decode_key(encoded: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(encoded[i].encode())
            i += 1
    return raw.decode()


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    modified: float
    """Last-modified time (unix seconds) as the store reports it."""


@dataclass
class BlobStats:
    """Request and byte counters of one blob store (for the benchmark and metrics)."""

    gets: int = 0
    puts: int = 0
    lists: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


class BlobStore(Protocol):
    """Where packs, manifests and key pointers live. Errors are :class:`CacheError` subclasses:
    :class:`~stoker.agent.cache.api.NotFound` for a missing object,
    :class:`~stoker.agent.cache.api.BlobStoreUnavailable` when the backend refuses or times out."""

    stats: BlobStats

    def describe(self) -> str:
        """A human-readable location (for messages)."""

    def get(self, name: str) -> bytes:
        """The whole object."""

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; fewer only if the object is shorter (the caller checks)."""

    def put(self, name: str, data: bytes) -> None:
        """Write the object atomically (readers see the old object or the new one, never a part)."""

    def put_file(self, name: str, path: Path) -> None:
        """Upload a local file as the object, atomically (multipart for large files where supported)."""

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``."""

    def delete(self, name: str) -> None: ...


@dataclass(frozen=True)
class ByteRange:
    offset: int
    length: int


def merge_ranges(
    ranges: Sequence[ByteRange], *, gap: int, max_length: int
) -> list[tuple[ByteRange, list[int]]]:
    """Merge sorted-able ranges whose gaps are at most ``gap`` bytes into reads of at most ``max_length``.

    Returns (read range, indices of the input ranges it covers), reads in offset order.
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i].offset)
    merged: list[tuple[ByteRange, list[int]]] = []
    for i in order:
        r = ranges[i]
        if merged:
            last, members = merged[-1]
            end = last.offset + last.length
            new_end = max(end, r.offset + r.length)
            if r.offset - end <= gap and new_end - last.offset <= max_length:
                merged[-1] = (ByteRange(last.offset, new_end - last.offset), members + [i])
                continue
        merged.append((ByteRange(r.offset, r.length), [i]))
    return merged


def open_blob_store(url: str, endpoint_url: str = "", region: str = "") -> BlobStore:
    """``file:///path`` for a local directory, ``s3://bucket/prefix`` for S3 (or an S3-compatible store)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from stoker.agent.cache.local_blobs import LocalBlobStore

        if parsed.netloc not in ("", "localhost"):
            raise CacheError(f"blob store URL {url!r}: file URLs name a local path (file:///path)")
        return LocalBlobStore(Path(parsed.path))
    if parsed.scheme == "s3":
        from stoker.agent.cache.s3_blobs import S3BlobStore

        if not parsed.netloc:
            raise CacheError(f"blob store URL {url!r} names no bucket (s3://bucket/prefix)")
        return S3BlobStore(
            bucket=parsed.netloc,
            prefix=parsed.path.strip("/"),
            endpoint_url=endpoint_url or None,
            region=region or None,
        )
    raise CacheError(f"blob store URL {url!r}: use file:///path or s3://bucket/prefix")
