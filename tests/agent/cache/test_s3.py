"""The S3 blob store against real S3 servers on loopback: SeaweedFS (`weed mini`) and moto's server."""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path

import pytest

from stoker.agent.cache.api import BlobStoreUnavailable, NotFound
from stoker.agent.cache.blobs import encode_key, open_blob_store
from stoker.agent.cache.content_cache import ContentCache
from stoker.agent.cache.s3_blobs import S3BlobStore
from stoker.agent.cache.store import LocalStore
from tests.helpers.cache import snapshot

pytestmark = pytest.mark.integration


@pytest.fixture(params=["seaweedfs", "moto"])
def endpoint(request) -> str:
    return request.getfixturevalue("seaweed_endpoint" if request.param == "seaweedfs" else "moto_endpoint")


def _store(endpoint: str, **kwargs) -> S3BlobStore:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    store = open_blob_store(f"s3://{bucket}/ci/cache", endpoint, "us-east-1")
    assert isinstance(store, S3BlobStore)
    store.create_bucket()
    if kwargs:
        store = S3BlobStore(bucket, "ci/cache", endpoint_url=endpoint, region="us-east-1", **kwargs)
    return store


def test_objects_ranges_listing_and_multipart(endpoint: str, tmp_path: Path) -> None:
    store = _store(endpoint, multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    store.put("manifests/m1", b"hello world")
    assert store.get("manifests/m1") == b"hello world"
    assert store.get_range("manifests/m1", 6, 5) == b"world"
    assert store.get_range("manifests/m1", 6, 100) == b"world"
    assert store.exists("manifests/m1") and not store.exists("manifests/none")
    with pytest.raises(NotFound):
        store.get("manifests/none")
    big = tmp_path / "pack"
    payload = bytes(range(256)) * (12 << 20 >> 8)
    big.write_bytes(payload)
    store.put_file("packs/big", big)  # 12 MiB in 5 MiB parts: a multipart upload
    assert store.get_range("packs/big", (7 << 20) + 3, 1000) == payload[(7 << 20) + 3 : (7 << 20) + 1003]
    for key in ("web/nm-1", "web/nm-2", "web/other", "ü/x"):
        store.put(f"keys/{encode_key(key)}", b"{}")
    names = [o.name for o in store.list(f"keys/{encode_key('web/nm-')}")]
    assert names == [f"keys/{encode_key('web/nm-1')}", f"keys/{encode_key('web/nm-2')}"]
    assert [o.name for o in store.list(f"keys/{encode_key('ü')}")] == [f"keys/{encode_key('ü/x')}"]


def test_save_and_restore_through_s3(endpoint: str, tree: Path, tmp_path: Path) -> None:
    blobs = _store(endpoint)
    writer = ContentCache(LocalStore(tmp_path / "w", 1 << 30), blobs, workers=2)
    writer.open()
    assert writer.save("web/nm-1", tree, ["node_modules"]).saved
    (tree / "node_modules/pkg3/lib/f2.js").write_text("changed\n")
    writer.save("web/nm-2", tree, ["node_modules"])
    node = ContentCache(LocalStore(tmp_path / "n", 1 << 30), blobs, workers=2)
    node.open()
    cold = node.restore("web/nm-1", [], tmp_path / "ws1", ["node_modules"])
    assert cold.warmth == "cold" and cold.bytes_fetched > 0
    partial = node.restore("web/nm-x", ["web/nm-"], tmp_path / "ws2", ["node_modules"])
    assert partial.restored_key == "web/nm-1"  # the newest *local* entry under the prefix wins
    exact = node.restore("web/nm-2", [], tmp_path / "ws3", ["node_modules"])
    assert exact.warmth == "partial" and 0 < exact.bytes_fetched < 2000
    assert snapshot(tmp_path / "ws3") == snapshot(tree)
    writer.close()
    node.close()


def test_refused_connection_is_a_clear_error(tmp_path: Path, tree: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    blobs = S3BlobStore(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        max_attempts=2,
        connect_timeout=1,
    )
    node = ContentCache(LocalStore(tmp_path / "n", 1 << 30), blobs, workers=2)
    node.open()
    with pytest.raises(BlobStoreUnavailable, match=f"127.0.0.1:{port}"):
        node.restore("web/nm", [], tmp_path / "ws", ["node_modules"])
    with pytest.raises(BlobStoreUnavailable):
        node.save("web/nm", tree, ["node_modules"])
    assert not (tmp_path / "ws" / "node_modules").exists() and node.inventory()[1] == []
    node.close()


def test_timeout_mid_restore_names_entry_and_pack(seaweed_endpoint: str, tree: Path, tmp_path: Path) -> None:
    blobs = _store(seaweed_endpoint)
    writer = ContentCache(LocalStore(tmp_path / "w", 1 << 30), blobs, workers=2)
    writer.open()
    writer.save("web/nm", tree, ["node_modules"])
    writer.close()
    # A proxy that forwards key and manifest reads but stalls on every pack read.
    upstream_port = int(seaweed_endpoint.rsplit(":", 1)[1])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_relay, args=(conn, upstream_port, stop), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        slow = S3BlobStore(
            blobs.bucket,
            "ci/cache",
            endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            region="us-east-1",
            max_attempts=2,
            read_timeout=0.5,
            connect_timeout=1,
        )
        node = ContentCache(LocalStore(tmp_path / "n", 1 << 30), slow, workers=2)
        node.open()
        with pytest.raises(
            BlobStoreUnavailable, match=r"entry web/nm: fetching pack \w+ \(holding node_modules/"
        ):
            node.restore("web/nm", [], tmp_path / "ws", ["node_modules"])
        assert not (tmp_path / "ws" / "node_modules").exists()
        assert node.inventory()[1] == [] and list((tmp_path / "n" / "staging").iterdir()) == []
        node.close()
    finally:
        stop.set()
        listener.close()


def _relay(conn: socket.socket, upstream_port: int, stop: threading.Event) -> None:
    with conn, socket.create_connection(("127.0.0.1", upstream_port)) as up:
        conn.settimeout(5)
        up.settimeout(5)
        try:
            while not stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                if b"/packs/" in data.split(b"\r\n", 1)[0]:
                    stop.wait(3)  # never answer a pack read in time
                    return
                up.sendall(data)
                # Relay the response until the upstream pauses (one request/response at a time).
                up.settimeout(0.3)
                while True:
                    try:
                        chunk = up.recv(65536)
                    except TimeoutError:
                        break
                    if not chunk:
                        return
                    conn.sendall(chunk)
        except OSError:
            return


def test_the_blob_stores_gc_caps_a_tenant_on_s3_from_the_command_a_cronjob_runs(
    seaweed_endpoint: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`stoker cache gc --blobs-only --tenant-budget` (deploy/overlays/s3's CronJob) on a real bucket: the
    tenant's oldest entry and the packs only it used go; what is left restores."""
    import json
    import os
    import time

    from stoker.agent.cache.cli import main as cache_cli

    blobs = _store(seaweed_endpoint)
    writer = ContentCache(LocalStore(tmp_path / "w", 1 << 30), blobs, workers=2)
    writer.open()
    keys = ["~evil/protected/a", "~evil/protected/b", "~evil/protected/c"]
    for i, key in enumerate(keys):
        ws = tmp_path / f"ws{i}"
        (ws / "deps").mkdir(parents=True)
        (ws / "deps" / "blob.bin").write_bytes(os.urandom(1 << 20))
        writer.save(key, ws, ["deps"])
        time.sleep(1.1)  # S3's Last-Modified has one-second resolution: the saves' order must show
    writer.close()
    monkeypatch.setenv("STOKER_AGENT_CACHE_BLOBS", f"s3://{blobs.bucket}/ci/cache")
    monkeypatch.setenv("STOKER_AGENT_CACHE_S3_ENDPOINT_URL", seaweed_endpoint)
    monkeypatch.setenv("STOKER_AGENT_CACHE_S3_REGION", "us-east-1")
    argv = ["--json", "gc", "--blobs-only", "--blobs-grace-hours", "0", "--tenant-budget", "2.5M"]
    assert cache_cli(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tenants"][0]["evicted"] == ["~evil/protected/a"], out
    assert out["blobs_deleted"] >= 2 and out["blobs_deleted_bytes"] > 1 << 20, out
    assert {o.name for o in blobs.list("keys/")} == {f"keys/{encode_key(k)}" for k in keys[1:]}
    node = ContentCache(LocalStore(tmp_path / "n", 1 << 30), blobs, workers=2)
    node.open()
    for key in keys[1:]:
        assert node.restore(key, [], tmp_path / key.replace("/", "_"), ["deps"]).restored_key == key
    node.close()
