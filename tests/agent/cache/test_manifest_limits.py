"""Manifest decoding refuses what would exhaust memory or smuggle a bad digest (docs/findings/hostile-input.md
2 and 3)."""

from __future__ import annotations

import struct

import pytest

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError

pytestmark = pytest.mark.hostile


@pytest.mark.parametrize("declared", [1 << 62, 4 << 30, (1 << 30) + 1])  # the cap is 1 GiB
def test_a_frame_declaring_a_huge_size_is_refused_before_anything_is_allocated(declared):
    header = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", declared) + b"\x01\x00\x00"
    with pytest.raises(CacheError, match="more than a manifest may hold"):
        mf.parse(header, where="web/deps-1")


def test_a_manifest_that_is_not_zstd_is_a_clear_error():
    with pytest.raises(CacheError, match="not readable"):
        mf.parse(b"definitely not zstd", where="web/deps-1")


def test_a_digest_of_the_right_length_that_is_not_hex_is_refused():
    good = mf.FileEntry("node_modules/a", mf.FILE, 0o644, 1, size=0, digest="0" * 64)
    bad = mf.FileEntry("node_modules/b", mf.FILE, 0o644, 1, size=0, digest="z" * 64)
    for entry, ok in ((good, True), (bad, False)):
        manifest = mf.Manifest(
            key="w",
            created=1.0,
            frames=(),
            roots=("node_modules",),
            files=(mf.FileEntry("node_modules", mf.DIR, 0o755, 1), entry),
        )
        if ok:
            mf.validate(manifest, where="w")
        else:
            with pytest.raises(CacheError, match="digest"):
                mf.validate(manifest, where="w")
