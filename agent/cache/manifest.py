"""The manifest of a cache entry: format version 1 (see docs/cache-format.md).

A manifest lists every path of an entry, in the order directories-before-contents, with its type, mode,
mtime, size, content digest and, for regular files, where its bytes live: a list of *chunks*, each a slice
``[raw_offset, raw_offset + raw_length)`` of the decompressed bytes of one *frame*. A frame is one
independent zstd frame at ``[offset, offset + length)`` of a *pack* object that decompresses to exactly
``raw_size`` bytes. Packs and manifests are named by the SHA-256 of their bytes.

Serialized form: UTF-8 JSON, zstd-compressed, object name ``manifests/<sha256 of the compressed bytes>``::

    {"format": "stoker-cache-manifest", "version": 1, "key": str, "created": float,
     "digest": "sha256",
     "packs": [pack name, ...],
     "frames": [[pack index, offset, length, raw size], ...],
     "files": [{"path": "node_modules/a/b.js", "type": "file"|"dir"|"symlink", "mode": int,
                "mtime_ns": int, "size": int, "digest": hex|null, "target": str|null,
                "chunks": [[frame index, raw offset, raw length], ...]}, ...]}

Readers accept any ``version`` they know (only 1 today) and refuse others with a clear error, so a later
version can change the layout without old agents misreading it. Nothing here trusts a manifest:
:func:`parse` checks every path and every chunk before a restore writes anything.
"""

from __future__ import annotations

import json
import posixpath
import stat
from dataclasses import dataclass, field

import zstandard

from stoker.agent.cache.api import CacheError, UnsafeTree

FORMAT_NAME = "stoker-cache-manifest"
FORMAT_VERSION = 1
DIGEST_ALGORITHM = "sha256"

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
_TYPES = (FILE, DIR, SYMLINK)

_MAX_MANIFEST_BYTES = 1 << 30
MAX_FRAME_RAW_SIZE = 64 << 20
"""No frame may declare more than this (a reader allocates a frame's raw size at once)."""


@dataclass(frozen=True)
class Frame:
    """One independent zstd frame inside a pack."""

    pack: str
    offset: int
    length: int
    raw_size: int


@dataclass(frozen=True)
class Chunk:
    """``raw_length`` bytes of a file, found at ``raw_offset`` of frame ``frame`` decompressed."""

    frame: int
    raw_offset: int
    raw_length: int


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Relative POSIX path inside the workspace (``node_modules/react/index.js``)."""
    type: str
    mode: int
    """Permission bits (``st_mode & 0o7777``)."""
    mtime_ns: int
    size: int = 0
    digest: str | None = None
    target: str | None = None
    """Symlink target, relative, staying inside the entry's trees."""
    chunks: tuple[Chunk, ...] = ()


@dataclass(frozen=True)
class Manifest:
    key: str
    created: float
    frames: tuple[Frame, ...]
    files: tuple[FileEntry, ...]
    roots: tuple[str, ...] = field(default=())
    """The top-level paths of the entry (the ``paths`` it was saved from)."""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files if f.type == FILE)

    @property
    def file_count(self) -> int:
        return sum(1 for f in self.files if f.type == FILE)

    @property
    def packs(self) -> tuple[str, ...]:
        return tuple(sorted({fr.pack for fr in self.frames}))


def encode(manifest: Manifest) -> bytes:
    """The serialized, compressed manifest (deterministic for equal manifests)."""
    packs = sorted({fr.pack for fr in manifest.frames})
    pack_index = {name: i for i, name in enumerate(packs)}
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "key": manifest.key,
        "created": manifest.created,
        "digest": DIGEST_ALGORITHM,
        "roots": list(manifest.roots),
        "packs": packs,
        "frames": [[pack_index[fr.pack], fr.offset, fr.length, fr.raw_size] for fr in manifest.frames],
        "files": [_file_doc(f) for f in manifest.files],
    }
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return zstandard.ZstdCompressor(level=6).compress(raw)


def _file_doc(f: FileEntry) -> dict:
    doc: dict = {"path": f.path, "type": f.type, "mode": f.mode, "mtime_ns": f.mtime_ns}
    if f.type == FILE:
        doc["size"] = f.size
        doc["digest"] = f.digest
        doc["chunks"] = [[c.frame, c.raw_offset, c.raw_length] for c in f.chunks]
    elif f.type == SYMLINK:
        doc["target"] = f.target
    return doc


