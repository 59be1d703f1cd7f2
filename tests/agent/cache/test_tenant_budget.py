"""Per-tenant budgets in the node's store (issue 16, item 3: ``cache.tenant_budget_bytes``): a tenant's
saves evict its own entries first, and another tenant's saves cannot evict a victim's entries below its
budget. The real store on a temp dir and a blob directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stoker.agent.cache.api import CacheError
from stoker.agent.cache.content_cache import ContentCache
from stoker.agent.cache.local_blobs import LocalBlobStore
from stoker.agent.cache.store import LocalStore

MB = 1 << 20


def _tree(root: Path, seed: int) -> Path:
    (root / "deps").mkdir(parents=True)
    (root / "deps" / "blob.bin").write_bytes(os.urandom(MB) + seed.to_bytes(4, "little"))
    return root


def _cache(tmp_path: Path, tenant_budget: int) -> ContentCache:
    store = LocalStore(tmp_path / "store", 5 * MB + MB // 2, tenant_budget_bytes=tenant_budget)
    cache = ContentCache(store, LocalBlobStore(tmp_path / "blobs"), workers=2, ready_trees=0)
    cache.open()
    return cache


def _held(cache: ContentCache) -> list[str]:
    return [e.key for e in cache.inventory()[1]]


@pytest.mark.parametrize("tenant_budget", [0, 2 * MB + MB // 2])
def test_another_tenant_cannot_evict_a_victim_below_its_budget(tmp_path: Path, tenant_budget: int) -> None:
    cache = _cache(tmp_path, tenant_budget)
    victim = ["~web/protected/deps-1", "~web/protected/deps-2"]
    for i, key in enumerate(victim):
        cache.save(key, _tree(tmp_path / f"w{i}", i), ["deps"])
    # Another tenant saves more than the whole store holds.
    other = [f"~evil/untrusted/x/deps-{i}" for i in range(6)]
    for i, key in enumerate(other):
        try:
            cache.save(key, _tree(tmp_path / f"e{i}", 100 + i), ["deps"])
        except CacheError as exc:  # no room on the node: it says why (the blob store holds the entry)
            assert tenant_budget and "tenant budgets" in str(exc), exc
    held = _held(cache)
    if tenant_budget:
        assert set(victim) <= set(held), held  # kept: evicting either would leave web below its budget
        assert [k for k in held if k.startswith("~evil/")] == other[-3:], held
        # A restore of evil's that finds no room fails, saying why; web's entries stay.
        cache.evict(other[-1])
        cache.save("~evil/untrusted/x/big", _tree(tmp_path / "big", 7), ["deps"])
        with pytest.raises(CacheError, match="tenant budgets"):
            cache.store.make_room(5 * MB, what="a restore", for_key="~evil/untrusted/x/big")
        assert set(victim) <= set(_held(cache))
    else:  # one LRU for all (the default): the victim's entries, the oldest, went first
        assert not set(victim) & set(held), held
    cache.close()


def test_a_tenants_saves_evict_its_own_entries_first(tmp_path: Path) -> None:
    cache = _cache(tmp_path, 2 * MB)
    cache.save("~evil/protected/old", _tree(tmp_path / "e", 1), ["deps"])  # the least recently used
    cache.save("~evil/protected/old2", _tree(tmp_path / "e2", 2), ["deps"])
    for i in range(5):
        cache.save(f"~web/protected/deps-{i}", _tree(tmp_path / f"w{i}", 10 + i), ["deps"])
    held = _held(cache)
    # web's newest saves evicted web's own oldest, not evil's older entries (evil is within its budget).
    assert {"~evil/protected/old", "~evil/protected/old2"} <= set(held), held
    assert "~web/protected/deps-4" in held and "~web/protected/deps-0" not in held, held
    cache.close()
