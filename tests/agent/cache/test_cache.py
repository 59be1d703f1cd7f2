"""Save and restore through a local blob store: round trips, warmth, only-what-changed, unsafe trees."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stoker.agent.cache import tree as tree_mod
from stoker.agent.cache.api import CacheError, Progress, UnsafeTree
from stoker.agent.runner import CacheCollector
from tests.helpers.cache import make_tree, open_local_cache, snapshot


def test_round_trip_reproduces_tree_exactly(cache, tree: Path, tmp_path: Path) -> None:
    seen: list[Progress] = []
    saved = cache.save("web/nm-1", tree, ["node_modules"])
    assert saved.saved and saved.bytes_uploaded > 0 and saved.files > 70
    cold = open_local_cache(tmp_path, name="store2")
    result = cold.restore("web/nm-1", [], tmp_path / "ws", ["node_modules"], seen.append)
    assert result.warmth == "cold" and result.restored_key == "web/nm-1"
    assert result.bytes_fetched > 0 and result.files_restored == saved.files
    assert snapshot(tmp_path / "ws") == snapshot(tree)
    assert seen and seen[-1].files_done == seen[-1].files_total == saved.files
    assert not list((tmp_path / "ws").glob(".stoker-staging-*"))
    again = cold.restore("web/nm-1", [], tmp_path / "ws", ["node_modules"])  # replaces the old tree
    assert again.warmth == "warm" and again.bytes_fetched == 0
    assert snapshot(tmp_path / "ws") == snapshot(tree)
    cold.close()


def test_unchanged_save_uploads_nothing_and_skips_hashing(cache, tree: Path, monkeypatch) -> None:
    time.sleep(2 * tree_mod.RACY_MARGIN_NS / 1e9)  # files written just before a save are rehashed (racy)
    cache.save("k", tree, ["node_modules"])
    hashed: list[str] = []
    real = tree_mod.hash_file
    monkeypatch.setattr(tree_mod, "hash_file", lambda ws, w: hashed.append(w.path) or real(ws, w))
    before = cache.blobs.stats.puts
    again = cache.save("k", tree, ["node_modules"])
    assert not again.saved and again.bytes_uploaded == 0 and cache.blobs.stats.puts == before
    assert hashed == []
    other_key = cache.save("k2", tree, ["node_modules"])
    assert other_key.saved and other_key.bytes_uploaded < 20_000  # manifest and pointer only


def test_restored_workspace_saves_without_rehashing(cache, tree, tmp_path, monkeypatch) -> None:
    # Files written from frames by this restore (a ready tree unpacked in the background a few ms
    # earlier would be all "racily clean", and rightly rehashed). Restoring this small tree takes a few
    # ms with forked writers, all inside the default 20 ms racy margin: narrow it for this test.
    cache.ready_trees = 0
    monkeypatch.setattr(tree_mod, "RACY_MARGIN_NS", 1_000_000)
    cache.save("k", tree, ["node_modules"])
    ws = tmp_path / "ws"
    cache.restore("k", [], ws, ["node_modules"])
    (ws / "node_modules/pkg4/lib/f1.js").write_text("changed\n")
    hashed: list[str] = []
    real = tree_mod.hash_file
    monkeypatch.setattr(tree_mod, "hash_file", lambda ws, w: hashed.append(w.path) or real(ws, w))
    result = cache.save("k-next", ws, ["node_modules"])
    assert result.saved and 0 < result.bytes_uploaded < 30_000
    changed = set(hashed)
    assert "node_modules/pkg4/lib/f1.js" in changed
    # Only the changed file and the ones restored within the racy margin may be rehashed.
    assert len(changed) < result.files // 2


def test_changed_package_moves_only_changed_bytes(cache, tree: Path, tmp_path: Path) -> None:
    cache.save("k-1", tree, ["node_modules"])
    node = open_local_cache(tmp_path, name="node")
    node.restore("k-1", [], tmp_path / "ws1", ["node_modules"])
    new_pkg = tree / "node_modules" / "added"
    new_pkg.mkdir()
    (new_pkg / "index.js").write_text("module.exports = 42;\n" * 500)
    saved = cache.save("k-2", tree, ["node_modules"])
    assert saved.bytes_uploaded < 5_000 + 2_000  # the new package compressed, the manifest, the pointer
    result = node.restore("k-2", [], tmp_path / "ws2", ["node_modules"])
    assert result.warmth == "partial" and result.bytes_fetched < 1_000
    assert snapshot(tmp_path / "ws2") == snapshot(tree)
    node.close()


def test_restore_key_prefix_takes_newest_local_first(cache, tree: Path, tmp_path: Path) -> None:
    cache.save("web/nm-a", tree, ["node_modules"])
    (tree / "node_modules/pkg1/lib/f0.js").write_text("v2\n")
    cache.save("web/nm-b", tree, ["node_modules"])
    local = cache.restore("web/nm-missing", ["other-", "web/nm-"], tmp_path / "ws", ["node_modules"])
    assert local.warmth == "partial" and local.restored_key == "web/nm-b"
    fresh = open_local_cache(tmp_path, name="fresh")
    remote = fresh.restore("web/nm-missing", ["web/nm-"], tmp_path / "ws2", ["node_modules"])
    assert remote.warmth == "partial" and remote.restored_key == "web/nm-b" and remote.bytes_fetched > 0
    assert (tmp_path / "ws2/node_modules/pkg1/lib/f0.js").read_text() == "v2\n"
    nothing = fresh.restore("absent", ["nope-"], tmp_path / "ws3", ["node_modules"])
    assert (nothing.warmth, nothing.restored_key) == ("cold", None)
    assert not (tmp_path / "ws3/node_modules").exists()
    fresh.close()


def test_prewarm_fetches_without_materializing(cache, tree: Path, tmp_path: Path) -> None:
    cache.save("k", tree, ["node_modules"])
    node = open_local_cache(tmp_path, name="node")
    warm = node.prewarm("k", [])
    assert warm.warmth == "cold" and warm.bytes_fetched > 0
    assert [e.key for e in node.inventory()[1]] == ["k"]
    assert node.restore("k", [], tmp_path / "ws", ["node_modules"]).warmth == "warm"
    node.close()


def test_refuses_special_files_and_escaping_symlinks(cache, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "nm").mkdir(parents=True)
    os.mkfifo(ws / "nm" / "fifo")
    with pytest.raises(UnsafeTree, match="nm/fifo: is a FIFO"):
        cache.save("k", ws, ["nm"])
    os.unlink(ws / "nm" / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(ws / "nm" / "sock"))
        with pytest.raises(UnsafeTree, match="nm/sock: is a socket"):
            cache.save("k", ws, ["nm"])
    os.unlink(ws / "nm" / "sock")
    for target in ("../../etc/passwd", "/etc/passwd", "../outside"):
        os.symlink(target, ws / "nm" / "bad")
        with pytest.raises(UnsafeTree, match="nm/bad: symlink"):
            cache.save("k", ws, ["nm"])
        os.unlink(ws / "nm" / "bad")
    with pytest.raises(CacheError):
        cache.save("k", ws, ["../x"])
    assert cache.inventory()[1] == []


def test_restore_does_not_follow_a_workspace_symlink(cache, tree: Path, tmp_path: Path) -> None:
    make_tree(tmp_path / "src2")
    shutil.move(tmp_path / "src2" / "node_modules", tmp_path / "src2" / "sub")
    (tmp_path / "src2" / "pkgs").mkdir()
    shutil.move(tmp_path / "src2" / "sub", tmp_path / "src2" / "pkgs" / "nm")
    cache.save("k", tmp_path / "src2", ["pkgs/nm"])
    ws = tmp_path / "ws"
    ws.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ws / "pkgs")
    with pytest.raises(UnsafeTree, match="pkgs"):
        cache.restore("k", [], ws, ["pkgs/nm"])
    assert list(outside.iterdir()) == []


def test_a_restore_only_build_restores_from_a_directory_blob_store(cache, tree: Path, tmp_path: Path) -> None:
    """No key of its own, only a prefix (issue 17, item 4): it failed with "cannot read keys/: Is a
    directory" on a file:// blob store, looking up the empty key's pointer."""
    cache.save("web/nm-a", tree, ["node_modules"])
    fresh = open_local_cache(tmp_path, name="fresh")
    got = fresh.restore("", ["web/nm-"], tmp_path / "ws", ["node_modules"])
    assert got.warmth == "partial" and got.restored_key == "web/nm-a"
    assert snapshot(tmp_path / "ws" / "node_modules") == snapshot(tree / "node_modules")
    fresh.close()


