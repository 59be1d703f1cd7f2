"""The one place that turns :class:`~stoker.agent.config.CacheSettings` into a :class:`BuildCache`."""

from __future__ import annotations

from pathlib import Path

from stoker.agent.cache.api import BuildCache
from stoker.agent.cache.blobs import open_blob_store
from stoker.agent.cache.content_cache import ContentCache
from stoker.agent.cache.store import LocalStore
from stoker.agent.config import CacheSettings


def open_cache(config: CacheSettings) -> BuildCache:
    """A content-addressed cache over ``config.dir`` and ``config.blobs``; call ``.open()`` before use."""
    blobs = open_blob_store(config.blobs, config.s3_endpoint_url, config.s3_region)
    store = LocalStore(Path(config.dir), config.budget_bytes)
    return ContentCache(store, blobs, workers=config.workers, syncfs=config.syncfs)
