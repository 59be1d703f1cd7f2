"""Fast restores: the compiled writer, forked writer processes (the Python writer), ready trees (warm and
partial), content sketches."""

from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path

import pytest

from stoker.agent.cache import hydrate, write_tasks
from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError
from stoker.agent.cache.writers import load_compiled
from stoker.common.sketch import pack as pack_sketch
from stoker.coordinator.placement.scheduler import similarity
from tests.helpers.cache import open_local_cache, snapshot


def _inodes(root: Path) -> set[tuple[int, int]]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out.add((st.st_dev, st.st_ino))
    return out


def test_killed_writer_process_fails_the_restore_and_publishes_nothing(
    cache, tree: Path, tmp_path: Path, monkeypatch
) -> None:
    cache.save("k", tree, ["node_modules"])
    # helpers are forked only by the Python writer
    node = open_local_cache(tmp_path, name="node", workers=2, writer="python-processes")
    node.ready_trees = 0
    node.fallback_to_threads = False
    parent = os.getpid()
    real = write_tasks.write_one

    def write_one(parents, f, data, umask):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # a helper dies mid-restore
        import time

        time.sleep(0.02)  # the caller goes slowly so the helper surely takes a task
        real(parents, f, data, umask)

    monkeypatch.setattr(write_tasks, "write_one", write_one)
    ws = tmp_path / "ws"
    with pytest.raises(CacheError, match="killed by signal 9"):
        node.restore("k", [], ws, ["node_modules"])
    assert not (ws / "node_modules").exists() and list(ws.iterdir()) == []
    assert node.inventory()[1] == []  # nothing committed either
    monkeypatch.setattr(write_tasks, "write_one", real)
    node.restore("k", [], ws, ["node_modules"])
    assert snapshot(ws) == snapshot(tree)
    node.close()


def test_a_crashed_writer_process_falls_back_to_threads(
    cache, tree: Path, tmp_path: Path, monkeypatch
) -> None:
    """In the agent a helper forked while gRPC's threads were busy died of SIGSEGV: the restore then
    writes with threads, correctly, and keeps to threads."""
    cache.save("k", tree, ["node_modules"])
    node = open_local_cache(tmp_path, name="node", workers=2, writer="python-processes")
    node.ready_trees = 0
    parent = os.getpid()
    real = write_tasks.write_one

    def write_one(parents, f, data, umask):
        if os.getpid() != parent:
            import faulthandler

            faulthandler.disable()  # a deliberate crash: keep pytest's fault handler from dumping a trace
            os.kill(os.getpid(), signal.SIGSEGV)
        import time

        time.sleep(0.02)
        real(parents, f, data, umask)

    monkeypatch.setattr(write_tasks, "write_one", write_one)
    ws = tmp_path / "ws"
    result = node.restore("k", [], ws, ["node_modules"])
    assert result.warmth == "cold" and snapshot(ws) == snapshot(tree)
    assert node.processes is False and not list(ws.glob(".stoker-staging-*"))
    assert [e.key for e in node.inventory()[1]] == ["k"]
    node.close()


@pytest.mark.parametrize("writer", ["compiled", "forked", "threaded"])
def test_every_writer_writes_the_same_tree(cache, tree: Path, tmp_path: Path, writer: str) -> None:
    assert load_compiled() is not None, (
        "the compiled writer (agent/cache/_fastio.c) is not built: reinstall with a C compiler "
        "(`.venv/bin/pip install -e .` runs gcc)"
    )
    kinds = {"compiled": "compiled", "forked": "python-processes", "threaded": "python-threads"}
    cache.save("k", tree, ["node_modules"])
    node = open_local_cache(tmp_path, name="node", workers=2, writer=kinds[writer])
    assert node.processes == (writer == "forked")
    node.ready_trees = 0
    result = node.restore("k", [], tmp_path / "ws", ["node_modules"])
    assert result.warmth == "cold" and result.files_restored > 0
    assert snapshot(tmp_path / "ws") == snapshot(tree)
    node.close()


