"""The manifest format and its validation: never trust a manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import zstandard

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, EntryWriter, UnsafeTree
from stoker.agent.cache.blobs import ByteRange, decode_key, encode_key, merge_ranges
from stoker.agent.cache.packing import ContentItem, group_key, plan_packs

D = "a" * 64


def sample() -> mf.Manifest:
    frames = (mf.Frame("p1", 0, 10, 8),)
    files = (
        mf.FileEntry("nm", mf.DIR, 0o755, 1),
        mf.FileEntry("nm/a.js", mf.FILE, 0o644, 2, 5, D, None, (mf.Chunk(0, 0, 5),)),
        mf.FileEntry("nm/b.js", mf.FILE, 0o644, 2, 3, D, None, (mf.Chunk(0, 5, 3),)),
        mf.FileEntry("nm/link", mf.SYMLINK, 0o777, 3, target="a.js"),
    )
    return mf.Manifest("k", 1.0, frames, files, roots=("nm",))


def with_files(*files: mf.FileEntry, roots=("nm",), frames=None) -> mf.Manifest:
    base = sample()
    return dataclasses.replace(
        base,
        files=(base.files[0],) + files,
        roots=roots,
        frames=frames if frames is not None else base.frames,
    )


def test_round_trip_is_exact() -> None:
    m = sample()
    assert mf.parse(mf.encode(m), where="t") == m


def test_reads_version_1_and_refuses_unknown_versions() -> None:
    m = sample()
    v1 = mf.encode(m, version=1)
    assert json.loads(zstandard.ZstdDecompressor().decompress(v1))["version"] == 1
    assert mf.parse(v1, where="t") == m  # manifests written before version 2 still restore
    assert mf.parse(mf.encode(m), where="t") == m
    raw = json.loads(zstandard.ZstdDecompressor().decompress(v1))
    raw["version"] = 5
    data = zstandard.ZstdCompressor().compress(json.dumps(raw).encode())
    with pytest.raises(CacheError, match="format version 5"):
        mf.parse(data, where="t")
    binary = bytearray(zstandard.ZstdDecompressor().decompress(mf.encode(m)))
    assert binary[:4] == b"STKM"
    binary[4:6] = (5).to_bytes(2, "little")
    with pytest.raises(CacheError, match="format version 5"):
        mf.parse(zstandard.ZstdCompressor().compress(bytes(binary)), where="t")


def test_version_3_records_the_writer_and_version_2_still_reads() -> None:
    """Issue 16: entries record who wrote them (version 3); manifests of version 2 (no writer) still read."""
    writer = EntryWriter(principal="web-pr", tenant="web", trust="untrusted", build_id="b-1", node="n1")
    m = dataclasses.replace(sample(), writer=writer)
    assert mf.parse(mf.encode(m), where="t").writer == writer
    assert mf.parse(mf.encode(sample()), where="t").writer is None
    v2 = mf.encode(m, version=2)
    assert zstandard.ZstdDecompressor().decompress(v2)[4:6] == (2).to_bytes(2, "little")
    assert mf.parse(v2, where="t") == sample()  # version 2 carries no writer
    binary = zstandard.ZstdDecompressor().decompress(mf.encode(m))
    hostile = binary.replace(b'"tenant":"web"', b'"tenant":[1,2]')
    assert hostile != binary
    with pytest.raises(CacheError, match="writer"):
        mf.parse(zstandard.ZstdCompressor().compress(hostile), where="t")


def test_version_4_carries_frame_digests_and_version_3_still_reads() -> None:
    """Frame digests (version 4): kept per frame, an unknown one (zeros) reads as None; version 3 manifests
    read with no frame digests (their files are then checked one by one)."""
    base = sample()
    d0 = hashlib.sha256(b"frame 0").digest()
    frames = (base.frames[0]._replace(digest=d0),) + base.frames[1:]
    m = dataclasses.replace(base, frames=frames)
    back = mf.parse(mf.encode(m), where="t")
    assert back == m and back.frames[0].digest == d0
    assert all(fr.digest is None for fr in back.frames[1:])
    v3 = mf.encode(m, version=3)
    assert zstandard.ZstdDecompressor().decompress(v3)[4:6] == (3).to_bytes(2, "little")
    assert mf.parse(v3, where="t") == mf.without_frame_digests(m) == base
    binary = zstandard.ZstdDecompressor().decompress(mf.encode(m))
    cut = binary.index(d0)  # the frame digests sit right after the frames: drop one byte of them
    with pytest.raises(CacheError, match="malformed"):
        mf.parse(zstandard.ZstdCompressor().compress(binary[:cut] + binary[cut + 1 :]), where="t")


def test_version_2_refuses_truncated_and_padded_bodies() -> None:
    binary = zstandard.ZstdDecompressor().decompress(mf.encode(sample()))
    for bad in (binary[:-3], binary + b"\0", binary[:40]):
        with pytest.raises(CacheError, match="malformed|not a stoker"):
            mf.parse(zstandard.ZstdCompressor().compress(bad), where="t")


def test_version_2_is_smaller_and_round_trips_every_field() -> None:
    m = with_files(
        mf.FileEntry("nm/sub", mf.DIR, 0o750, -5),
        mf.FileEntry(
            "nm/sub/ü €.js",
            mf.FILE,
            0o755,
            1 << 62,
            8,
            "b" * 64,
            None,
            (mf.Chunk(0, 0, 4), mf.Chunk(0, 4, 4)),
        ),
        mf.FileEntry("nm/sub/empty", mf.FILE, 0o600, 7, 0, "c" * 64, None, ()),
        mf.FileEntry("nm/sub/l2", mf.SYMLINK, 0o777, 9, target="../a.js"),
    )
    assert mf.parse(mf.encode(m), where="t") == m
    assert len(mf.encode(m)) <= len(mf.encode(m, version=1))


@pytest.mark.parametrize("path", ["nm/../etc/passwd", "/etc/passwd", "nm//x", "nm/./x", "", "nm/x\0y"])
def test_refuses_unsafe_paths(path: str) -> None:
    m = with_files(mf.FileEntry(path, mf.DIR, 0o755, 1))
    with pytest.raises(UnsafeTree):
        mf.validate(m, where="t")


def test_refuses_a_path_through_a_symlink() -> None:
    m = with_files(
        mf.FileEntry("nm/link", mf.SYMLINK, 0o777, 1, target="sub"),
        mf.FileEntry("nm/sub", mf.DIR, 0o755, 1),
        mf.FileEntry("nm/link/x.js", mf.FILE, 0o644, 1, 5, D, None, (mf.Chunk(0, 0, 5),)),
    )
    with pytest.raises(UnsafeTree, match="passes through the symlink"):
        mf.validate(m, where="t")


def test_refuses_a_root_beneath_a_listed_symlink() -> None:
    """A root may stand without its parent listed, but not beneath a parent listed as a symlink (it skipped
    the ancestor check: only the restore's no-follow open stood in the way)."""
    m = with_files(
        mf.FileEntry("nm/link", mf.SYMLINK, 0o777, 1, target="sub"),
        mf.FileEntry("nm/sub", mf.DIR, 0o755, 1),
        mf.FileEntry("nm/link/x", mf.DIR, 0o755, 1),
        roots=("nm", "nm/link/x"),
    )
    with pytest.raises(UnsafeTree, match="passes through the symlink"):
        mf.validate(m, where="t")


def test_refuses_duplicate_paths() -> None:
    f = mf.FileEntry("nm/a.js", mf.FILE, 0o644, 2, 5, D, None, (mf.Chunk(0, 0, 5),))
    with pytest.raises(UnsafeTree, match="duplicate"):
        mf.validate(with_files(f, f), where="t")


def test_refuses_size_disagreeing_with_frames() -> None:
    f = mf.FileEntry("nm/a.js", mf.FILE, 0o644, 2, 6, D, None, (mf.Chunk(0, 0, 5),))
    with pytest.raises(CacheError, match="has size 6 but its frames hold 5"):
        mf.validate(with_files(f), where="t")


def test_refuses_chunk_past_frame_end_and_huge_frames() -> None:
    f = mf.FileEntry("nm/a.js", mf.FILE, 0o644, 2, 9, D, None, (mf.Chunk(0, 0, 9),))
    with pytest.raises(CacheError, match="past the end of its frame"):
        mf.validate(with_files(f), where="t")
    with pytest.raises(CacheError, match="invalid frame"):
        mf.validate(with_files(frames=(mf.Frame("p", 0, 10, 1 << 40),)), where="t")


@pytest.mark.parametrize("target", ["../../etc", "/etc/passwd", "../.."])
def test_refuses_symlinks_leaving_the_tree(target: str) -> None:
    with pytest.raises(UnsafeTree, match="leaves the tree"):
        mf.validate(with_files(mf.FileEntry("nm/l", mf.SYMLINK, 0o777, 1, target=target)), where="t")


def test_refuses_devices_and_setuid() -> None:
    with pytest.raises(UnsafeTree):
        mf.validate(with_files(mf.FileEntry("nm/dev", "chardev", 0o644, 1)), where="t")
    with pytest.raises(UnsafeTree, match="mode"):
        mf.validate(with_files(mf.FileEntry("nm/d", mf.DIR, 0o4755, 1)), where="t")


def test_refuses_files_outside_roots_and_missing_parents() -> None:
    with pytest.raises(UnsafeTree, match="outside"):
        mf.validate(with_files(mf.FileEntry("other", mf.DIR, 0o755, 1)), where="t")
    with pytest.raises(UnsafeTree, match="before its directory"):
        mf.validate(with_files(mf.FileEntry("nm/x/y", mf.DIR, 0o755, 1)), where="t")


def test_key_encoding_keeps_prefixes() -> None:
    for key in ["web/node_modules-abc", "ü ber/€", "a%b"]:
        assert decode_key(encode_key(key)) == key
        for i in range(len(key)):
            assert encode_key(key).startswith(encode_key(key[:i]))
    assert "/" not in encode_key("a/b")


def test_merge_ranges_merges_nearby_and_caps_length() -> None:
    ranges = [ByteRange(0, 10), ByteRange(15, 10), ByteRange(100, 10), ByteRange(112, 50)]
    merged = merge_ranges(ranges, gap=10, max_length=40)
    assert [(r.offset, r.length, m) for r, m in merged] == [(0, 25, [0, 1]), (100, 10, [2]), (112, 50, [3])]


def test_packs_cut_at_package_boundaries() -> None:
    assert group_key("node_modules/@babel/core/lib/x.js") == "node_modules/@babel/core"
    assert group_key("node_modules/react/index.js") == "node_modules/react"
    assert group_key("node_modules/a/node_modules/b/x.js") == "node_modules/a"
    items = [ContentItem(str(i), 600_000, f"node_modules/p{i}/x.js", None) for i in range(8)]  # type: ignore
    base = plan_packs(items, frame_target=1 << 20, group_min=1 << 20, pack_target=1 << 40)
    frames = [tuple(items[p.item].path for p in f.pieces) for f in base[0].frames]
    # tiny groups merged pairwise; no frame mixes more than the merged groups
    assert all(len(f) <= 2 for f in frames) and sum(len(f) for f in frames) == 8
    big = [ContentItem("b", 10 << 20, "node_modules/big/x", None)]  # type: ignore
    (pack,) = plan_packs(big, frame_target=4 << 20)
    assert [f.raw_size for f in pack.frames] == [4 << 20, 4 << 20, 2 << 20]


def test_version_2_checks_every_count_before_it_sizes_anything() -> None:
    """docs/findings/hostile-input.md, finding 8: a count of 0x0FFFFFFF must not build a gigabyte format
    string."""
    import struct
    import tracemalloc

    raw = zstandard.ZstdDecompressor().decompress(mf.encode(sample()))
    pos = 10 + struct.unpack_from("<I", raw, 6)[0]
    nframes = struct.unpack_from("<I", raw, pos)[0]
    paths_at = pos + 4 + (20 + 32) * nframes  # version 4: each frame, then each frame's digest
    n = struct.unpack_from("<I", raw, paths_at)[0]
    plen_at = paths_at + 4 + 11 * n
    for at in (pos, paths_at, plen_at):
        for count in (0x0FFFFFFF, 0xFFFFFFFF):
            bad = raw[:at] + struct.pack("<I", count) + raw[at + 4 :]
            tracemalloc.start()
            with pytest.raises(CacheError, match="malformed|sections do not add up"):
                mf.parse(zstandard.ZstdCompressor().compress(bad), where="t")
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 1 << 20
    # A chunk count that sums past the bytes left.
    chunk_counts_at = len(raw) - 4 - len(b"a.js") - 12 * 2 - 4 * 2
    bad = raw[:chunk_counts_at] + struct.pack("<I", 0x0FFFFFFF) + raw[chunk_counts_at + 4 :]
    with pytest.raises(CacheError, match="malformed|sections do not add up"):
        mf.parse(zstandard.ZstdCompressor().compress(bad), where="t")


def test_the_compiled_parser_loop_builds_what_the_python_loop_builds(monkeypatch) -> None:
    """The per-path loop of the binary parser runs in C where _fastio is built: same entries, same
    types (NamedTuples), an unknown type kept for validate() to refuse, as the Python loop does."""
    assert mf._compiled is not None, (
        "the compiled module (agent/cache/_fastio.c) is not built: install gcc and run ./scripts/setup.sh "
        "(it rebuilds it; setup.sh says so when it cannot)"
    )
    m = with_files(
        mf.FileEntry("nm/sub", mf.DIR, 0o750, -5),
        mf.FileEntry("nm/sub/x.js", mf.FILE, 0o755, 1 << 62, 8, "b" * 64, None, (mf.Chunk(0, 0, 4),) * 2),
        mf.FileEntry("nm/sub/empty", mf.FILE, 0o600, 7, 0, "c" * 64, None, ()),
        mf.FileEntry("nm/sub/l2", mf.SYMLINK, 0o777, 9, target="../a.js"),
    )
    raw = bytearray(zstandard.ZstdDecompressor().decompress(mf.encode(m)))
    n_at = raw.index(b"nm\0nm/") - 4 - 8 * len(m.files) - 2 * len(m.files) - len(m.files) - 4
    raw[n_at + 4 + 1] = 9  # the second path's type byte: unknown
    for data in (mf.encode(m), zstandard.ZstdCompressor().compress(bytes(raw))):
        compiled = mf.parse(data, where="t", check=False)
        monkeypatch.setattr(mf, "_compiled", None)
        python = mf.parse(data, where="t", check=False)
        monkeypatch.undo()
        assert compiled == python
        assert [type(f) for f in compiled.files] == [mf.FileEntry] * len(m.files)
        assert all(type(c) is mf.Chunk for f in compiled.files for c in f.chunks)
    assert compiled.files[1].type == "type 9"
    with pytest.raises(UnsafeTree, match="type 9"):
        mf.validate(compiled, where="t")


@pytest.mark.parametrize(
    "paths",
    [
        ["nm", "nm/a.js", "nm/.bin", "nm/..x", "nm/x..", "nm/ü €/.a"],
        ["nm/../x"],
        ["/nm"],
        ["nm/"],
        ["nm//x"],
        ["nm/./x"],
        ["nm/."],
        [".."],
        [""],
        ["nm/x\0y"],
        ["nm\\x"],
        ["nm/a", "nm/b/.."],
    ],
)
def test_compiled_path_check_agrees_with_the_python_one(monkeypatch, paths: list[str]) -> None:
    assert mf._compiled is not None, (
        "the compiled module (agent/cache/_fastio.c) is not built: install gcc and run ./scripts/setup.sh "
        "(it rebuilds it; setup.sh says so when it cannot)"
    )
    compiled = mf._all_paths_normal(paths)
    monkeypatch.setattr(mf, "_compiled", None)
    assert compiled == mf._all_paths_normal(paths)


def _outcome(m: mf.Manifest) -> str:
    try:
        mf.validate(m, where="t", hex_digests=True)
    except CacheError as exc:  # UnsafeTree is one
        return f"{type(exc).__name__}: {exc}"
    return "valid"


_EDITS = [
    lambda f: f._replace(mode=f.mode | 0o4000),
    lambda f: f._replace(mode=0o10644),
    lambda f: f._replace(type="fifo"),
    lambda f: f._replace(type=mf.DIR),
    lambda f: f._replace(path=f.path + "/x"),
    lambda f: f._replace(path="other/" + f.path),
    lambda f: f._replace(size=f.size + 1),
    lambda f: f._replace(chunks=(mf.Chunk(1, 0, f.size),)),
    lambda f: f._replace(chunks=(mf.Chunk(0, 7, 2),)),
    lambda f: f._replace(chunks=(mf.Chunk(0, -1, 1),) if f.size == 0 else f.chunks),
    lambda f: f._replace(target="../../out"),
    lambda f: f._replace(target=None),
    lambda f: f._replace(target="a.js", type=mf.SYMLINK),
]


@pytest.mark.parametrize("seed", range(60))
def test_compiled_validation_decides_as_the_python_loop(monkeypatch, seed: int) -> None:
    """validate()'s per-entry checks run in C (``_fastio.validate_entries``) and hand anything unusual to
    the Python loop: on valid manifests and on each kind of bad entry (edited, repeated, moved, dropped),
    both give the same verdict and the same error."""
    import random

    assert mf._compiled is not None, (
        "the compiled module (agent/cache/_fastio.c) is not built: install gcc and run ./scripts/setup.sh "
        "(it rebuilds it; setup.sh says so when it cannot)"
    )
    rng = random.Random(seed)
    files = list(
        with_files(
            mf.FileEntry("nm/sub", mf.DIR, 0o750, 4),
            mf.FileEntry("nm/sub/x.js", mf.FILE, 0o755, 5, 8, D, None, (mf.Chunk(0, 0, 4),) * 2),
            mf.FileEntry("nm/sub/empty", mf.FILE, 0o600, 7, 0, D, None, ()),
            mf.FileEntry("nm/sub/l2", mf.SYMLINK, 0o777, 9, target="../sub/x.js"),
            mf.FileEntry("nm/sub/l3", mf.SYMLINK, 0o777, 9, target="l2"),
        ).files
    )
    for _ in range(seed % 4):
        i = rng.randrange(len(files))
        kind = rng.randrange(4)
        if kind == 0:
            files[i] = rng.choice(_EDITS)(files[i])
        elif kind == 1:
            files.insert(rng.randrange(len(files) + 1), files[i])
        elif kind == 2:
            files.insert(rng.randrange(len(files) + 1), files.pop(i))
        else:
            del files[i]
    m = dataclasses.replace(sample(), files=tuple(files), roots=rng.choice([("nm",), ("nm", "nm/sub"), ()]))
    compiled = _outcome(m)
    monkeypatch.setattr(mf, "_compiled", None)
    assert compiled == _outcome(m)
    if seed == 0:  # unedited: the C loop decided it alone and handed back the symlinks
        monkeypatch.undo()
        found = mf._compiled.validate_entries(m.files, [8], frozenset(m.roots), mf.DIR, mf.FILE, mf.SYMLINK)
        assert found == [("nm/sub/l2", "../sub/x.js"), ("nm/sub/l3", "l2")]
