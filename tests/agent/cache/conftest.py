"""Fixtures for the cache tests: sample trees, a cache over a local blob store, sentinels around cache
roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.cache import make_tree, open_local_cache
from tests.helpers.hostile import TreeState


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


@pytest.fixture
def cache(tmp_path: Path):
    c = open_local_cache(tmp_path)
    yield c
    c.close()


@pytest.fixture
def sentinel(tmp_path: Path) -> TreeState:
    """A directory next to every cache root and workspace, filled with files; tests check it is untouched."""
    root = tmp_path / "sentinel"
    (root / "sub").mkdir(parents=True)
    (root / "keep.txt").write_text("do not touch\n")
    (root / "sub" / "deep.bin").write_bytes(os.urandom(256))
    os.symlink("keep.txt", root / "link")
    return TreeState.of(root)
