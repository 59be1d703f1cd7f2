"""The one place that turns :class:`~stoker.agent.config.CacheSettings` into a :class:`BuildCache`."""

from __future__ import annotations

import logging
from pathlib import Path

from stoker.agent.cache.api import BuildCache
from stoker.agent.cache.blobs import open_blob_store
from stoker.agent.cache.content_cache import ContentCache
from stoker.agent.cache.store import LocalStore
from stoker.agent.cache.writers import writer_kind
from stoker.agent.config import CacheSettings

log = logging.getLogger(__name__)


def open_cache(config: CacheSettings, *, node: str = "") -> BuildCache:
    """A content-addressed cache over ``config.dir`` and ``config.blobs``; call ``.open()`` before use.
    ``node``: this node's name, recorded in what the cache writes about itself (marks of bad entries)."""
    blobs = open_blob_store(config.blobs, config.s3_endpoint_url, config.s3_region)
    if config.tenant_budget_bytes < 0:
        raise ValueError(f"cache.tenant_budget_bytes must be 0 or more, not {config.tenant_budget_bytes}")
    store = LocalStore(Path(config.dir), config.budget_bytes, tenant_budget_bytes=config.tenant_budget_bytes)
    kind = writer_kind(config.writer)
    if config.ready_trees < 0:
        raise ValueError(f"cache.ready_trees must be 0 or more, not {config.ready_trees}")
    cache = ContentCache(
        store,
        blobs,
        workers=config.workers,
        syncfs=config.syncfs,
        writer=kind,
        ready_trees=config.ready_trees,
        node=node,
    )
    writer = cache.writing.writer
    if writer.compiled is None and kind == "auto":
        log.warning(
            "the compiled cache writer (stoker.agent.cache._fastio) is not built: restores use the "
            "slower Python writer; reinstall stoker where a C compiler is available to build it"
        )
    elif writer.compiled is None:
        log.info(
            "cache.writer=%s: restores use the Python writer (%s)",
            kind,
            "forked processes" if writer.forked else "threads",
        )
    return cache
