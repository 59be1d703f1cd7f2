"""The cache boundary, against the cache code itself (a real ContentCache over a local blob store): a save
reads the workspace as untrusted input and follows no symlink anywhere in a cache path, parents included,
even when the tree changes while it is read; a restore writes nothing outside the workspace through a
symlink planted at a parent of a restore path.

The secret is a stand-in for the node's ``/etc/stoker/tls`` (random bytes beside the workspace, readable
by the agent). Every case: the secret's bytes and digest are in neither the node's store nor the blob
store, and the save either stores a symlink as a symlink or is refused with a message naming the path.
The races are made deterministic by swapping at a fixed point of the save (after the walk, before the
hashing; before the packing) or of the publish (at its first rename), as a leftover process of the build
could.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stoker.agent.cache import manifest as mf
from stoker.agent.cache import packing, staging
from stoker.agent.cache import tree as tree_mod
from stoker.agent.cache.api import CacheError, UnsafeTree
from stoker.agent.cache.blobs import encode_key
from stoker.agent.cache.content_cache import ContentCache
from tests.helpers.cache import make_tree, open_local_cache
from tests.helpers.hostile import TreeState, holding, stored_manifest

pytestmark = pytest.mark.hostile

KEY = "web/boundary"


@dataclass
class Node:
    tmp: Path
    cache: ContentCache
    ws: Path
    etc: Path
    """The stand-in for the node's /etc: ``stoker/tls/tls.key`` holds the secret."""
    secret: bytes

    @property
    def tls(self) -> Path:
        return self.etc / "stoker" / "tls"

    def leaked(self) -> list[str]:
        return holding(self.secret, self.tmp / "node", self.tmp / "blobs")

    def assert_refused(self, call: Callable[[], object], *needles: str) -> CacheError:
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["result"] = call()
            except BaseException as exc:
                outcome["exc"] = exc

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "the save hung (did it open a FIFO?)"
        assert self.leaked() == [], "the secret reached the store"
        exc = outcome.get("exc")
        assert isinstance(exc, CacheError), f"not refused: {outcome}"
        for needle in needles:
            assert needle in str(exc), str(exc)
        assert not (self.tmp / "blobs" / "keys" / encode_key(KEY)).exists()
        assert KEY not in [e.key for e in self.cache.inventory()[1]]
        return exc

    def save(self, *paths: str):
        return self.cache.save(KEY, self.ws, list(paths))


@pytest.fixture
def node(tmp_path: Path):
    etc = tmp_path / "etc"
    (etc / "stoker" / "tls").mkdir(parents=True)
    secret = b"-----BEGIN PRIVATE KEY-----\n" + os.urandom(6000).hex().encode() + b"\n"
    (etc / "stoker" / "tls" / "tls.key").write_bytes(secret)
    (etc / "stoker" / "tls" / "tls.crt").write_bytes(b"certificate\n")
    ws = make_tree(tmp_path / "ws", packages=4, files_per_package=3, big_bytes=64 << 10)
    # The build's own files named and sized like the node's: what a path of the walk reads once swapped.
    certs = ws / "node_modules" / "pkg1" / "certs"
    certs.mkdir()
    (certs / "tls.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\n" + b"0" * (len(secret) - 28))
    (certs / "tls.crt").write_bytes(b"not a cert!\n")
    cache = open_local_cache(tmp_path, name="node")
    try:
        yield Node(tmp_path, cache, ws, etc, secret)
    finally:
        cache.close()


# -- symlinks the build leaves behind -------------------------------------------------------------------
def test_a_cache_path_that_is_a_symlink_to_a_secret_dir_is_refused(node: Node):
    os.symlink(node.tls, node.ws / "tls")
    node.assert_refused(lambda: node.save("tls"), "tls", "symlink")


@pytest.mark.parametrize(
    "link, target, path",
    [
        ("certs", "{etc}/stoker", "certs/tls"),  # `--path certs/tls`, certs -> /etc/stoker
        ("certs", "../etc/stoker", "certs/tls"),  # the same, relative
        ("web", "{etc}", "web/stoker/tls"),  # a parent two levels above the cache path
        ("web/conf", "{etc}/stoker", "web/conf/tls"),  # a parent below a real directory
    ],
)
def test_a_symlink_at_a_parent_of_a_cache_path_is_refused(node: Node, link, target, path):
    (node.ws / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.format(etc=node.etc), node.ws / link)
    node.assert_refused(lambda: node.save(path, "node_modules"), link, "symlink")


def test_a_directory_inside_the_tree_that_is_a_symlink_to_a_secret_dir_is_refused(node: Node):
    shutil.rmtree(node.ws / "node_modules" / "pkg1")
    os.symlink(node.tls, node.ws / "node_modules" / "pkg1")
    node.assert_refused(lambda: node.save("node_modules"), "node_modules/pkg1", "symlink")


@pytest.mark.parametrize("target", ["{tls}/tls.key", "../../../etc/stoker/tls/tls.key"])
def test_a_symlink_to_the_secret_inside_the_tree_is_refused_never_read(node: Node, target):
    os.symlink(target.format(tls=node.tls), node.ws / "node_modules" / "pkg2" / "key.pem")
    node.assert_refused(lambda: node.save("node_modules"), "node_modules/pkg2/key.pem", "symlink")