def parse(data: bytes, *, where: str) -> Manifest:
    """Decode and validate a manifest; ``where`` names it in errors (key and object name).

    Raises :class:`UnsafeTree` for paths stoker refuses and :class:`CacheError` for anything malformed.
    """
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=_MAX_MANIFEST_BYTES)
        doc = json.loads(raw)
    except (zstandard.ZstdError, ValueError) as exc:
        raise CacheError(f"manifest {where} is not readable: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise CacheError(f"manifest {where} is not a stoker cache manifest")
    if doc.get("version") != FORMAT_VERSION:
        raise CacheError(f"manifest {where} has format version {doc.get('version')!r}; "
                         f"this agent reads version {FORMAT_VERSION}")
    if doc.get("digest") != DIGEST_ALGORITHM:
        raise CacheError(f"manifest {where} uses digest {doc.get('digest')!r}, not {DIGEST_ALGORITHM}")
    try:
        packs = [str(p) for p in doc["packs"]]
        for p in packs:
            _check_object_name(p, where)
        frames = tuple(Frame(packs[int(i)], int(o), int(n), int(r)) for i, o, n, r in doc["frames"])
        files = tuple(_parse_file(d) for d in doc["files"])
        manifest = Manifest(key=str(doc["key"]), created=float(doc["created"]), frames=frames,
                            files=files, roots=tuple(str(r) for r in doc.get("roots", ())))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CacheError(f"manifest {where} is malformed: {exc!r}") from exc
    validate(manifest, where=where)
    return manifest


def _check_object_name(name: str, where: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise CacheError(f"manifest {where} names an invalid pack {name!r}")


def _parse_file(d: dict) -> FileEntry:
    kind = d["type"]
    chunks = tuple(Chunk(int(a), int(b), int(c)) for a, b, c in d.get("chunks", ()))
    return FileEntry(path=str(d["path"]), type=str(kind), mode=int(d["mode"]), mtime_ns=int(d["mtime_ns"]),
                     size=int(d.get("size", 0)), digest=d.get("digest"),
                     target=d.get("target"), chunks=chunks)


def check_relative_path(path: str, *, where: str) -> None:
    """Refuse absolute paths, ``..``, empty or ``.`` components, and anything not in normal form."""
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise UnsafeTree(f"{where}: unsafe path {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeTree(f"{where}: unsafe path {path!r}")


def symlink_stays_inside(link_path: str, target: str, roots: tuple[str, ...]) -> bool:
    """Whether a relative symlink at ``link_path`` resolves (lexically) inside one of ``roots``."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if resolved.startswith("../") or resolved == "..":
        return False
    return any(resolved == r or resolved.startswith(r + "/") for r in roots)


def validate(manifest: Manifest, *, where: str) -> None:
    """Check every path and chunk of ``manifest`` (see the module docstring)."""
    for fr in manifest.frames:
        if fr.offset < 0 or fr.length <= 0 or not 0 <= fr.raw_size <= MAX_FRAME_RAW_SIZE:
            raise CacheError(f"manifest {where}: invalid frame {fr}")
    roots = manifest.roots
    for r in roots:
        check_relative_path(r, where=f"manifest {where}")
    seen: dict[str, str] = {}
    for f in manifest.files:
        check_relative_path(f.path, where=f"manifest {where}")
        if f.type not in _TYPES:
            raise UnsafeTree(f"manifest {where}: {f.path!r} has type {f.type!r}; only files, directories "
                             "and symlinks are restored")
        if f.path in seen:
            raise UnsafeTree(f"manifest {where}: duplicate path {f.path!r}")
        if roots and not any(f.path == r or f.path.startswith(r + "/") for r in roots):
            raise UnsafeTree(f"manifest {where}: {f.path!r} lies outside the entry's paths {list(roots)}")
        parent = posixpath.dirname(f.path)
        # Every ancestor must be a directory listed earlier (or lie above the roots): no path may pass
        # through a symlink or a file.
        while parent:
            kind = seen.get(parent)
            if kind is not None and kind != DIR:
                raise UnsafeTree(f"manifest {where}: {f.path!r} passes through the {kind} {parent!r}")
            if kind == DIR:
                break
            if roots and any(parent == r or parent.startswith(r + "/") for r in roots):
                raise UnsafeTree(f"manifest {where}: {f.path!r} comes before its directory {parent!r}")
            parent = posixpath.dirname(parent)
        seen[f.path] = f.type
        if f.mode != (f.mode & 0o7777) or f.mode & (stat.S_ISUID | stat.S_ISGID):
            raise UnsafeTree(f"manifest {where}: {f.path!r} has refused mode {oct(f.mode)}")
        if f.type == SYMLINK:
            if f.target is None or not symlink_stays_inside(f.path, f.target, roots or (f.path.split("/")[0],)):
                raise UnsafeTree(f"manifest {where}: symlink {f.path!r} -> {f.target!r} leaves the tree")
        elif f.type == FILE:
            _validate_chunks(manifest, f, where)


def _validate_chunks(manifest: Manifest, f: FileEntry, where: str) -> None:
    if not isinstance(f.digest, str) or len(f.digest) != 64:
        raise CacheError(f"manifest {where}: {f.path!r} has no valid {DIGEST_ALGORITHM} digest")
    total = 0
    for c in f.chunks:
        if not 0 <= c.frame < len(manifest.frames):
            raise CacheError(f"manifest {where}: {f.path!r} refers to a missing frame {c.frame}")
        fr = manifest.frames[c.frame]
        if c.raw_offset < 0 or c.raw_length < 0 or c.raw_offset + c.raw_length > fr.raw_size:
            raise CacheError(f"manifest {where}: {f.path!r} reads past the end of its frame")
        total += c.raw_length
    if total != f.size:
        raise CacheError(f"manifest {where}: {f.path!r} has size {f.size} but its frames hold {total} bytes")