def test_a_key_in_another_scope_is_an_exact_hit_before_any_prefix(cache, tree: Path, tmp_path: Path) -> None:
    """A pull request's build reads main's entry of its very key (also_exact) before any prefix, and from
    main's ready tree when the node has one (issue 16, item 2)."""
    cache.save("~web/protected/web/nm-a", tree, ["node_modules"])
    cache.save("~web/untrusted/pull/1/web/nm-old", tree, ["node_modules"])
    got = cache.restore(
        "~web/untrusted/pull/2/web/nm-a",
        ["~web/untrusted/pull/2/web/nm-", "~web/protected/web/nm-"],
        tmp_path / "ws",
        ["node_modules"],
        also_exact=["~web/protected/web/nm-a"],
    )
    assert got.restored_key == "~web/protected/web/nm-a" and got.warmth in ("warm", "cold"), got
    assert snapshot(tmp_path / "ws" / "node_modules") == snapshot(tree / "node_modules")
    fresh = open_local_cache(tmp_path, name="fresh")  # from the blob store
    remote = fresh.restore(
        "~web/untrusted/pull/2/web/nm-a", [], tmp_path / "ws2", ["node_modules"],
        also_exact=["~web/protected/web/nm-a"],
    )  # fmt: skip
    assert remote.restored_key == "~web/protected/web/nm-a" and remote.bytes_fetched > 0
    fresh.close()


def test_the_store_and_its_disk_are_exported_as_the_cache_dashboard_reads_them(
    tmp_path: Path, tree: Path
) -> None:
    """The cache dashboard's used/budget and evictions panels, and the disk-nearly-full alert, read these."""
    cache = open_local_cache(tmp_path, budget=1 << 30)
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache, tmp_path / "store", 1 << 30))
    metric = registry.get_sample_value
    assert metric("stoker_agent_cache_used_bytes") == 0
    assert metric("stoker_agent_cache_budget_bytes") == 1 << 30
    cache.save("web/nm-1", tree, ["node_modules"])
    used = metric("stoker_agent_cache_used_bytes")
    assert used is not None and used > 0
    assert cache.evict("web/nm-1")
    assert metric("stoker_agent_cache_used_bytes") == 0
    assert metric("stoker_agent_cache_evicted_bytes_total") == used
    fs = os.statvfs(tmp_path)
    assert metric("stoker_agent_disk_size_bytes") == fs.f_blocks * fs.f_frsize
    available = metric("stoker_agent_disk_available_bytes")
    assert available is not None and 0 < available <= fs.f_blocks * fs.f_frsize
    cache.close()
