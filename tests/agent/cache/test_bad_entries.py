"""A restore skips bad candidates and marks them (issue 16, item 2), against the real store on a temp dir
and a blob directory (the fleet test does it over SeaweedFS)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stoker.agent.cache.api import CorruptEntry
from stoker.agent.cache.blobs import encode_key
from stoker.agent.cache.local_blobs import LocalBlobStore
from stoker.agent.cache.maintenance import gc_blobs
from tests.helpers.cache import make_tree, open_local_cache, snapshot

PATHS = ["node_modules"]


def _pack_of(blobs: Path) -> list[Path]:
    return sorted((blobs / "packs").iterdir(), key=lambda p: p.stat().st_mtime_ns)


def test_a_bad_exact_key_falls_back_to_the_prefixes_and_is_not_chosen_again(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    saver = open_local_cache(tmp_path, name="saver")
    good = make_tree(tmp_path / "good", seed=1, packages=4, files_per_package=3, big_bytes=1 << 16)
    saver.save("web/nm-1", good, PATHS)
    before = set(_pack_of(blobs))
    bad = make_tree(tmp_path / "bad", seed=2, packages=4, files_per_package=3, big_bytes=1 << 16)
    saver.save("web/nm-2", bad, PATHS)
    saver.close()
    for pack in set(_pack_of(blobs)) - before:
        pack.unlink()  # the exact key's own content is gone from the blob store

    node = open_local_cache(tmp_path, name="node")
    ws = tmp_path / "ws1"
    result = node.restore("web/nm-2", ["web/nm-"], ws, PATHS)
    assert result.restored_key == "web/nm-1" and result.warmth == "partial", result
    assert [s.key for s in result.skipped] == ["web/nm-2"] and "is missing" in result.skipped[0].reason
    assert snapshot(ws / "node_modules") == snapshot(good / "node_modules")
    # The same node does not fetch it again; a missing pack is every reader's fault: shared.
    gets = node.blobs.stats.gets
    again = node.restore("web/nm-2", ["web/nm-"], tmp_path / "ws2", PATHS)
    assert again.restored_key == "web/nm-1"
    assert [s.reason for s in again.skipped] == [f"marked bad on this node: {result.skipped[0].reason}"]
    assert node.blobs.stats.gets - gets <= 1  # the key pointer only: no manifest, no pack
    node.close()
    marks = list((blobs / "bad" / encode_key("web/nm-2")).iterdir())
    assert len(marks) == 1 and marks[0].name.endswith(".all"), marks
    gc_blobs(LocalBlobStore(blobs), grace_s=0, now=time.time())  # the key still names the marked manifest
    assert list((blobs / "bad" / encode_key("web/nm-2")).iterdir()) == marks
    # After a restart too (marks persist), and another node skips it on the shared mark.
    reopened = open_local_cache(tmp_path, name="node")
    assert (
        "marked bad on this node"
        in reopened.restore("web/nm-2", ["web/nm-"], tmp_path / "ws3", PATHS).skipped[0].reason
    )
    reopened.close()
    other = open_local_cache(tmp_path, name="other")
    assert (
        other.restore("web/nm-2", ["web/nm-"], tmp_path / "ws4", PATHS).skipped[0].reason
        == "marked bad by another node"
    )
    # The key's next save repairs it: a new manifest, which no mark names.
    other.save("web/nm-2", make_tree(tmp_path / "next", seed=3, packages=4, files_per_package=3), PATHS)
    fixed = other.restore("web/nm-2", [], tmp_path / "ws5", PATHS)
    assert fixed.restored_key == "web/nm-2" and not fixed.skipped
    # The blob store's GC drops the mark then (the key names another manifest), not before.
    assert gc_blobs(other.blobs, grace_s=0, now=time.time(), dry_run=True)[0] >= 1
    gc_blobs(other.blobs, grace_s=0, now=time.time())
    assert not list((blobs / "bad" / encode_key("web/nm-2")).iterdir())
    other.close()


def test_a_byte_mismatch_is_marked_on_this_node_only_and_lapses(tmp_path: Path) -> None:
    """Bytes that do not match may have been damaged on the way: no shared mark, and the mark lapses."""
    blobs = tmp_path / "blobs"
    saver = open_local_cache(tmp_path, name="saver")
    saver.save(
        "web/nm-1", make_tree(tmp_path / "src", packages=4, files_per_package=2, big_bytes=1 << 16), PATHS
    )
    saver.close()
    for pack in (blobs / "packs").iterdir():
        data = bytearray(pack.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pack.write_bytes(bytes(data))
    node = open_local_cache(tmp_path, name="node")
    with pytest.raises(CorruptEntry) as first:  # the only candidate: its error, with the skipped entries
        node.restore("web/nm-1", [], tmp_path / "ws1", PATHS)
    assert "web/nm-1" in str(first.value) and [s.key for s in first.value.skipped] == ["web/nm-1"]
    assert not (blobs / "bad").exists()
    assert (
        "marked bad on this node" in node.restore("web/nm-1", [], tmp_path / "ws2", PATHS).skipped[0].reason
    )
    node.bad._clock = lambda: 10**12  # past the lapse
    with pytest.raises(CorruptEntry) as again:  # tried (and failing) again
        node.restore("web/nm-1", [], tmp_path / "ws3", PATHS)
    assert "web/nm-1" in str(again.value)
    node.close()