def test_warm_restore_moves_a_ready_tree_that_shares_nothing_with_the_store(
    cache, tree: Path, tmp_path: Path
) -> None:
    cache.save("k", tree, ["node_modules"])
    node = open_local_cache(tmp_path, name="node")
    node.ready_trees = 1
    node.prewarm("k", [])
    assert node.prepare_tree("k")
    used_with_tree = node.disk_usage()[0]
    assert used_with_tree > sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())  # counted
    ws = tmp_path / "ws"
    result = node.restore("k", [], ws, ["node_modules"])
    assert result.warmth == "warm" and result.bytes_fetched == 0
    assert snapshot(ws) == snapshot(tree)
    assert node.store.trees() == [] or node.store.trees()[0].name  # claimed (a refill may be under way)
    node.close()  # stops the refill
    assert not _inodes(ws) & _inodes(tmp_path / "node")
    assert all(os.lstat(p).st_nlink == 1 for p in (ws / "node_modules").rglob("*") if p.is_file())
    # A build writes in place, as root could even into read-only files: the store does not see it.
    victim = ws / "node_modules/pkg1/lib/f2.js"
    victim.chmod(0o644)
    with open(victim, "r+b") as fh:
        fh.write(b"CORRUPTED BY THE BUILD")
    shutil.rmtree(ws / "node_modules/pkg3")
    node = open_local_cache(tmp_path, name="node")
    for ready in (False, True):
        if ready:  # a ready tree of "k" now (the refill thread the last restore started may have made it)
            assert node.prepare_tree("k") or node.store.tree_for("k", node.store.lookup("k").manifest)
        out = tmp_path / f"ws-again-{ready}"
        again = node.restore("k", [], out, ["node_modules"])
        assert again.warmth == "warm" and snapshot(out) == snapshot(tree)
    node.close()


def _variant(src: Path, dest: Path) -> Path:
    """``src``'s tree changed the ways a dependency update changes node_modules."""
    shutil.copytree(src, dest, symlinks=True)
    nm = dest / "node_modules"
    (nm / "added" / "lib").mkdir(parents=True)
    for i in range(5):
        (nm / "added" / "lib" / f"m{i}.js").write_text(f"module.exports = {i};\n" * 50)
    (nm / "pkg4/lib/f3.js").write_text("changed content\n")
    (nm / "pkg5/lib/f0.js").unlink()
    (nm / "pkg2/bin.js").chmod(0o700)  # mode only
    os.utime(nm / "pkg5/package.json", ns=(1_600_000_000_000_000_000,) * 2)  # mtime only
    os.unlink(nm / "alias")
    os.symlink("pkg4", nm / "alias")  # retargeted
    shutil.rmtree(nm / "pkg3" / "lib")
    (nm / "pkg3" / "lib").write_text("a directory became a file\n")
    (nm / "pkg1" / "lib").chmod(0o555)  # a read-only directory with a changed file inside
    (nm / "pkg1" / "lib" / "f0.js").chmod(0o644)
    return dest


def test_partial_restore_changes_only_what_differs_in_a_ready_tree(cache, tree: Path, tmp_path: Path) -> None:
    old = cache.save("web/nm-1", tree, ["node_modules"])
    newer = _variant(tree, tmp_path / "src-new")
    os.chmod(newer / "node_modules/pkg1/lib", 0o755)
    (newer / "node_modules/pkg1/lib/f0.js").write_text("new f0\n")
    os.chmod(newer / "node_modules/pkg1/lib", 0o555)
    cache.save("web/nm-2", newer, ["node_modules"])
    node = open_local_cache(tmp_path, name="node")
    node.prewarm("web/nm-1", [])
    assert node.prepare_tree("web/nm-1")
    ready_inodes = _inodes(tmp_path / "node" / "trees")
    ws = tmp_path / "ws"
    result = node.restore("web/nm-2", ["web/nm-"], ws, ["node_modules"])
    assert result.warmth == "partial" and result.restored_key == "web/nm-2"
    assert 0 < result.bytes_fetched < old.bytes_uploaded // 4
    assert snapshot(ws) == snapshot(newer)
    assert len(_inodes(ws) & ready_inodes) > 50  # unchanged files were moved, not written again
    node.close()
    os.chmod(newer / "node_modules/pkg1/lib", 0o755)
    os.chmod(ws / "node_modules/pkg1/lib", 0o755)


def _with_dir_mtimes(root: Path) -> dict[str, tuple]:
    """:func:`snapshot` plus every directory's mtime (which a restore also reproduces)."""
    out = snapshot(root)
    for rel, entry in out.items():
        if entry[0] == "dir":
            out[rel] = entry + (os.lstat(root / rel).st_mtime_ns,)
    return out


