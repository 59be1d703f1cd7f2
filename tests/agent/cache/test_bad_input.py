"""Corrupt, truncated, lying or missing stored bytes: a clear error, nothing half-written published."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import zstandard

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, CorruptEntry
from stoker.agent.cache.blobs import encode_key
from tests.helpers.cache import open_local_cache, snapshot


@pytest.fixture
def saved(cache, tree: Path):
    cache.save("web/nm", tree, ["node_modules"])
    return cache


def _pointer(blobs_dir: Path, key: str) -> dict:
    return json.loads((blobs_dir / "keys" / encode_key(key)).read_text())


def _manifest(blobs_dir: Path, key: str) -> mf.Manifest:
    name = _pointer(blobs_dir, key)["manifest"]
    return mf.parse((blobs_dir / "manifests" / name).read_bytes(), where="test")


def _rewrite(blobs_dir: Path, key: str, manifest: mf.Manifest) -> None:
    data = mf.encode(manifest)
    name = hashlib.sha256(data).hexdigest()
    (blobs_dir / "manifests" / name).write_bytes(data)
    (blobs_dir / "keys" / encode_key(key)).write_text(json.dumps({"manifest": name, "content": "x"}))


def _big_frame_pack(blobs_dir: Path, key: str) -> tuple[Path, mf.Frame]:
    m = _manifest(blobs_dir, key)
    frame = max(m.frames, key=lambda f: f.raw_size)
    return blobs_dir / "packs" / frame.pack, frame


def _assert_clean_failure(tmp_path: Path, node, exc_info, workspace: Path) -> None:
    message = str(exc_info.value)
    assert "web/nm" in message
    assert not (workspace / "node_modules").exists()
    assert not list(workspace.glob(".stoker-staging-*")) if workspace.exists() else True
    assert node.inventory()[1] == []
    assert list((node.store.root / "staging").iterdir()) == []


def _restore_fresh(tmp_path: Path, name: str):
    node = open_local_cache(tmp_path, name=name)
    ws = tmp_path / f"ws-{name}"
    return node, ws


def test_truncated_pack(saved, tmp_path: Path) -> None:
    pack, frame = _big_frame_pack(tmp_path / "blobs", "web/nm")
    data = pack.read_bytes()
    pack.write_bytes(data[: frame.offset + frame.length // 2])
    node, ws = _restore_fresh(tmp_path, "n1")
    with pytest.raises(CorruptEntry, match="truncated") as info:
        node.restore("web/nm", [], ws, ["node_modules"])
    _assert_clean_failure(tmp_path, node, info, ws)


def test_corrupt_pack(saved, tmp_path: Path) -> None:
    pack, frame = _big_frame_pack(tmp_path / "blobs", "web/nm")
    data = bytearray(pack.read_bytes())
    for i in range(frame.offset + 100, frame.offset + frame.length - 100, 97):
        data[i] ^= 0x5A
    pack.write_bytes(bytes(data))
    node, ws = _restore_fresh(tmp_path, "n2")
    with pytest.raises(CorruptEntry) as info:
        node.restore("web/nm", [], ws, ["node_modules"])
    _assert_clean_failure(tmp_path, node, info, ws)


def test_frame_decompressing_past_declared_size(saved, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    m = _manifest(blobs, "web/nm")
    # A frame that really holds more than the manifest declares: shrink the declared size and the files.
    i = max(range(len(m.frames)), key=lambda j: m.frames[j].raw_size)
    frames = list(m.frames)
    frames[i] = mf.Frame(frames[i].pack, frames[i].offset, frames[i].length, frames[i].raw_size - 100)
    files = []
    for f in m.files:
        if any(c.frame == i for c in f.chunks):
            chunks = tuple(
                mf.Chunk(c.frame, c.raw_offset, min(c.raw_length, frames[c.frame].raw_size - c.raw_offset))
                for c in f.chunks
            )
            f = mf.FileEntry(
                f.path, f.type, f.mode, f.mtime_ns, sum(c.raw_length for c in chunks), f.digest, None, chunks
            )
        files.append(f)
    _rewrite(blobs, "web/nm", mf.Manifest(m.key, m.created, tuple(frames), tuple(files), m.roots))
    node, ws = _restore_fresh(tmp_path, "n3")
    with pytest.raises(CorruptEntry, match="declares") as info:
        node.restore("web/nm", [], ws, ["node_modules"])
    _assert_clean_failure(tmp_path, node, info, ws)


@pytest.mark.parametrize(
    "frame_digests, refused",
    [(False, "declares"), (True, "does not match its digest")],
    ids=["manifest-without-frame-digests", "frame-digest"],
)
def test_frame_lying_in_its_header_is_refused_before_allocating(
    saved, tmp_path: Path, frame_digests: bool, refused: str
) -> None:
    """A frame whose header declares more than the manifest: refused by its SHA-256 (version 4) or, in a
    manifest without frame digests (older versions), by the header check, before decompressing."""
    blobs = tmp_path / "blobs"
    if not frame_digests:
        _rewrite(blobs, "web/nm", mf.without_frame_digests(_manifest(blobs, "web/nm")))
    pack, frame = _big_frame_pack(blobs, "web/nm")
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (frame.raw_size + 4096))
    assert len(bomb) <= frame.length
    data = bytearray(pack.read_bytes())
    data[frame.offset : frame.offset + len(bomb)] = bomb
    pack.write_bytes(bytes(data))
    node, ws = _restore_fresh(tmp_path, "n4")
    with pytest.raises(CorruptEntry, match=refused) as info:
        node.restore("web/nm", [], ws, ["node_modules"])
    _assert_clean_failure(tmp_path, node, info, ws)


def _pair_victim_with_zero_digest(blobs: Path, *, frame_digests: bool) -> str:
    """Rewrite web/nm's manifest so that one file's digest names other bytes than its chunks hold."""
    m = _manifest(blobs, "web/nm")
    victim = next(f for f in m.files if f.path.endswith("pkg4/lib/f3.js"))
    files = tuple(
        mf.FileEntry(f.path, f.type, f.mode, f.mtime_ns, f.size, "0" * 64, None, f.chunks)
        if f is victim
        else f
        for f in m.files
    )
    lying = mf.Manifest(m.key, m.created, m.frames, files, m.roots)
    _rewrite(blobs, "web/nm", lying if frame_digests else mf.without_frame_digests(lying))
    return victim.path


def test_digest_mismatch_names_the_path(saved, tmp_path: Path) -> None:
    """Without frame digests (manifests before version 4) every file is checked against its digest."""
    _pair_victim_with_zero_digest(tmp_path / "blobs", frame_digests=False)
    node, ws = _restore_fresh(tmp_path, "n5")
    with pytest.raises(CorruptEntry, match="pkg4/lib/f3.js: content does not match its digest") as info:
        node.restore("web/nm", [], ws, ["node_modules"])
    _assert_clean_failure(tmp_path, node, info, ws)


def test_file_digest_lying_under_frame_digests_is_never_reused(saved, tmp_path: Path) -> None:
    """With frame digests the restore writes the bytes the manifest's frames name without hashing each
    file, so a file digest paired with other bytes goes unseen there — it is the entry's writer's word
    about its own entry. But such a pairing must never reach another entry: the record says its files
    were not checked, no save reuses its content by digest, and its ready tree (which partial restores
    match by digest) checks every file and refuses it."""
    victim = _pair_victim_with_zero_digest(tmp_path / "blobs", frame_digests=True)
    node, ws = _restore_fresh(tmp_path, "n5")
    node.ready_trees = 0  # no background refill racing the one below
    node.restore("web/nm", [], ws, ["node_modules"])
    record = node.store.lookup("web/nm")
    assert record is not None and not record.files_checked
    assert "0" * 64 not in node.saver._known.chunks(None)
    node.ready_trees = 1
    with pytest.raises(CorruptEntry, match=f"{victim}: content does not match its digest"):
        node.prepare_tree("web/nm")
    assert node.store.trees() == []
    assert not node.store.lookup("web/nm").files_checked


def test_missing_pack_names_entry_and_path(saved, tmp_path: Path) -> None:
    pack, _ = _big_frame_pack(tmp_path / "blobs", "web/nm")
    pack.unlink()
    node, ws = _restore_fresh(tmp_path, "n6")
    with pytest.raises(CorruptEntry, match=r"pack .* \(holding node_modules/.*\) is missing") as info:
        node.restore("web/nm", [], ws, ["node_modules"])
    _assert_clean_failure(tmp_path, node, info, ws)


def test_manifest_with_traversal_is_refused_before_writing(saved, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    m = _manifest(blobs, "web/nm")
    evil = mf.FileEntry("node_modules/../../evil", mf.DIR, 0o755, 1)
    data = json.loads(zstandard.ZstdDecompressor().decompress(mf.encode(m, version=1)))
    data["files"].append({"path": evil.path, "type": "dir", "mode": 0o755, "mtime_ns": 1})
    raw = zstandard.ZstdCompressor().compress(json.dumps(data).encode())
    name = hashlib.sha256(raw).hexdigest()
    (blobs / "manifests" / name).write_bytes(raw)
    (blobs / "keys" / encode_key("web/nm")).write_text(json.dumps({"manifest": name}))
    node, ws = _restore_fresh(tmp_path, "n7")
    with pytest.raises(CacheError, match="unsafe path") as info:
        node.restore("web/nm", [], ws, ["node_modules"])
    _assert_clean_failure(tmp_path, node, info, ws)
    assert not (tmp_path / "evil").exists()


def test_a_failed_restore_leaves_the_cache_serving_others(saved, tree: Path, tmp_path: Path) -> None:
    saved.save("other", tree, ["node_modules"])
    pack, _ = _big_frame_pack(tmp_path / "blobs", "web/nm")
    manifest_web = _manifest(tmp_path / "blobs", "web/nm")
    _rewrite(
        tmp_path / "blobs",
        "web/nm",
        mf.Manifest(
            manifest_web.key,
            manifest_web.created,
            tuple(mf.Frame("0" * 64, f.offset, f.length, f.raw_size) for f in manifest_web.frames),
            manifest_web.files,
            manifest_web.roots,
        ),
    )
    node, ws = _restore_fresh(tmp_path, "n8")
    with pytest.raises(CorruptEntry):
        node.restore("web/nm", [], ws, ["node_modules"])
    ok = node.restore("other", [], tmp_path / "ok", ["node_modules"])
    assert ok.restored_key == "other" and snapshot(tmp_path / "ok") == snapshot(tree)


@pytest.mark.parametrize("writer", ["compiled", "python-threads"])
def test_frame_swapped_for_another_valid_frame_is_caught_by_its_digest(tmp_path: Path, writer) -> None:
    """A frame replaced by another well-formed one of the same compressed and raw sizes (its zstd header
    and checksum valid) decompresses cleanly: only the frame's SHA-256 in the manifest catches it, before
    any file is cut from it (the files of a digest-checked frame are not hashed one by one)."""
    src = tmp_path / "src" / "node_modules"
    src.mkdir(parents=True)
    (src / "blob.bin").write_bytes(random_bytes := __import__("os").urandom(64 << 10))
    origin = open_local_cache(tmp_path, name="origin")
    origin.save("web/nm", src.parent, ["node_modules"])
    origin.close()
    blobs = tmp_path / "blobs"
    (frame,) = _manifest(blobs, "web/nm").frames
    assert frame.digest is not None
    other = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=True).compress(
        bytes(b ^ 0x5A for b in random_bytes)
    )
    assert len(other) == frame.length  # incompressible: raw blocks of the same size
    pack = blobs / "packs" / frame.pack
    data = bytearray(pack.read_bytes())
    data[frame.offset : frame.offset + frame.length] = other
    pack.write_bytes(bytes(data))
    node = open_local_cache(tmp_path, name="n7", writer=writer)
    ws = tmp_path / "ws-n7"
    with pytest.raises(CorruptEntry, match="does not match its digest") as info:
        node.restore("web/nm", [], ws, ["node_modules"])
    _assert_clean_failure(tmp_path, node, info, ws)
    node.close()
