"""Per-tenant caps in the blob store (issue 16, item 3), through the operator's command as a scheduled job
runs it (`stoker cache gc --blobs-only --tenant-budget …`): real saves into a file:// blob store, the
pointers' ages set on disk, then the GC and a restore of what is left."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from stoker.agent.cache.blobs import decode_key, encode_key
from stoker.agent.cache.cli import main
from tests.helpers.cache import open_local_cache

MB = 1 << 20
HOUR = 3600


def _tree(root: Path, seed: int, shared: bytes = b"") -> Path:
    (root / "deps").mkdir(parents=True)
    (root / "deps" / "own.bin").write_bytes(os.urandom(MB) + seed.to_bytes(4, "little"))
    if shared:
        (root / "deps" / "shared.bin").write_bytes(shared)
    return root


def _age(blobs: Path, key: str, hours: float) -> None:
    pointer = blobs / "keys" / encode_key(key)
    when = time.time() - hours * HOUR
    os.utime(pointer, (when, when))


def _keys(blobs: Path) -> set[str]:
    return {decode_key(p.name) for p in (blobs / "keys").rglob("*") if p.is_file()}


def test_a_tenant_past_its_cap_loses_its_own_oldest_entries_pull_requests_first(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    blobs = tmp_path / "blobs"
    monkeypatch.setenv("STOKER_AGENT_CACHE_BLOBS", f"file://{blobs}")
    cache = open_local_cache(tmp_path, blobs=blobs)
    shared = os.urandom(MB)
    # (key, hours since it was saved). web: main's two entries, an old and a young pull request's;
    # evil: four entries of its own; an unscoped key (no tokens) has no cap.
    saves = {
        "~web/protected/deps-1": 50,
        "~web/protected/deps-2": 40,
        "~web/untrusted/pr-7/deps-x": 30,
        "~web/untrusted/pr-9/deps-y": 0.1,
        "~evil/protected/a": 60,
        "~evil/protected/b": 45,
        "~evil/protected/c": 35,
        "~evil/untrusted/pr-1/d": 20,
        "plain/deps": 100,
    }
    for i, key in enumerate(saves):
        cache.save(
            key, _tree(tmp_path / f"t{i}", i, shared if key.startswith("~web/protected/") else b""), ["deps"]
        )
    cache.close()
    old = time.time() - 2 * HOUR  # every pack and manifest older than the grace period, as after a day
    for path in (*(blobs / "packs").iterdir(), *(blobs / "manifests").iterdir()):
        os.utime(path, (old, old))
    for key, hours in saves.items():
        _age(blobs, key, hours)

    # The cap: 2.5 MB each, 6 MB for web. web holds 2 own + 1 shared MB in main's entries and 2 in its pull
    # requests': 5 MB, within. evil holds 4 MB: its pull request's entry goes first, then its oldest.
    argv = ["--json", "gc", "--blobs-only", "--blobs-grace-hours", "1", "--tenant-budget", "2.5M"]
    assert main([*argv, "--tenant-budget", "web=6M", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert _keys(blobs) == set(saves)  # a dry run deletes nothing
    tenants = {t["tenant"]: t for t in dry["tenants"]}
    assert tenants["evil"]["evicted"] == ["~evil/untrusted/pr-1/d", "~evil/protected/a"], tenants
    assert tenants["web"]["evicted"] == [] and 5 * MB < tenants["web"]["bytes_before"] < 6 * MB, tenants
    assert dry["blobs_deleted"] >= 2  # the evicted entries' own packs (and manifests) would go

    # Now web's cap is 3.5 MB (main's entries alone hold 3 MB and a little): its pull requests' entries
    # go before main's, and the young one may not go at all (saved within the grace period), so web stays
    # over its cap, saying so, and main's entries stay: a pull request's saves never evict the entries main
    # warms it from.
    assert main([*argv, "--tenant-budget", "web=3.5M"]) == 0
    out = json.loads(capsys.readouterr().out)
    tenants = {t["tenant"]: t for t in out["tenants"]}
    assert tenants["web"]["evicted"] == ["~web/untrusted/pr-7/deps-x"], tenants
    assert tenants["web"]["over_budget_young_entries"] == 1 and tenants["web"]["bytes_after"] > 3.5 * MB
    assert tenants["evil"]["evicted"] == ["~evil/untrusted/pr-1/d", "~evil/protected/a"]
    assert tenants["evil"]["bytes_after"] <= 2.5 * MB
    assert _keys(blobs) == set(saves) - {
        "~web/untrusted/pr-7/deps-x",
        "~evil/untrusted/pr-1/d",
        "~evil/protected/a",
    }
    assert out["blobs_deleted"] >= 3

    # What is left restores on a fresh node: the sweep kept every frame a remaining entry uses (main's two
    # entries share one), and evicted keys are simply gone.
    node = open_local_cache(tmp_path, name="fresh", blobs=blobs)
    for key in ("~web/protected/deps-1", "~web/protected/deps-2", "~evil/protected/c", "plain/deps"):
        assert node.restore(key, [], tmp_path / "ws" / key.replace("/", "_"), ["deps"]).restored_key == key
    assert node.restore("~evil/protected/a", [], tmp_path / "ws" / "gone", ["deps"]).restored_key is None
    node.close()

    # Human output: one line per capped tenant.
    assert main(["gc", "--blobs-only", "--blobs-grace-hours", "1", "--tenant-budget", "web=3.5M"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "TENANT\tCAP\tBEFORE\tAFTER\tEVICTED\tOVER CAP, TOO YOUNG" in lines
    assert any(line.startswith("web\t3.7 MB\t") and line.endswith("\t0\t1") for line in lines), lines


def test_gc_without_a_grace_period_or_with_a_bad_size_says_what_to_give(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("STOKER_AGENT_CACHE_BLOBS", f"file://{tmp_path / 'blobs'}")
    assert main(["gc", "--blobs-only"]) == 2
    assert "--blobs-grace-hours" in capsys.readouterr().err
    try:
        main(["gc", "--blobs-only", "--blobs-grace-hours", "1", "--tenant-budget", "web=lots"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "'lots' is not a size" in capsys.readouterr().err