@pytest.mark.parametrize("diff", ["compiled", "python"])
@pytest.mark.parametrize("writer", ["compiled", "python-threads"])
def test_partial_restore_by_diff_gives_exactly_the_new_tree_when_every_mtime_changed(
    tmp_path: Path, writer: str, diff: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """npm stamps every file it extracts: a newer tree differs from the ready tree in every mtime (files,
    symlinks, directories) besides its added, removed, changed, retyped, re-moded and retargeted entries.
    The partial restore keeps the unchanged files' inodes and gives the workspace exactly the new tree
    (the compiled writer sets the mtimes in batches without the GIL; the Python writer one by one).
    Written from frames checked by their digests, the new entry is recorded as not yet checked file by
    file, until its ready tree is made. The comparison of the two trees runs in C or in Python."""
    if "compiled" in (writer, diff):
        assert load_compiled() is not None, (
            "the compiled writer (agent/cache/_fastio.c) is not built: install gcc and run ./scripts/setup.sh"
        )
    if diff == "python":
        monkeypatch.setattr(hydrate, "_compiled", None)
    from tests.helpers.cache import make_tree

    tree = make_tree(tmp_path / "src")
    origin = open_local_cache(tmp_path, name="origin")
    origin.save("web/nm-1", tree, ["node_modules"])
    newer = _variant(tree, tmp_path / "src-new")
    rng = random.Random(7)
    for dirpath, dirnames, filenames in os.walk(newer / "node_modules", topdown=False):
        for name in dirnames + filenames:
            t = 1_700_000_000_000_000_000 + rng.randrange(10**15)
            os.utime(os.path.join(dirpath, name), ns=(t, t), follow_symlinks=False)
    origin.save("web/nm-2", newer, ["node_modules"])
    origin.close()
    node = open_local_cache(tmp_path, name="node", writer=writer)  # type: ignore[arg-type]
    node.ready.stop()  # no background refills: trees are made here, in the foreground
    node.prewarm("web/nm-1", [])
    assert node.prepare_tree("web/nm-1")
    ready_inodes = _inodes(tmp_path / "node" / "trees")
    ws = tmp_path / "ws"
    result = node.restore("web/nm-2", ["web/nm-"], ws, ["node_modules"])
    assert result.warmth == "partial" and result.restored_key == "web/nm-2"
    assert _with_dir_mtimes(ws) == _with_dir_mtimes(newer)
    assert not (ws / "node_modules/pkg5/lib/f0.js").exists() and (ws / "node_modules/pkg3/lib").is_file()
    assert len(_inodes(ws) & ready_inodes) > 50  # unchanged files were moved, not written again
    record = node.store.lookup("web/nm-2")
    assert record is not None and not record.files_checked
    assert node.prepare_tree("web/nm-2")  # every file checked against its own digest
    assert node.store.lookup("web/nm-2").files_checked
    node.close()
    for root in (newer, ws):
        os.chmod(root / "node_modules/pkg1/lib", 0o755)


def test_ready_trees_are_crash_safe_and_give_way_to_entries(cache, tree: Path, tmp_path: Path) -> None:
    cache.save("k", tree, ["node_modules"])
    node = open_local_cache(tmp_path, name="node")
    node.prewarm("k", [])
    frames_only = node.disk_usage()[0]
    assert node.prepare_tree("k")
    node.close()
    root = tmp_path / "node"
    (root / "trees" / "orphan-tree").mkdir()  # killed between the rename and the record
    (root / "trees" / "orphan-tree" / "x").write_text("x")
    (root / "trees" / "stale.json").write_text('{"name": "stale", "key": "gone"}')
    node = open_local_cache(tmp_path, name="node")
    assert sorted(p.name for p in (root / "trees").iterdir()) == sorted(
        [t.name for t in node.store.trees()] + [t.name + ".json" for t in node.store.trees()]
    )
    assert len(node.store.trees()) == 1
    # A budget that holds the entry but not the tree as well: making room drops the tree, not the entry.
    node.store.budget_bytes = frames_only + 1024
    node.store.make_room(512, what="test")
    assert node.store.trees() == [] and [e.key for e in node.inventory()[1]] == ["k"]
    assert not node.prepare_tree("k")  # does not fit: never evicts an entry for a tree
    assert [e.key for e in node.inventory()[1]] == ["k"]
    node.close()


def _package_tree(root: Path, packages: int, files: int, *, extra: str | None = None) -> Path:
    rng = random.Random(7)
    nm = root / "node_modules"
    for p in range(packages):
        for f in range(files):
            path = nm / f"p{p}" / f"f{f}.js"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"// p{p} f{f} {rng.random()}\n")
    if extra:
        for f in range(files):
            (nm / extra).mkdir(parents=True, exist_ok=True)
            (nm / extra / f"f{f}.js").write_text(f"// {extra} {f}\n")
    return root


