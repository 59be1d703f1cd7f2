"""Fixtures for the hostile-input suite: one real fleet per module, sentinels around cache roots, and the
hypothesis budget that keeps the whole suite near a minute on two cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # hostilekit beside this file
sys.path.insert(0, str(Path(__file__).parent.parent / "cache"))  # cachetest: sample trees, local caches

from hostilekit import TreeState  # noqa: E402

@pytest.fixture
def sentinel(tmp_path: Path) -> TreeState:
    """A directory next to every cache root and workspace, filled with files; tests check it is untouched."""
    root = tmp_path / "sentinel"
    (root / "sub").mkdir(parents=True)
    (root / "keep.txt").write_text("do not touch\n")
    (root / "sub" / "deep.bin").write_bytes(os.urandom(256))
    os.symlink("keep.txt", root / "link")
    return TreeState.of(root)
