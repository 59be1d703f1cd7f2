"""The object store fails: a fault-injecting proxy in front of a real S3 server (SeaweedFS).

5xx answers, connection resets (before the answer and in the middle of a body), slow answers past the
read timeout, and flipped bytes. A restore retries with backoff and then succeeds with every byte right, or
fails with a clear error and publishes nothing; it never yields a wrong file.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest

from stoker.agent.cache.api import BlobStoreUnavailable, CacheError
from stoker.agent.cache.content_cache import ContentCache
from stoker.agent.cache.s3_blobs import S3BlobStore
from stoker.agent.cache.store import LocalStore
from tests.helpers.s3_fault_proxy import Rule

pytestmark = [pytest.mark.integration, pytest.mark.fault]

KEY = "web/deps-1"
MAX_ATTEMPTS = 4


def make_tree(root: Path) -> dict[str, bytes]:
    rng = random.Random(42)
    files = {"out/big.bin": rng.randbytes(3 << 20)}
    for i in range(200):
        files[f"out/small/f{i:03d}.txt"] = rng.randbytes(rng.randrange(1, 20_000))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def open_cache(path: Path, endpoint: str, bucket: str) -> ContentCache:
    blobs = S3BlobStore(
        bucket,
        "cache",
        endpoint_url=endpoint,
        region="us-east-1",
        connect_timeout=1,
        read_timeout=1,
        max_attempts=MAX_ATTEMPTS,
    )
    cache = ContentCache(LocalStore(path, 1 << 30), blobs, workers=2, fetch_concurrency=2)
    cache.open()
    return cache


@pytest.fixture
def saved(tmp_path, fault_proxy):
    """An entry saved through the proxy (no faults yet); returns (bucket, the files' bytes)."""
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    S3BlobStore(bucket, endpoint_url=fault_proxy.endpoint, region="us-east-1").create_bucket()
    src = tmp_path / "src"
    files = make_tree(src)
    saver = open_cache(tmp_path / "saver", fault_proxy.endpoint, bucket)
    assert saver.save(KEY, src, ["out"]).saved
    saver.close()
    return bucket, files


def assert_same_files(workspace: Path, files: dict[str, bytes]) -> None:
    found = {str(p.relative_to(workspace)) for p in (workspace / "out").rglob("*") if p.is_file()}
    assert found == set(files)
    for rel, data in files.items():
        assert (workspace / rel).read_bytes() == data, rel


def assert_nothing_published(cache: ContentCache, workspace: Path, store: Path) -> None:
    assert not (workspace / "out").exists(), "a failed restore published files"
    assert cache.store.lookup(KEY) is None and cache.inventory()[1] == []
    assert not any((store / "staging").iterdir()), "staging leftovers after a failed restore"
    assert not list(workspace.glob(".stoker-staging-*"))


def test_transient_errors_resets_and_slow_answers_are_retried(tmp_path, fault_proxy, saved):
    bucket, files = saved
    fault_proxy.set_rules(
        Rule("error", path=r"/packs/", status=503, times=1),
        Rule("error", path=r"/packs/", status=500, times=1),
        Rule("reset", path=r"/packs/", times=1),
        Rule("error", path=r"/manifests/", status=503, times=1),
        Rule("reset", path=r"/keys/", times=1),
    )
    cache = open_cache(tmp_path / "node", fault_proxy.endpoint, bucket)
    workspace = tmp_path / "ws"
    result = cache.restore(KEY, [], workspace, ["out"])
    assert result.restored_key == KEY and result.files_restored == len(files)
    assert_same_files(workspace, files)
    faulted = [s for s in fault_proxy.requests(path=r"/packs/") if s.action != "pass"]
    assert len(faulted) == 3
    assert fault_proxy.requests(path=r"/packs/", action="pass"), "no pack read got through after the faults"
    # The entry is now local and whole.
    assert cache.store.lookup(KEY) is not None
    cache.close()


def test_an_answer_that_starts_late_is_retried(tmp_path, fault_proxy, saved):
    bucket, files = saved
    fault_proxy.set_rules(Rule("delay", path=r"/packs/", seconds=2.5, times=1))  # past the 1 s read timeout
    cache = open_cache(tmp_path / "node", fault_proxy.endpoint, bucket)
    workspace = tmp_path / "ws"
    assert cache.restore(KEY, [], workspace, ["out"]).restored_key == KEY
    assert_same_files(workspace, files)
    assert len(fault_proxy.requests(path=r"/packs/", action="delay")) == 1
    cache.close()


# A pack read whose body is cut (reset) or stalls past the read timeout midway fails the whole restore with
# no retry: docs/findings/fault-injection.md, bug 5 (the reproduction is there).


def test_a_store_that_keeps_failing_gives_a_clear_error_after_backoff(tmp_path, fault_proxy, saved):
    bucket, _ = saved
    fault_proxy.set_rules(Rule("error", path=r"/packs/", status=503))
    cache = open_cache(tmp_path / "node", fault_proxy.endpoint, bucket)
    workspace = tmp_path / "ws"
    started = time.monotonic()
    with pytest.raises(BlobStoreUnavailable) as err:
        cache.restore(KEY, [], workspace, ["out"])
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert f"entry {KEY}" in message and "fetching pack" in message and "SlowDown" in message, message
    attempts = fault_proxy.requests(path=r"/packs/", action="error")
    # Each ranged read is tried MAX_ATTEMPTS times, with a pause between tries.
    assert len(attempts) >= MAX_ATTEMPTS
    first_read = attempts[:MAX_ATTEMPTS]
    assert first_read[-1].time - first_read[0].time > 0.05 and elapsed < 60
    assert_nothing_published(cache, workspace, tmp_path / "node")
    cache.close()


def test_flipped_bytes_are_caught_and_nothing_wrong_is_published(tmp_path, fault_proxy, saved):
    bucket, files = saved
    for offset in (100, 1_000_000):
        fault_proxy.set_rules(Rule("corrupt", path=r"/packs/", after_bytes=offset))
        cache = open_cache(tmp_path / f"node-{offset}", fault_proxy.endpoint, bucket)
        workspace = tmp_path / f"ws-{offset}"
        with pytest.raises(CacheError) as err:
            cache.restore(KEY, [], workspace, ["out"])
        assert f"entry {KEY}" in str(err.value), err.value
        assert_nothing_published(cache, workspace, tmp_path / f"node-{offset}")
        cache.close()
    # Once the store answers truthfully again the same restore is whole.
    fault_proxy.set_rules()
    cache = open_cache(tmp_path / "node-ok", fault_proxy.endpoint, bucket)
    cache.restore(KEY, [], tmp_path / "ws-ok", ["out"])
    assert_same_files(tmp_path / "ws-ok", files)
    cache.close()


@pytest.mark.parametrize("action", ["reset_mid_body", "stall_mid_body"])
def test_a_body_cut_or_stalled_midway_is_retried(tmp_path, fault_proxy, saved, action):
    """One pack read breaks after 1,000 bytes of its body (a reset, or a stall past the read timeout):
    the restore must read that range again, not fail the whole restore on one broken connection."""
    bucket, files = saved
    fault_proxy.set_rules(Rule(action, path=r"/packs/", times=1, after_bytes=1000, seconds=2.5))
    cache = open_cache(tmp_path / "node", fault_proxy.endpoint, bucket)
    workspace = tmp_path / "ws"
    try:
        result = cache.restore(KEY, [], workspace, ["out"])
    except CacheError as exc:
        assert_nothing_published(cache, workspace, tmp_path / "node")
        pytest.fail(f"one broken pack read failed the restore: {exc}")
    assert result.restored_key == KEY
    assert_same_files(workspace, files)
    assert len(fault_proxy.requests(path=r"/packs/", action=action)) == 1
    cache.close()