def test_sketches_estimate_the_shared_content_and_survive_a_restart(tmp_path: Path) -> None:
    a = _package_tree(tmp_path / "a", 40, 30)
    b = _package_tree(tmp_path / "b", 40, 30, extra="added")
    cache = open_local_cache(tmp_path, name="store")
    cache.save("a", a, ["node_modules"])
    cache.save("b", b, ["node_modules"])
    entries = {e.key: e for e in cache.inventory()[1]}
    sa, sb = entries["a"].sketch, entries["b"].sketch
    assert len(sa) == len(sb) == mf.SKETCH_K and list(sa) == sorted(sa) and all(0 <= v < 1 << 64 for v in sa)
    true_share = 1200 / 1230  # Jaccard of the distinct contents: 1,200 shared, 30 only in b
    estimate = similarity(pack_sketch(sa), pack_sketch(sb))  # packed, as the coordinator holds them
    assert estimate is not None and abs(estimate - true_share) < 0.06
    different = _package_tree(tmp_path / "c", 0, 30, extra="other")
    cache.save("c", different, ["node_modules"])
    assert (
        similarity(pack_sketch(sa), pack_sketch({e.key: e for e in cache.inventory()[1]}["c"].sketch)) == 0.0
    )
    cache.close()
    node = open_local_cache(tmp_path, name="node")  # restored entries carry the sketch too
    node.prewarm("b", [])
    assert {e.key: e for e in node.inventory()[1]}["b"].sketch == sb
    node.close()
    again = open_local_cache(tmp_path, name="store")
    assert {e.key: e.sketch for e in again.inventory()[1]}["a"] == sa
    again.close()


def test_unchanged_save_fast_path_still_sees_every_kind_of_change(
    cache, tree: Path, tmp_path: Path, monkeypatch
) -> None:
    from stoker.agent.cache import tree as tree_mod

    monkeypatch.setattr(tree_mod, "RACY_MARGIN_NS", 1_000_000)
    cache.save("k", tree, ["node_modules"])
    ws = tmp_path / "ws"
    cache.ready_trees = 0
    cache.restore("k", [], ws, ["node_modules"])
    import time

    time.sleep(0.01)
    assert not cache.save("k", ws, ["node_modules"]).saved
    victim = ws / "node_modules/pkg2/lib/f1.js"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))  # same size, mtime put back: only the ctime tells
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = cache.save("k", ws, ["node_modules"])
    assert changed.saved and changed.bytes_uploaded > 0
    time.sleep(0.01)
    assert not cache.save("k", ws, ["node_modules"]).saved
    (ws / "node_modules/pkg2/lib/f2.js").chmod(0o600)
    assert cache.save("k", ws, ["node_modules"]).saved
    time.sleep(0.01)
    os.utime(ws / "node_modules/pkg5", ns=(1, 1))
    assert cache.save("k", ws, ["node_modules"]).saved
    out = tmp_path / "out"
    open_local_cache(tmp_path, name="other").restore("k", [], out, ["node_modules"])
    assert snapshot(out) == snapshot(ws)


def test_a_background_ready_tree_stops_when_the_cache_closes(cache, tree: Path, tmp_path: Path) -> None:
    """With the compiled writer the ready tree is written by the refill thread: closing the cache stops it
    before it writes (so close() does not wait for a whole tree), and leaves nothing behind."""
    assert load_compiled() is not None, (
        "the compiled writer is not built: `.venv/bin/pip install -e .` builds it"
    )
    cache.save("k", tree, ["node_modules"])
    node = open_local_cache(tmp_path, name="node")
    node.ready_trees = 0  # the restore schedules no refill of its own
    node.restore("k", [], tmp_path / "ws", ["node_modules"])
    node.ready_trees = 1
    node.ready.closing = True
    with pytest.raises(write_tasks.Stopped):
        node.prepare_tree("k", background=True)
    assert list((node.store.root / "staging").iterdir()) == []
    node.ready.closing = False
    assert node.store.tree_for("k", node.store.lookup("k").manifest) is None
    assert node.prepare_tree("k", background=True)  # and it works when the cache is not closing
    assert node.store.tree_for("k", node.store.lookup("k").manifest) is not None
    node.close()
