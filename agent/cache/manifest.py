"""The manifest of a cache entry: format version 4 (binary; version 3 plus a SHA-256 per frame), versions
3, 2 and 1 (JSON) still read; see docs/cache-format.md.

A manifest lists every path of an entry, in the order directories-before-contents, with its type, mode,
mtime, size, content digest and, for regular files, where its bytes live: a list of *chunks*, each a slice
``[raw_offset, raw_offset + raw_length)`` of the decompressed bytes of one *frame*. A frame is one
independent zstd frame at ``[offset, offset + length)`` of a *pack* object that decompresses to exactly
``raw_size`` bytes. Packs and manifests are named by the SHA-256 of their bytes.

Version 2 (written since the cache got fast restores) is a zstd-compressed binary layout whose columns
decode with a handful of ``struct.unpack_from`` calls instead of a JSON object per path::

    b"STKM" u16 version=4  u32 header length  header: UTF-8 JSON
        {"format", "version", "key", "created", "digest", "roots", "packs",
         "writer": {"principal", "tenant", "trust", "build_id", "node"}}   (writer: version 3 and later)
    u32 frames  frames × <IQII (pack index, offset, length, raw size)
                frames × 32 bytes: SHA-256 of the frame's compressed bytes, zeros if unknown (version 4)
    u32 paths   paths × u8 type (0 dir, 1 file, 2 symlink)   paths × u16 mode   paths × q mtime_ns
                u32 bytes + paths joined by NUL
    for the F regular files, in order:  F × Q size   F × 32 bytes SHA-256   F × I chunk count
                C × <III (frame index, raw offset, raw length)
    for the S symlinks, in order:  u32 bytes + targets joined by NUL

Version 1 is the JSON document shown in docs/cache-format.md. Readers accept the versions they know (1 to
4) and refuse others with a clear error, so a later version can change the layout without old agents
misreading it. Nothing here trusts a manifest: :func:`parse` checks every path and every chunk before a
restore writes anything.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import heapq
import json
import operator
import posixpath
import re
import stat
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import zstandard

from stoker.agent.cache.api import CacheError, EntryWriter, UnsafeTree

try:  # the per-path loop of the binary parser in C (agent/cache/_fastio.c), where it is built
    from stoker.agent.cache import _fastio as _compiled  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - without a C compiler: the same loop in Python below
    _compiled = None

FORMAT_NAME = "stoker-cache-manifest"
FORMAT_VERSION = 4
READ_VERSIONS = (1, 2, 3, 4)
DIGEST_ALGORITHM = "sha256"

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
_TYPES = (FILE, DIR, SYMLINK)
_TYPE_CODE = {DIR: 0, FILE: 1, SYMLINK: 2}
_MAGIC = b"STKM"
_NO_DIGEST = bytes(32)
"""A frame digest of 32 zero bytes stands for "unknown" (no SHA-256 output is all zeros in practice)."""

_MAX_MANIFEST_BYTES = 1 << 30
MAX_FRAME_RAW_SIZE = 64 << 20
"""No frame may declare more than this (a reader allocates a frame's raw size at once)."""


# Plain named tuples, not dataclasses: a 25k-path manifest builds 50k of these per parse, and a tuple is
# made an order of magnitude faster than a frozen dataclass (which sets each field with object.__setattr__).
# Fields of a FileEntry by position, for passes over 25k entries at C speed (map, compress, sum) rather
# than a Python loop each; the compiled writer reads the same positions (see writers.load_compiled).
PATH = operator.itemgetter(0)
TYPE = operator.itemgetter(1)
SIZE = operator.itemgetter(4)
DIGEST = operator.itemgetter(5)
CHUNKS = operator.itemgetter(7)
CHUNK_FRAME = operator.itemgetter(0)
"""The frame index of a Chunk."""


class Frame(NamedTuple):
    """One independent zstd frame inside a pack."""

    pack: str
    offset: int
    length: int
    raw_size: int
    digest: bytes | None = None
    """SHA-256 of the frame's compressed bytes (version 4); None where unknown (older manifests, frames
    reused from them): then every file the frame holds is checked against its own digest instead."""


class Chunk(NamedTuple):
    """``raw_length`` bytes of a file, found at ``raw_offset`` of frame ``frame`` decompressed."""

    frame: int
    raw_offset: int
    raw_length: int


class FileEntry(NamedTuple):
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
    writer: EntryWriter | None = None
    """Who saved the entry (version 3; None in older manifests)."""

    @property
    def total_bytes(self) -> int:
        return sum(map(SIZE, self.files))  # directories and symlinks have size 0

    @property
    def file_count(self) -> int:
        return list(map(TYPE, self.files)).count(FILE)

    @property
    def packs(self) -> tuple[str, ...]:
        return tuple(sorted({fr.pack for fr in self.frames}))

    def under(self, roots: tuple[str, ...]) -> list[FileEntry]:
        """The entries at or under ``roots``."""
        if self.roots and set(self.roots) <= set(roots):
            return list(self.files)  # validate() saw every path lie under the manifest's roots
        below = tuple(r + "/" for r in roots)
        exact = set(roots)
        return [f for f in self.files if f.path in exact or f.path.startswith(below)]


def encode(manifest: Manifest, *, version: int = FORMAT_VERSION) -> bytes:
    """The serialized, compressed manifest (deterministic for equal manifests). ``version=1`` writes the
    old JSON layout (kept for tests of the version-1 reader)."""
    packs = sorted({fr.pack for fr in manifest.frames})
    pack_index = {name: i for i, name in enumerate(packs)}
    if version == 1:
        return _encode_v1(manifest, packs, pack_index)
    if version not in (2, 3, 4):
        raise ValueError(f"cannot write manifest version {version}")
    doc: dict[str, object] = {
        "format": FORMAT_NAME,
        "version": version,
        "key": manifest.key,
        "created": manifest.created,
        "digest": DIGEST_ALGORITHM,
        "roots": list(manifest.roots),
        "packs": packs,
    }
    if version >= 3:
        doc["writer"] = manifest.writer.to_dict() if manifest.writer else {}
    header = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    out = [_MAGIC, struct.pack("<HI", version, len(header)), header, struct.pack("<I", len(manifest.frames))]
    out += [
        struct.pack("<IQII", pack_index[fr.pack], fr.offset, fr.length, fr.raw_size) for fr in manifest.frames
    ]
    if version >= 4:
        out += [fr.digest or _NO_DIGEST for fr in manifest.frames]
    files = manifest.files
    n = len(files)
    paths = "\0".join(f.path for f in files).encode()
    out += [
        struct.pack("<I", n),
        bytes(_TYPE_CODE.get(f.type, 255) for f in files),
        struct.pack(f"<{n}H", *(f.mode for f in files)),
        struct.pack(f"<{n}q", *(f.mtime_ns for f in files)),
        struct.pack("<I", len(paths)),
        paths,
    ]
    regular = [f for f in files if f.type == FILE]
    out += [
        struct.pack(f"<{len(regular)}Q", *(f.size for f in regular)),
        b"".join(bytes.fromhex(f.digest or "") for f in regular),
        struct.pack(f"<{len(regular)}I", *(len(f.chunks) for f in regular)),
    ]
    flat = [x for f in regular for c in f.chunks for x in c]
    out.append(struct.pack(f"<{len(flat)}I", *flat))
    targets = "\0".join(f.target or "" for f in files if f.type == SYMLINK).encode()
    out += [struct.pack("<I", len(targets)), targets]
    return zstandard.ZstdCompressor(level=6).compress(b"".join(out))


def _encode_v1(manifest: Manifest, packs: list[str], pack_index: dict[str, int]) -> bytes:
    doc = {
        "format": FORMAT_NAME,
        "version": 1,
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


def parse(data: bytes, *, where: str, check: bool = True) -> Manifest:
    """Decode and validate a manifest (versions 1 to 4); ``where`` names it in errors (key and object name).
    ``check=False`` skips :func:`validate`: only for a manifest validated before and known by its digest.

    Raises :class:`UnsafeTree` for paths stoker refuses and :class:`CacheError` for anything malformed.
    """
    try:
        # A frame that declares its size is allocated at that size whatever max_output_size says:
        # refuse a declared size over the cap before decompressing (hostile finding 2).
        declared = zstandard.get_frame_parameters(data).content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > _MAX_MANIFEST_BYTES:
            raise CacheError(f"manifest {where}: declares {declared} bytes, more than a manifest may hold")
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=_MAX_MANIFEST_BYTES)
    except zstandard.ZstdError as exc:
        raise CacheError(f"manifest {where} is not readable: {exc}") from exc
    binary = raw.startswith(_MAGIC)
    with gc_paused():
        manifest = _parse_v2(raw, where) if binary else _parse_v1(raw, where)
    if check:
        validate(manifest, where=where, hex_digests=binary)
    return manifest


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while the block runs (then as before). Building a 25k-path manifest
    allocates ~50k tuples, none in a cycle, and the collector that the allocations trigger took half of
    the parse (0.035 s → 0.017 s for the bench tree's manifest)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _check_header(doc: object, where: str) -> dict:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise CacheError(f"manifest {where} is not a stoker cache manifest")
    if doc.get("version") not in READ_VERSIONS:
        raise CacheError(
            f"manifest {where} has format version {doc.get('version')!r}; "
            f"this agent reads versions {', '.join(map(str, READ_VERSIONS))}"
        )
    if doc.get("digest") != DIGEST_ALGORITHM:
        raise CacheError(f"manifest {where} uses digest {doc.get('digest')!r}, not {DIGEST_ALGORITHM}")
    return doc


def _parse_v1(raw: bytes, where: str) -> Manifest:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CacheError(f"manifest {where} is not readable: {exc}") from exc
    doc = _check_header(doc, where)
    if doc["version"] != 1:
        raise CacheError(f"manifest {where} is JSON but claims format version {doc['version']!r}")
    try:
        packs = [str(p) for p in doc["packs"]]
        for p in packs:
            _check_object_name(p, where)
        frames = tuple(Frame(packs[int(i)], int(o), int(n), int(r)) for i, o, n, r in doc["frames"])
        files = tuple(_parse_file(d) for d in doc["files"])
        return Manifest(
            key=str(doc["key"]),
            created=float(doc["created"]),
            frames=frames,
            files=files,
            roots=tuple(str(r) for r in doc.get("roots", ())),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CacheError(f"manifest {where} is malformed: {exc!r}") from exc


def _parse_v2(raw: bytes, where: str) -> Manifest:
    """Decode the binary layout in the module docstring.

    Longer than the rest on purpose: one cursor walks the sections in order, each count checked against
    the bytes left before it sizes anything, and the loop over entries builds tuples directly (this runs
    for every restore and save, over 25k-entry manifests, and is fuzzed as one unit in tests/hostile)."""
    pos = 0

    def need(nbytes: int) -> None:
        """Every count read from the input is checked against the bytes left before it sizes anything."""
        if nbytes < 0 or pos + nbytes > len(raw):
            raise CacheError(f"manifest {where} is malformed: its sections do not add up")

    try:
        need(10)
        version, hlen = struct.unpack_from("<HI", raw, 4)
        if version not in (2, 3, 4):
            raise CacheError(
                f"manifest {where} has format version {version!r}; "
                f"this agent reads versions {', '.join(map(str, READ_VERSIONS))}"
            )
        pos = 10
        need(hlen)
        doc = _check_header(json.loads(raw[pos : pos + hlen]), where)
        if doc["version"] != version:
            raise CacheError(
                f"manifest {where} is malformed: version {version} with a version {doc['version']!r} header"
            )
        if version >= 3 and not EntryWriter.valid(doc.get("writer")):
            raise CacheError(f"manifest {where} is malformed: its writer is not an object of short strings")
        writer = EntryWriter.from_dict(doc.get("writer"))
        pos += hlen
        packs = [str(p) for p in doc["packs"]]
        for p in packs:
            _check_object_name(p, where)
        need(4)
        (nframes,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        need(20 * nframes)
        frames = tuple(
            Frame(packs[i], o, n, r)
            for i, o, n, r in struct.iter_unpack("<IQII", raw[pos : pos + 20 * nframes])
        )
        pos += 20 * nframes
        if version >= 4:
            need(32 * nframes)
            frames = tuple(
                fr._replace(digest=d) if (d := raw[p : p + 32]) != _NO_DIGEST else fr
                for fr, p in zip(frames, range(pos, pos + 32 * nframes, 32))
            )
            pos += 32 * nframes
        need(4)
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        need(11 * n + 4)
        types = raw[pos : pos + n]
        pos += n
        modes = struct.unpack_from(f"<{n}H", raw, pos)
        pos += 2 * n
        mtimes = struct.unpack_from(f"<{n}q", raw, pos)
        pos += 8 * n
        (plen,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        need(plen)
        paths = raw[pos : pos + plen].decode().split("\0") if n else []
        pos += plen
        if len(paths) != n or len(types) != n:
            raise CacheError(f"manifest {where} is malformed: {len(paths)} paths for {n} entries")
        nfiles = types.count(1)
        need(44 * nfiles)
        sizes = struct.unpack_from(f"<{nfiles}Q", raw, pos)
        pos += 8 * nfiles
        digests = raw[pos : pos + 32 * nfiles]
        pos += 32 * nfiles
        counts = struct.unpack_from(f"<{nfiles}I", raw, pos)
        pos += 4 * nfiles
        nchunks = sum(counts)
        need(12 * nchunks + 4)
        cflat = struct.unpack_from(f"<{3 * nchunks}I", raw, pos)
        pos += 12 * nchunks
        (tlen,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        targets = raw[pos : pos + tlen].decode().split("\0")
        if pos + tlen != len(raw) or len(digests) != 32 * nfiles:
            raise CacheError(f"manifest {where} is malformed: its sections do not add up")
        if _compiled is not None:
            files = _compiled.manifest_entries(
                FileEntry,
                Chunk,
                (DIR, FILE, SYMLINK),
                types,
                paths,
                modes,
                mtimes,
                sizes,
                digests,
                counts,
                cflat,
                targets,
            )
            return _manifest_of(doc, frames, files, writer)
        files = []
        append = files.append
        new = tuple.__new__
        fi = ci = si = 0
        for i in range(n):
            t = types[i]
            if t == 1:
                k = counts[fi]
                chunks: tuple[Chunk, ...]
                if k == 1:
                    chunks = (new(Chunk, cflat[ci : ci + 3]),)
                else:
                    chunks = tuple([new(Chunk, cflat[j : j + 3]) for j in range(ci, ci + 3 * k, 3)])
                ci += 3 * k
                append(
                    new(
                        FileEntry,
                        (
                            paths[i],
                            FILE,
                            modes[i],
                            mtimes[i],
                            sizes[fi],
                            digests[32 * fi : 32 * fi + 32].hex(),
                            None,
                            chunks,
                        ),
                    )
                )
                fi += 1
            elif t == 0:
                append(new(FileEntry, (paths[i], DIR, modes[i], mtimes[i], 0, None, None, ())))
            elif t == 2:
                append(new(FileEntry, (paths[i], SYMLINK, modes[i], mtimes[i], 0, None, targets[si], ())))
                si += 1
            else:
                append(FileEntry(paths[i], f"type {t}", modes[i], mtimes[i]))
        return _manifest_of(doc, frames, files, writer)
    except (struct.error, KeyError, TypeError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise CacheError(f"manifest {where} is malformed: {exc!r}") from exc


def _manifest_of(
    doc: dict, frames: tuple[Frame, ...], files: list[FileEntry], writer: EntryWriter | None
) -> Manifest:
    return Manifest(
        key=str(doc["key"]),
        created=float(doc["created"]),
        frames=frames,
        files=tuple(files),
        roots=tuple(str(r) for r in doc.get("roots", ())),
        writer=writer,
    )


def _check_object_name(name: str, where: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise CacheError(f"manifest {where} names an invalid pack {name!r}")


def _parse_file(d: dict) -> FileEntry:
    kind = d["type"]
    chunks = tuple(Chunk(int(a), int(b), int(c)) for a, b, c in d.get("chunks", ()))
    return FileEntry(
        path=str(d["path"]),
        type=str(kind),
        mode=int(d["mode"]),
        mtime_ns=int(d["mtime_ns"]),
        size=int(d.get("size", 0)),
        digest=d.get("digest"),
        target=d.get("target"),
        chunks=chunks,
    )


def without_frame_digests(manifest: Manifest) -> Manifest:
    """``manifest`` with its frames' digests forgotten: a writer given it checks every file against its own
    digest (what proves the files' digests match their bytes, which a frame's digest alone does not)."""
    if not any(fr.digest for fr in manifest.frames):
        return manifest
    return replace(manifest, frames=tuple(fr._replace(digest=None) for fr in manifest.frames))


SKETCH_K = 64


def content_sketch(manifest: Manifest, k: int = SKETCH_K) -> tuple[int, ...]:
    """Bottom-k MinHash of the manifest's distinct content digests: the first 8 bytes of each distinct
    SHA-256 (uniform already) as an unsigned 64-bit integer, the ``k`` smallest, ascending."""
    # Digests are 64 lowercase hex characters (validated), so their 16-character prefixes sort as the
    # integers they spell: pick the k smallest as strings and convert only those.
    prefixes = {d[:16] for d in filter(None, map(DIGEST, manifest.files))}
    return tuple(int(p, 16) for p in heapq.nsmallest(k, prefixes))


_BAD_PARTS = frozenset(("", ".", ".."))


def check_relative_path(path: str, *, where: str) -> None:
    """Refuse absolute paths, ``..``, empty or ``.`` components, and anything not in normal form."""
    if (
        not path
        or path[0] == "/"
        or "\\" in path
        or "\0" in path
        or not _BAD_PARTS.isdisjoint(path.split("/"))
    ):
        raise UnsafeTree(f"{where}: unsafe path {path!r}")


_BAD_JOINED = (
    "\0\0",
    "\0/",
    "/\0",
    "//",
    "/./",
    "/../",
    "\0./",
    "\0../",
    "/.\0",
    "/..\0",
    "\0.\0",
    "\0..\0",
    "\\",
)


def _all_paths_normal(paths: list[str]) -> bool:
    """Whether :func:`check_relative_path` would accept every one of ``paths``, checked on the joined
    column at once (a dozen substring searches instead of a split per path), or in one pass in C."""
    if _compiled is not None:
        return bool(_compiled.paths_normal(paths))
    joined = "\0" + "\0".join(paths) + "\0"
    if joined.count("\0") != len(paths) + 1:  # a path holding NUL
        return False
    return not any(bad in joined for bad in _BAD_JOINED)


def symlink_stays_inside(
    link_path: str,
    target: str,
    roots: tuple[str, ...],
    links: Mapping[str, str] | None = None,
    *,
    within_roots: bool = False,
) -> bool:
    """Whether a relative symlink at ``link_path`` resolves inside one of ``roots``.

    Resolved component by component as the kernel would, following the other symlinks of the tree
    (``links``: path → target) where a component names one, so a chain such as ``s -> .`` then
    ``l -> s/s/s/../../../x`` is seen to leave the tree (a lexical ``normpath`` alone would not see it).
    With ``within_roots`` every step must also stay in the roots or their parent directories: a path
    outside them is not part of the tree, so nothing says what it is (a save's check: it resolves nothing
    through the workspace's other files).
    """
    if not target or target.startswith("/") or "\0" in target:
        return False
    current: list[str] = []
    for part in posixpath.dirname(link_path).split("/"):  # callers pass normal paths; resolve it anyway
        if part == "..":
            if not current:
                return False
            current.pop()
        elif part not in ("", "."):
            current.append(part)
    pending = collections.deque(target.split("/"))
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return False  # above the workspace
            current.pop()
            continue
        current.append(part)
        if within_roots and not _in_or_above(current, roots):
            return False
        if links:
            via = links.get("/".join(current))
            if via is not None:
                hops += 1
                if hops > 40 or not via or via.startswith("/"):
                    return False  # a loop, or a link that leaves for an absolute path
                current.pop()
                pending.extendleft(reversed(via.split("/")))
    resolved = "/".join(current)
    return any(resolved == r or resolved.startswith(r + "/") for r in roots)


_HEX_DIGESTS = re.compile(r"[0-9a-f]*")


def _in_or_above(parts: list[str], roots: tuple[str, ...]) -> bool:
    path = "/".join(parts)
    return any(path == r or path.startswith(r + "/") or r.startswith(path + "/") for r in roots)


def _all_digests_valid(files: Sequence[FileEntry]) -> bool:
    """Whether every regular file has a 64-character lowercase hex digest (one regex over them all)."""
    digests = [f.digest for f in files if f.type == FILE]
    if not all(isinstance(d, str) and len(d) == 64 for d in digests):
        return False
    return _HEX_DIGESTS.fullmatch("".join(digests)) is not None  # type: ignore[arg-type]


_REFUSED_MODE_BITS = stat.S_ISUID | stat.S_ISGID


def validate(manifest: Manifest, *, where: str, hex_digests: bool = False) -> None:
    """Check every path and chunk of ``manifest`` (see the module docstring). ``hex_digests``: every
    regular file's digest is known to be 64 lowercase hex characters (the binary parser makes them from
    32 bytes each), so they are not matched again."""
    for fr in manifest.frames:
        if fr.offset < 0 or fr.length <= 0 or not 0 <= fr.raw_size <= MAX_FRAME_RAW_SIZE:
            raise CacheError(f"manifest {where}: invalid frame {fr}")
    roots = manifest.roots
    for r in roots:
        check_relative_path(r, where=f"manifest {where}")
    root_set = frozenset(roots)
    seen: dict[str, str] = {}
    frames = manifest.frames
    nframes = len(frames)
    label = f"manifest {where}"
    links: dict[str, str] = {}
    paths_ok = _all_paths_normal([f.path for f in manifest.files])
    digests_ok = hex_digests or _all_digests_valid(manifest.files)
    raw_sizes = [fr.raw_size for fr in frames]
    if _compiled is not None and paths_ok and digests_ok:
        # The same checks in C (~5x faster); None when an entry needs the loop below to decide or to word
        # its error. What C leaves to Python: where each symlink leads.
        plain_links = _compiled.validate_entries(manifest.files, raw_sizes, root_set, DIR, FILE, SYMLINK)
        if plain_links is not None:
            for path, target in plain_links:
                if not symlink_stays_inside(path, target, roots or (path.split("/")[0],)):
                    raise UnsafeTree(f"{label}: symlink {path!r} -> {target!r} leaves the tree")
            _check_link_chains(dict(plain_links), roots, label)
            return
    # Fields unpacked from each entry and each chunk (faster than attribute access; the same checks).
    for path, kind_of, mode, _mtime, size, digest, target, chunks in manifest.files:
        if not paths_ok:
            check_relative_path(path, where=label)
        if kind_of not in _TYPES:
            raise UnsafeTree(
                f"{label}: {path!r} has type {kind_of!r}; only files, directories and symlinks are restored"
            )
        if path in seen:
            raise UnsafeTree(f"{label}: duplicate path {path!r}")
        parent = path.rpartition("/")[0]
        kind = seen.get(parent) if parent else None
        # Fast path: the parent is a directory listed earlier, so it is inside the roots and every ancestor
        # was checked when it was listed. Otherwise only a root itself may stand without its parent, and
        # never beneath a listed file or symlink.
        if kind != DIR and (path not in root_set or kind is not None):
            _check_ancestors(path, seen, roots, label)
        seen[path] = kind_of
        if mode != (mode & 0o7777) or mode & _REFUSED_MODE_BITS:
            raise UnsafeTree(f"{label}: {path!r} has refused mode {oct(mode)}")
        if kind_of == SYMLINK:
            if target is None or not symlink_stays_inside(path, target, roots or (path.split("/")[0],)):
                raise UnsafeTree(f"{label}: symlink {path!r} -> {target!r} leaves the tree")
            links[path] = target
        elif kind_of == FILE:
            if not digests_ok and not (
                isinstance(digest, str) and len(digest) == 64 and _HEX_DIGESTS.fullmatch(digest)
            ):
                raise CacheError(f"{label}: {path!r} has no valid {DIGEST_ALGORITHM} digest")
            total = 0
            for frame, raw_offset, raw_length in chunks:
                if not 0 <= frame < nframes:
                    raise CacheError(f"{label}: {path!r} refers to a missing frame {frame}")
                if raw_offset < 0 or raw_length < 0 or raw_offset + raw_length > raw_sizes[frame]:
                    raise CacheError(f"{label}: {path!r} reads past the end of its frame")
                total += raw_length
            if total != size:
                raise CacheError(f"{label}: {path!r} has size {size} but its frames hold {total} bytes")
    _check_link_chains(links, roots, label)


def _check_link_chains(links: dict[str, str], roots: tuple[str, ...], label: str) -> None:
    """Each link again, now following the tree's other links: chains must not leave it either."""
    for path, target in links.items():
        if not symlink_stays_inside(path, target, roots or (path.split("/")[0],), links):
            raise UnsafeTree(f"{label}: symlink {path!r} -> {target!r} leaves the tree through other links")


def _check_ancestors(path: str, seen: dict[str, str], roots: tuple[str, ...], label: str) -> None:
    """The slow path of :func:`validate`: every ancestor must be a directory listed earlier (or lie
    above the roots), and the path must lie inside the roots: no path may pass through a symlink or a file."""
    if roots and not any(path == r or path.startswith(r + "/") for r in roots):
        raise UnsafeTree(f"{label}: {path!r} lies outside the entry's paths {list(roots)}")
    parent = posixpath.dirname(path)
    while parent:
        kind = seen.get(parent)
        if kind is not None and kind != DIR:
            raise UnsafeTree(f"{label}: {path!r} passes through the {kind} {parent!r}")
        if kind == DIR:
            break
        if roots and any(parent == r or parent.startswith(r + "/") for r in roots):
            raise UnsafeTree(f"{label}: {path!r} comes before its directory {parent!r}")
        parent = posixpath.dirname(parent)
