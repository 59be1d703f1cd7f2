"""Hostile manifests, packs and trees against the agent's cache code (a real ContentCache over a local
blob store in tmp_path).

Every case: a :class:`CacheError` subclass whose message names the entry or the path; the sentinel
directory beside the cache root and the workspace unchanged, and nothing else outside them either; nothing
half-written published (the inventory does not list the entry, the workspace holds no restored root and no
staging leftovers, the store's staging is empty).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError, CorruptEntry, UnsafeTree
from stoker.agent.cache.blobs import encode_key
from stoker.agent.cache.content_cache import ContentCache
from tests.helpers.cache import make_tree, open_local_cache, snapshot
from tests.helpers.hostile import (
    TreeState,
    encode_v1_doc,
    listing,
    publish_manifest,
    stored_manifest,
    v1_json,
)

pytestmark = pytest.mark.hostile

KEY = "web/nm-1"
EVIL = "web/evil"


@dataclass
class Env:
    tmp: Path
    blobs: Path
    src: Path
    node: ContentCache
    ws: Path
    sentinel: TreeState
    outside: TreeState
    manifest: mf.Manifest

    def assert_refused(self, info, cls: type[CacheError], *needles: str, key: str = EVIL) -> None:
        exc = info.value
        assert isinstance(exc, cls), f"{type(exc).__name__}: {exc}"
        for needle in needles:
            assert needle in str(exc), str(exc)
        assert self.sentinel.unchanged(), f"sentinel changed: {self.sentinel.diff()}"
        assert self.outside.unchanged(), (
            f"outside the cache root and workspace changed: {self.outside.diff()}"
        )
        assert key not in [e.key for e in self.node.inventory()[1]]
        assert listing(self.node.store.root / "staging") == set()
        assert not [n for n in listing(self.ws) if n != ".keep"], listing(self.ws)


@pytest.fixture
def env(tmp_path: Path, sentinel: TreeState):
    src = make_tree(tmp_path / "src", packages=5, files_per_package=3, big_bytes=5 << 20)
    saver = open_local_cache(tmp_path, name="saver")
    saver.save(KEY, src, ["node_modules"])
    saver.close()
    node = open_local_cache(tmp_path, name="node")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".keep").write_text("")
    outside = TreeState.of(tmp_path, exclude=("node", "ws", "blobs"))
    env = Env(
        tmp_path,
        tmp_path / "blobs",
        src,
        node,
        ws,
        sentinel,
        outside,
        stored_manifest(tmp_path / "blobs", KEY),
    )
    try:
        yield env
    finally:
        env.node.close()  # the node a test reopened with another writer, if it did


def with_files(m: mf.Manifest, *extra: mf.FileEntry, drop=lambda f: False) -> mf.Manifest:
    return mf.Manifest(EVIL, m.created, m.frames, tuple(f for f in m.files if not drop(f)) + extra, m.roots)


def a_file(m: mf.Manifest, path: str) -> mf.FileEntry:
    """A regular-file entry at ``path`` whose bytes are those of a real file of ``m`` (chunks valid)."""
    real = next(f for f in m.files if f.type == mf.FILE and f.chunks and f.size < 1 << 20)
    return real._replace(path=path)


def restore(env: Env, **kw):
    return env.node.restore(EVIL, [], env.ws, ["node_modules"], **kw)


# -- manifests that escape ---------------------------------------------------------------------------
ESCAPES = [
    (
        "dotdot-dir",
        lambda m: with_files(m, mf.FileEntry("node_modules/../../sentinel/evil", mf.DIR, 0o755, 1)),
        "unsafe path",
    ),
    (
        "dotdot-file",
        lambda m: with_files(m, a_file(m, "node_modules/../../sentinel/keep2.txt")),
        "unsafe path",
    ),
    ("absolute-file", lambda m: with_files(m, a_file(m, "/tmp/stoker-hostile-evil")), "unsafe path"),
    ("dot-component", lambda m: with_files(m, a_file(m, "node_modules/./x.js")), "unsafe path"),
    ("empty-component", lambda m: with_files(m, a_file(m, "node_modules//x.js")), "unsafe path"),
    ("backslash", lambda m: with_files(m, a_file(m, "node_modules\\..\\..\\x")), "unsafe path"),
    ("outside-the-roots", lambda m: with_files(m, a_file(m, "elsewhere.js")), "outside the entry's paths"),
    (
        "through-a-symlink",
        lambda m: with_files(m, a_file(m, "node_modules/alias/evil.js")),
        "passes through the symlink",
    ),
    (
        "through-a-file",
        lambda m: with_files(m, a_file(m, "node_modules/pkg1/package.json/evil.js")),
        "passes through the file",
    ),
    (
        "before-its-directory",
        lambda m: with_files(m, drop=lambda f: f.path == "node_modules/pkg4/lib").__class__(
            EVIL,
            m.created,
            m.frames,
            tuple(f for f in m.files if f.path != "node_modules/pkg4/lib")
            + (mf.FileEntry("node_modules/pkg4/lib", mf.DIR, 0o755, 1),),
            m.roots,
        ),
        "comes before its directory",
    ),
    (
        "symlink-dotdot",
        lambda m: with_files(
            m, mf.FileEntry("node_modules/up", mf.SYMLINK, 0o777, 1, target="../../sentinel")
        ),
        "leaves the tree",
    ),
    (
        "symlink-absolute",
        lambda m: with_files(m, mf.FileEntry("node_modules/abs", mf.SYMLINK, 0o777, 1, target="/etc")),
        "leaves the tree",
    ),
    (
        "symlink-empty-target",
        lambda m: with_files(m, mf.FileEntry("node_modules/e", mf.SYMLINK, 0o777, 1, target="")),
        "leaves the tree",
    ),
    (
        "symlink-chain-lexically-out",
        lambda m: with_files(
            m,
            mf.FileEntry("node_modules/c1", mf.SYMLINK, 0o777, 1, target="c2"),
            mf.FileEntry("node_modules/c2", mf.SYMLINK, 0o777, 1, target="pkg1/../../.."),
        ),
        "leaves the tree",
    ),
    (
        "duplicate-path",
        lambda m: with_files(m, a_file(m, "node_modules/pkg1/package.json")),
        "duplicate path",
    ),
    (
        "duplicate-dir-as-symlink",
        lambda m: with_files(m, mf.FileEntry("node_modules/pkg4", mf.SYMLINK, 0o777, 1, target="pkg1")),
        "duplicate path",
    ),
    ("setuid", lambda m: with_files(m, a_file(m, "node_modules/suid")._replace(mode=0o4755)), "refused mode"),
    (
        "mode-beyond-bits",
        lambda m: with_files(m, a_file(m, "node_modules/odd")._replace(mode=0o170644)),
        "refused mode",
    ),
    ("root-dotdot", lambda m: mf.Manifest(EVIL, m.created, m.frames, m.files, ("..",)), "unsafe path"),
    (
        "device-type",
        lambda m: with_files(m, mf.FileEntry("node_modules/dev", "type 3", 0o644, 1)),
        "only files, directories and symlinks",
    ),
]


@pytest.mark.parametrize("make, needle", [(mk, n) for _, mk, n in ESCAPES], ids=[c for c, _, _ in ESCAPES])
def test_manifest_that_escapes_is_refused_before_writing(env: Env, make, needle):
    publish_manifest(env.blobs, EVIL, mf.encode(make(env.manifest)))
    with pytest.raises(UnsafeTree) as info:
        restore(env)
    env.assert_refused(info, UnsafeTree, needle, EVIL)
    assert not Path("/tmp/stoker-hostile-evil").exists()


@pytest.mark.parametrize(
    "path", ["node_modules/a\x00b", "node_modules/\x00/../../x", "node_modules/ok/../.."]
)
def test_json_manifest_with_nul_or_dotdot_in_a_path_is_refused(env: Env, path):
    doc = v1_json(env.manifest)
    doc["key"] = EVIL
    doc["files"].append({"path": path, "type": "dir", "mode": 0o755, "mtime_ns": 1})
    publish_manifest(env.blobs, EVIL, encode_v1_doc(doc))
    with pytest.raises(UnsafeTree) as info:
        restore(env)
    env.assert_refused(info, UnsafeTree, "unsafe path", EVIL)


@pytest.mark.parametrize("kind", ["chardev", "blockdev", "fifo", "socket", "device-number"])
def test_json_manifest_with_special_file_types_is_refused(env: Env, kind):
    doc = v1_json(env.manifest)
    doc["key"] = EVIL
    doc["files"].append({"path": "node_modules/special", "type": kind, "mode": 0o644, "mtime_ns": 1})
    publish_manifest(env.blobs, EVIL, encode_v1_doc(doc))
    with pytest.raises(UnsafeTree) as info:
        restore(env)
    env.assert_refused(info, UnsafeTree, "node_modules/special", EVIL)


def test_symlink_chain_through_a_dot_link_is_not_written_through(env: Env):
    """``s -> .`` makes ``l -> s/s/s/../../../sentinel`` resolve outside the workspace although it stays
    inside lexically (docs/findings/hostile-input.md, finding 1, fixed): the manifest is refused, naming the
    link, and nothing outside changes."""
    m = with_files(
        env.manifest,
        mf.FileEntry("node_modules/s", mf.SYMLINK, 0o777, 1, target="."),
        mf.FileEntry("node_modules/l", mf.SYMLINK, 0o777, 1, target="s/s/s/../../../sentinel"),
    )
    publish_manifest(env.blobs, EVIL, mf.encode(m))
    with pytest.raises(UnsafeTree) as info:
        restore(env)
    assert "node_modules/l" in str(info.value)
    assert env.sentinel.unchanged() and env.outside.unchanged()
    assert EVIL not in [e.key for e in env.node.inventory()[1]]


def test_a_saved_tree_with_a_symlink_chain_through_a_dot_link_is_refused(env: Env):
    tree = env.tmp / "dotchain"
    shutil.copytree(env.src / "node_modules", tree / "node_modules", symlinks=True)
    os.symlink(".", tree / "node_modules" / "s")
    os.symlink("s/s/s/../../../sentinel", tree / "node_modules" / "l")
    _save_refused(env, tree, "node_modules/l")


def test_restore_refuses_to_publish_through_a_workspace_symlink(env: Env):
    """A nested root whose parent in the workspace is a symlink to the sentinel: refused at publish."""
    os.symlink(env.sentinel.root, env.ws / "deps")
    saver = open_local_cache(env.tmp, name="saver2")
    nested = env.tmp / "nested"
    shutil.copytree(env.src / "node_modules", nested / "deps" / "node_modules", symlinks=True)
    saver.save(EVIL, nested, ["deps/node_modules"])
    saver.close()
    outside = TreeState.of(env.tmp, exclude=("node", "ws", "blobs", "saver2"))
    with pytest.raises(UnsafeTree) as info:
        env.node.restore(EVIL, [], env.ws, ["deps/node_modules"])
    assert "deps" in str(info.value) and env.sentinel.unchanged() and outside.unchanged(), outside.diff()
    assert not list(env.ws.glob(".stoker-staging-*"))


def test_workspace_dir_swapped_for_a_symlink_mid_restore_is_caught_at_publish(env: Env):
    """The race: the parent of a nested root is a real directory when the restore starts and a symlink to
    the sentinel by the time it publishes."""
    saver = open_local_cache(env.tmp, name="saver2")
    nested = env.tmp / "nested"
    shutil.copytree(env.src / "node_modules", nested / "deps" / "node_modules", symlinks=True)
    saver.save(EVIL, nested, ["deps/node_modules"])
    saver.close()
    outside = TreeState.of(env.tmp, exclude=("node", "ws", "blobs", "saver2"))
    (env.ws / "deps").mkdir()
    swapped = []

    def progress(_p) -> None:
        if not swapped:
            (env.ws / "deps").rmdir()
            os.symlink(env.sentinel.root, env.ws / "deps")
            swapped.append(True)

    with pytest.raises(UnsafeTree) as info:
        env.node.restore(EVIL, [], env.ws, ["deps/node_modules"], progress)
    assert swapped and "deps" in str(info.value)
    assert env.sentinel.unchanged() and outside.unchanged(), outside.diff()
    assert (
        EVIL not in [e.key for e in env.node.inventory()[1]]
        or not (env.ws / "deps" / "node_modules").exists()
    )
    assert not list(env.ws.glob(".stoker-staging-*"))


@pytest.mark.parametrize("writer", ["compiled", "python-threads", "python-processes"])
def test_staging_dir_swapped_for_a_symlink_mid_restore_is_not_written_through(env: Env, writer):
    """docs/findings/hostile-input.md 4: a directory of the tree being restored is replaced by a symlink to
    the sentinel after the directories exist and before the files are written (what a build process of the
    agent's user could do). Every file is created beneath a descriptor of the staging root following no
    symlink, so the restore fails naming the path, the sentinel is untouched, nothing is published."""
    from stoker.agent.cache.writers import load_compiled

    assert load_compiled() is not None, (
        "the compiled writer is not built: `.venv/bin/pip install -e .` builds it"
    )
    env.node.close()
    env.node = open_local_cache(env.tmp, name="node", writer=writer)
    assert env.node.processes == (writer == "python-processes")
    env.node.ready_trees = 0
    publish_manifest(env.blobs, EVIL, mf.encode(with_files(env.manifest)))
    swapped = []

    def progress(_p) -> None:  # first called once the directories and the empty file exist
        if not swapped:
            (stage,) = env.ws.glob(".stoker-staging-*")
            shutil.rmtree(stage / "node_modules/pkg4/lib")
            os.symlink(env.sentinel.root, stage / "node_modules/pkg4/lib")
            swapped.append(True)

    with pytest.raises(CacheError) as info:
        restore(env, progress=progress)
    assert swapped
    assert "node_modules/pkg4/lib" in str(info.value), str(info.value)
    env.assert_refused(info, CacheError)
    # The same node restores the same entry afterwards, whole.
    result = restore(env)
    assert result.files_restored == len([f for f in env.manifest.files if f.type == mf.FILE])


# -- lying frames, corrupt and truncated packs, digest mismatches --------------------------------------
def _one_file_entry(payload: bytes, frame_blob: bytes, raw_size: int, *, digest: str | None = None) -> bytes:
    """A manifest of ``node_modules/f`` whose bytes are frame 0 of a pack holding ``frame_blob``."""
    import hashlib

    pack = hashlib.sha256(frame_blob).hexdigest()
    m = mf.Manifest(
        EVIL,
        1.0,
        (mf.Frame(pack, 0, len(frame_blob), raw_size),),
        (
            mf.FileEntry("node_modules", mf.DIR, 0o755, 1),
            mf.FileEntry(
                "node_modules/f",
                mf.FILE,
                0o644,
                1,
                raw_size,
                digest or hashlib.sha256(payload).hexdigest(),
                None,
                (mf.Chunk(0, 0, raw_size),),
            ),
            mf.FileEntry(
                "node_modules/g",
                mf.FILE,
                0o644,
                1,
                raw_size,
                digest or hashlib.sha256(payload).hexdigest(),
                None,
                (mf.Chunk(0, 0, raw_size),),
            ),
        ),
        ("node_modules",),
    )
    return pack, mf.encode(m)


def _store_pack(env: Env, name: str, blob: bytes) -> None:
    (env.blobs / "packs" / name).write_bytes(blob)


def _set_content_size(frame: bytes, size: int) -> bytes:
    """Rewrite the Frame_Content_Size of a single-segment zstd frame with a 4-byte size field."""
    fhd = frame[4]
    assert fhd >> 6 == 2 and fhd & 0x20, "expected a 4-byte content size, single segment"
    return frame[:5] + size.to_bytes(4, "little") + frame[9:]


@pytest.mark.parametrize(
    "case", ["says-less", "says-more", "says-nothing", "says-huge", "not-zstd", "skippable"]
)
def test_frames_that_lie_about_their_size(env: Env, case):
    n = 100_000
    payload = os.urandom(n // 2) * 2
    real = zstandard.ZstdCompressor(write_content_size=True).compress(payload + b"x" * 4096)
    blob = {
        "says-less": lambda: _set_content_size(real, n),  # holds n + 4096 bytes
        "says-more": lambda: _set_content_size(
            zstandard.ZstdCompressor(write_content_size=True).compress(payload[: n - 10]), n
        ),
        "says-nothing": lambda: zstandard.ZstdCompressor(write_content_size=False).compress(payload),
        "says-huge": lambda: _set_content_size(real, (1 << 32) - 1),
        "not-zstd": lambda: os.urandom(4096),
        "skippable": lambda: b"\x50\x2a\x4d\x18" + (n).to_bytes(4, "little") + b"\0" * n,
    }[case]()
    pack, data = _one_file_entry(payload, blob, n)
    _store_pack(env, pack, blob)
    publish_manifest(env.blobs, EVIL, data)
    with pytest.raises(CorruptEntry) as info:
        restore(env)
    env.assert_refused(info, CorruptEntry, EVIL)


def test_frame_that_declares_more_than_the_manifest_may_is_refused_by_the_manifest(env: Env):
    blob = b"\x28\xb5\x2f\xfd" + os.urandom(64)
    pack, data = _one_file_entry(b"", blob, mf.MAX_FRAME_RAW_SIZE + 1)
    _store_pack(env, pack, blob)
    publish_manifest(env.blobs, EVIL, data)
    with pytest.raises(CacheError) as info:
        restore(env)
    env.assert_refused(info, CacheError, "invalid frame")


def _evil_copy_of_valid_entry(env: Env) -> mf.Manifest:
    publish_manifest(env.blobs, EVIL, mf.encode(with_files(env.manifest)))
    return env.manifest


@pytest.mark.parametrize(
    "how",
    ["truncate-half", "truncate-one-byte", "empty", "flip-bytes", "zero-page", "append-garbage-shifted"],
)
def test_truncated_and_corrupted_packs(env: Env, how):
    m = _evil_copy_of_valid_entry(env)
    frame = max(m.frames, key=lambda f: f.raw_size)
    pack = env.blobs / "packs" / frame.pack
    data = bytearray(pack.read_bytes())
    end = frame.offset + frame.length
    if how == "truncate-half":
        data = data[: frame.offset + frame.length // 2]
    elif how == "truncate-one-byte":
        data = data[: end - 1]
    elif how == "empty":
        data = bytearray()
    elif how == "flip-bytes":
        for i in range(frame.offset + 64, end - 8, 251):
            data[i] ^= 0xFF
    elif how == "zero-page":
        data[frame.offset + 32 : frame.offset + 4128] = bytes(4096)
    elif how == "append-garbage-shifted":
        data = bytearray(b"\0" * 17) + data
    pack.write_bytes(bytes(data))
    with pytest.raises(CorruptEntry) as info:
        restore(env)
    env.assert_refused(info, CorruptEntry, EVIL)


@pytest.mark.parametrize(
    "victim", ["node_modules/pkg4/lib/f1.js", "node_modules/pkg1/big.bin", "node_modules/pkg2/empty.txt"]
)
def test_digest_mismatch_names_the_path(env: Env, victim):
    """Files of frames without a digest (manifests before version 4) are each checked against their own
    digest (with frame digests, see test_bad_input.py::test_file_digest_lying_under_frame_digests_...)."""
    files = tuple(f._replace(digest="ab" * 32) if f.path == victim else f for f in env.manifest.files)
    lying = mf.Manifest(EVIL, 1.0, env.manifest.frames, files, env.manifest.roots)
    publish_manifest(env.blobs, EVIL, mf.encode(mf.without_frame_digests(lying)))
    with pytest.raises(CorruptEntry) as info:
        restore(env)
    env.assert_refused(info, CorruptEntry, victim, "digest")


def test_manifest_that_does_not_match_its_name(env: Env):
    data = mf.encode(with_files(env.manifest))
    publish_manifest(env.blobs, EVIL, data)
    name = __import__("json").loads((env.blobs / "keys" / encode_key(EVIL)).read_text())["manifest"]
    (env.blobs / "manifests" / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CorruptEntry) as info:
        restore(env)
    env.assert_refused(info, CorruptEntry, "does not match its digest")


@pytest.mark.parametrize("cut", [0, 5, 100, -1])
def test_truncated_manifest_bytes(env: Env, cut):
    data = mf.encode(with_files(env.manifest))
    publish_manifest(env.blobs, EVIL, data[:cut])
    with pytest.raises(CacheError) as info:
        restore(env)
    env.assert_refused(info, CacheError, EVIL)


def test_corrupt_frame_in_the_local_store_is_caught_on_a_warm_restore(env: Env):
    """A corrupt local frame fails the local entry, which is evicted; the restore then takes the same key
    from the blob store (issue 16: skip to the next candidate) and publishes only verified files."""
    env.node.restore(KEY, [], env.tmp / "warm1", ["node_modules"])
    frames_dir = env.node.store.root / "frames"
    victim = max(frames_dir.iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    for i in range(100, len(data) - 100, 509):
        data[i] ^= 0x55
    victim.write_bytes(bytes(data))
    outside = TreeState.of(env.tmp, exclude=("node", "ws", "blobs", "warm1"))
    result = env.node.restore(KEY, [], env.ws, ["node_modules"])
    assert [s.key for s in result.skipped] == [KEY] and "corrupt" in result.skipped[0].reason, result.skipped
    assert result.restored_key == KEY and result.bytes_fetched > 0
    assert snapshot(env.ws / "node_modules") == snapshot(env.src / "node_modules")
    assert env.sentinel.unchanged() and outside.unchanged()
    assert not list(env.ws.glob(".stoker-staging-*"))


# -- trees being saved ---------------------------------------------------------------------------------
def _save_refused(env: Env, tree: Path, needle: str) -> None:
    node = env.node
    result: dict = {}

    def run() -> None:
        try:
            node.save(EVIL, tree, ["node_modules"])
        except BaseException as exc:
            result["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "save hung (did it open a FIFO?)"
    exc = result.get("exc")
    assert isinstance(exc, UnsafeTree), repr(exc)
    assert needle in str(exc)
    assert EVIL not in [e.key for e in node.inventory()[1]]
    assert not (env.blobs / "keys" / encode_key(EVIL)).exists()
    assert listing(node.store.root / "staging") == set()
    assert env.sentinel.unchanged()


@pytest.mark.parametrize("kind", ["fifo", "chardev", "blockdev", "socket"])
def test_special_files_in_a_tree_being_saved_are_refused(env: Env, kind):
    tree = env.tmp / "special"
    shutil.copytree(env.src / "node_modules", tree / "node_modules", symlinks=True)
    path = tree / "node_modules" / "pkg3" / "special"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "blockdev":
        os.mknod(path, 0o644 | stat.S_IFBLK, os.makedev(7, 200))
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    _save_refused(env, tree, "node_modules/pkg3/special")


@pytest.mark.parametrize(
    "target", ["/etc", "../../sentinel", "../../../../../../../../etc/passwd", "pkg1/../../..", ""]
)
def test_symlinks_leaving_a_tree_being_saved_are_refused(env: Env, target):
    tree = env.tmp / "links"
    shutil.copytree(env.src / "node_modules", tree / "node_modules", symlinks=True)
    if target:
        os.symlink(target, tree / "node_modules" / "out")
        _save_refused(env, tree, "node_modules/out")
    else:  # a chain: each hop stays, the last one leaves
        os.symlink("hop2", tree / "node_modules" / "hop1")
        os.symlink("../..", tree / "node_modules" / "hop2")
        _save_refused(env, tree, "node_modules/hop")  # either link of the chain may be named: both leave


@pytest.mark.parametrize(
    "paths",
    [
        ["../x"],
        [""],
        ["/"],
        ["node_modules/../.."],
        ["a\\b"],
        ["a\x00"],
        ["."],
        ["node_modules", "node_modules/pkg1"],
    ],
)
def test_restore_and_save_refuse_unsafe_cache_paths(env: Env, paths):
    with pytest.raises(CacheError):
        env.node.restore(KEY, [], env.ws, paths)
    with pytest.raises(CacheError):
        env.node.save(EVIL, env.src, paths)
    assert env.sentinel.unchanged() and env.outside.unchanged()
    assert EVIL not in [e.key for e in env.node.inventory()[1]]