def test_a_symlink_inside_the_tree_is_saved_as_a_symlink(node: Node):
    """A link that stays in the tree is kept as a link: its target as text, never the bytes it names."""
    os.symlink("../pkg1/certs/tls.key", node.ws / "node_modules" / "pkg2" / "key.pem")
    assert node.save("node_modules").saved
    entry = {f.path: f for f in stored_manifest(node.tmp / "blobs", KEY).files}["node_modules/pkg2/key.pem"]
    assert (entry.type, entry.target, entry.digest, entry.chunks) == (
        mf.SYMLINK,
        "../pkg1/certs/tls.key",
        None,
        (),
    )
    assert node.leaked() == []
    out = node.tmp / "out"
    node.cache.restore(KEY, [], out, ["node_modules"])
    assert os.readlink(out / "node_modules" / "pkg2" / "key.pem") == "../pkg1/certs/tls.key"


# -- the tree changed while the save reads it -----------------------------------------------------------
def _swap_dir(node: Node) -> None:
    """``node_modules/pkg1/certs`` (the build's ``tls.key`` and ``tls.crt``) becomes a symlink to the
    secret directory: the paths the walk saw now name the node's files."""
    certs = node.ws / "node_modules" / "pkg1" / "certs"
    os.rename(certs, node.ws / "elsewhere")
    os.symlink(node.tls, certs)


def _swap_file(node: Node) -> None:
    """``node_modules/pkg1/certs/tls.key`` becomes a symlink to the node's key (of the same size)."""
    victim = node.ws / "node_modules" / "pkg1" / "certs" / "tls.key"
    victim.unlink()
    os.symlink(node.tls / "tls.key", victim)


@pytest.mark.parametrize("swap", [_swap_dir, _swap_file], ids=["dir", "file"])
def test_swapped_for_a_symlink_after_the_walk_is_never_read_through(node: Node, monkeypatch, swap):
    real = tree_mod.digests

    def swapped_then_hashed(*args, **kwargs):
        swap(node)
        return real(*args, **kwargs)

    monkeypatch.setattr(tree_mod, "digests", swapped_then_hashed)
    node.assert_refused(lambda: node.save("node_modules"), "node_modules/pkg1/certs")


@pytest.mark.parametrize("swap", [_swap_dir, _swap_file], ids=["dir", "file"])
def test_swapped_for_a_symlink_before_the_packing_is_never_read_through(node: Node, monkeypatch, swap):
    real = packing.write_pack
    swapped: list[bool] = []

    def swapped_then_packed(*args, **kwargs):
        if not swapped:
            swap(node)
            swapped.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(packing, "write_pack", swapped_then_packed)
    node.assert_refused(lambda: node.save("node_modules"), "node_modules/pkg1/certs")
    assert swapped


def test_a_file_swapped_for_a_fifo_after_the_walk_does_not_hang_the_save(node: Node, monkeypatch):
    real = tree_mod.digests

    def swapped_then_hashed(*args, **kwargs):
        victim = node.ws / "node_modules" / "pkg1" / "certs" / "tls.crt"
        victim.unlink()
        os.mkfifo(victim)
        return real(*args, **kwargs)

    monkeypatch.setattr(tree_mod, "digests", swapped_then_hashed)
    try:  # opening a FIFO without O_NONBLOCK waits for a writer for ever
        node.assert_refused(lambda: node.save("node_modules"), "node_modules/pkg1/certs/tls.crt")
    finally:
        _release_readers(node.ws / "node_modules" / "pkg1" / "certs" / "tls.crt")


def _release_readers(fifo: Path) -> None:
    """Open ``fifo`` for writing and close it, so that a reader blocked in open() returns."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader is waiting
        pass


# -- restores into a workspace with a planted symlink ---------------------------------------------------
def test_a_parent_swapped_for_a_symlink_at_the_publish_is_not_written_through(
    node: Node, tmp_path: Path, monkeypatch
):
    """The workspace holds ``deps/node_modules`` (an older tree the restore replaces); right before the
    publish renames, ``deps`` becomes a symlink to a directory outside the workspace that also holds a
    ``node_modules``. Neither that directory nor anything else outside the workspace may change."""
    src = make_tree(tmp_path / "src" / "deps", packages=4, files_per_package=2, big_bytes=8 << 10)
    node.cache.save(KEY, src.parent, ["deps/node_modules"])
    node.cache.ready_trees = 0  # no ready tree: the restore writes files, then publishes them
    ws = tmp_path / "ws2"
    (ws / "deps" / "node_modules").mkdir(parents=True)
    (ws / "deps" / "node_modules" / "old.txt").write_text("older tree\n")
    victim = tmp_path / "victim"
    (victim / "node_modules").mkdir(parents=True)
    (victim / "node_modules" / "keep.txt").write_text("outside the workspace\n")
    outside = TreeState.of(tmp_path, exclude=("node", "ws2", "blobs"))
    real_rename = os.rename
    swapped: list[bool] = []

    def rename(src_path, dst_path, *args, **kwargs):
        if not swapped and ("src_dir_fd" in kwargs or str(src_path).startswith(str(ws))):
            real_rename(ws / "deps", ws / "deps-moved")
            os.symlink(victim, ws / "deps")
            swapped.append(True)
        return real_rename(src_path, dst_path, *args, **kwargs)

    monkeypatch.setattr(staging.os, "rename", rename)
    try:
        node.cache.restore(KEY, [], ws, ["deps/node_modules"])
    except UnsafeTree as exc:  # refusing is as good as writing beneath the real directory
        assert "deps" in str(exc)
    assert swapped
    assert outside.unchanged(), outside.diff()
    assert not list(ws.glob(".stoker-staging-*"))
