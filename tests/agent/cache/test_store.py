"""The local store: budget and LRU eviction, shared content counted once, inventory, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stoker.agent.cache.store import EntryRecord, LocalFrame, StoreIndex
from tests.helpers.cache import make_tree, open_local_cache, snapshot


def test_index_counts_shared_files_once_and_picks_lru() -> None:
    index = StoreIndex()
    shared = {("p", 0): LocalFrame("f-shared", 0, 100)}
    a = EntryRecord("a", "m1", created=1, last_used=10, bytes=0, files=0, frames=dict(shared))
    b = EntryRecord(
        "b",
        "m2",
        created=2,
        last_used=5,
        bytes=0,
        files=0,
        frames={**shared, ("q", 0): LocalFrame("f-b", 0, 50)},
    )
    index.add(a, {"f-shared": 100}, 10)
    index.add(b, {"f-shared": 100, "f-b": 50}, 10)
    assert index.used_bytes() == 100 + 50 + 20
    assert index.freed_by(["b"]) == 50 + 10
    assert index.victims(0, 170, set()) == []
    assert index.victims(40, 170, set()) == ["b"]  # least recently used first
    assert index.victims(40, 170, {"b"}) is None  # a alone frees only its manifest
    assert index.victims(200, 170, set()) is None
    garbage = index.remove("b")
    assert sorted(garbage) == ["f-b", "manifest:m2"]
    assert index.locate(("p", 0)) == LocalFrame("f-shared", 0, 100)
    assert index.locate(("q", 0)) is None


def test_budget_evicts_least_recently_used(tmp_path: Path) -> None:
    src = tmp_path / "src"
    writer = open_local_cache(tmp_path, name="writer")
    sizes = {}
    for i in range(3):
        make_tree(src / str(i), seed=i + 10, big_bytes=1 << 20)
        writer.save(f"k{i}", src / str(i), ["node_modules"])
    probe = open_local_cache(tmp_path, name="probe")
    for i in range(3):
        probe.prewarm(f"k{i}", [])
        sizes[i] = probe.disk_usage()[0] - sum(sizes.values())
    probe.close()
    budget = sizes[0] + sizes[1] + sizes[2] // 2
    node = open_local_cache(tmp_path, name="node", budget=budget)
    events = []
    node.subscribe(lambda gen, up, rm: events.append((gen, [e.key for e in up], list(rm))))
    node.prewarm("k0", [])
    node.prewarm("k1", [])
    node.restore("k0", [], tmp_path / "ws", ["node_modules"])  # k0 is now more recent than k1
    node.prewarm("k2", [])
    gen, entries = node.inventory()
    assert [e.key for e in entries] == ["k0", "k2"]
    assert node.evicted_bytes_total > 0 and node.disk_usage()[0] <= budget
    assert any(rm == ["k1"] for _, _, rm in events)
    assert [g for g, _, _ in events] == list(range(events[0][0], events[0][0] + len(events)))
    assert gen == events[-1][0]


def test_open_drops_half_written_state(tmp_path: Path, tree: Path) -> None:
    node = open_local_cache(tmp_path, name="node")
    node.save("k", tree, ["node_modules"])
    node.close()
    root = tmp_path / "node"
    (root / "staging" / "leftover").mkdir()
    (root / "staging" / "leftover" / "x").write_bytes(b"half")
    (root / "frames" / "f-orphan").write_bytes(b"orphan")
    (root / "manifests" / ("0" * 64)).write_bytes(b"orphan")
    (root / "entries" / ("1" * 64)).write_bytes(b'{"key": "broken"')
    node = open_local_cache(tmp_path, name="node")
    assert [e.key for e in node.inventory()[1]] == ["k"]
    assert list((root / "staging").iterdir()) == []
    assert not (root / "frames" / "f-orphan").exists() and not (root / "manifests" / ("0" * 64)).exists()
    assert not (root / "entries" / ("1" * 64)).exists()
    # A record whose frames are gone is not served either.
    for f in (root / "frames").iterdir():
        f.unlink()
    node.close()
    node = open_local_cache(tmp_path, name="node")
    assert node.inventory()[1] == []
    node.close()


_CHILD = r"""
import sys, time
from pathlib import Path
from tests.helpers.cache import open_local_cache
tmp = Path(sys.argv[1])
node = open_local_cache(tmp, name="node", budget=int(sys.argv[2]))
print("ready", flush=True)
i = 0
while True:
    key = f"k{i % 3}"
    node.evict(key) if i % 4 == 3 else node.restore(key, [], tmp / f"ws{i}", ["node_modules"])
    i += 1
"""


def test_kill_9_at_any_point_leaves_only_complete_entries(tmp_path: Path) -> None:
    writer = open_local_cache(tmp_path, name="writer")
    for i in range(3):
        make_tree(tmp_path / "src" / str(i), seed=i, packages=4, big_bytes=2 << 20)
        writer.save(f"k{i}", tmp_path / "src" / str(i), ["node_modules"])
    writer.close()
    budget = 9 << 20  # about two entries: restores evict as they go
    for delay in (0.15, 0.35, 0.6, 0.9):
        # `python -c` puts its working directory first on sys.path: the repository, for tests.helpers.
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path), str(budget)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        node = open_local_cache(tmp_path, name="node", budget=budget)
        assert list((tmp_path / "node" / "staging").iterdir()) == []
        for entry in node.inventory()[1]:
            out = tmp_path / f"check-{delay}-{entry.key}"
            result = node.restore(entry.key, [], out, ["node_modules"])
            assert result.warmth == "warm"
            assert snapshot(out) == snapshot(tmp_path / "src" / entry.key[1:])
        held = {f.name for f in (tmp_path / "node" / "frames").iterdir()}
        assert held == set(node.store.index.file_sizes)
        node.close()
