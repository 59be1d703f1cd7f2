"""Property-based tests (hypothesis) of the path and manifest checks and of the coordinator's request
checks: whatever the input, a check either refuses it or what it accepts is safe."""

from __future__ import annotations

import posixpath
import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from stoker.agent.cache import manifest as mf
from stoker.agent.cache import tree
from stoker.agent.cache.api import CacheError, UnsafeTree
from stoker.coordinator.core.errors import InvalidArgument
from stoker.coordinator.rpc import validate
from tests.helpers.hostile import budget

pytestmark = pytest.mark.hostile

ROOT = "/work/ws"
# Paths built mostly from the characters that matter, plus any character at all.
TRICKY = st.sampled_from(
    [
        "/",
        ".",
        "..",
        "\\",
        "\0",
        "a",
        "b",
        "node_modules",
        "\u202e",
        "\u200b",
        "\uff0f",
        "\uff0e",
        "\u2024",
        "\u2215",
        "e\u0301",
        "\u00e9",
        "\n",
        "\x1b",
        " ",
        "~",
        "%2e",
    ]
)
PATHS = st.one_of(st.text(max_size=40), st.lists(TRICKY, max_size=12).map("".join))


def inside(base: str, rel: str) -> bool:
    joined = posixpath.normpath(posixpath.join(base, rel))
    return joined.startswith(base + "/")


# -- agent: manifest path checks -----------------------------------------------------------------------
@budget(400)
@given(PATHS)
def test_check_relative_path_refuses_or_stays_inside(path):
    try:
        mf.check_relative_path(path, where="p")
    except UnsafeTree as exc:
        assert "unsafe path" in str(exc)
        return
    assert path and not path.startswith("/") and "\0" not in path and "\\" not in path
    assert posixpath.normpath(path) == path, "accepted paths are already normal"
    assert inside(ROOT, path)


@budget(400)
@given(PATHS.filter(bool), PATHS)
def test_symlink_targets_accepted_resolve_inside_their_roots(link, target):
    assume(not link.startswith("/"))
    roots = ("node_modules",)
    link = "node_modules/" + link
    if mf.symlink_stays_inside(link, target, roots):
        assert not target.startswith("/") and "\0" not in target
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
        assert resolved == "node_modules" or resolved.startswith("node_modules/")
        assert inside(ROOT, resolved)


@budget(200)
@given(
    st.lists(st.tuples(PATHS, st.sampled_from([mf.DIR, mf.FILE, mf.SYMLINK, "type 7"]), PATHS), max_size=8),
    st.lists(PATHS, max_size=3),
)
def test_validate_refuses_or_every_path_is_inside_and_under_listed_dirs(entries, roots):
    files = []
    for path, kind, target in entries:
        if kind == mf.FILE:
            files.append(mf.FileEntry(path, kind, 0o644, 0, 0, "0" * 64, None, ()))
        elif kind == mf.SYMLINK:
            files.append(mf.FileEntry(path, kind, 0o777, 0, target=target))
        else:
            files.append(mf.FileEntry(path, kind, 0o755, 0))
    m = mf.Manifest("k", 0.0, (), tuple(files), tuple(roots))
    try:
        mf.validate(m, where="prop")
    except CacheError:
        return
    seen: dict[str, str] = {}
    for f in m.files:
        assert f.path not in seen and inside(ROOT, f.path)
        assert f.type in (mf.DIR, mf.FILE, mf.SYMLINK)
        if roots:
            assert any(f.path == r or f.path.startswith(r + "/") for r in roots)
        parent = posixpath.dirname(f.path)
        while parent:  # nothing is written through a file or a symlink listed earlier
            assert seen.get(parent, mf.DIR) == mf.DIR
            parent = posixpath.dirname(parent)
        if f.type == mf.SYMLINK:
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(f.path), f.target))
            assert inside(ROOT, resolved)
        seen[f.path] = f.type


NAME = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\0\\"), min_size=1, max_size=8
).filter(lambda s: s not in (".", ".."))


@st.composite
def manifests(draw):
    """Valid manifests: a tree of directories, files with chunks into frames, symlinks inside the root."""
    nframes = draw(st.integers(0, 4))
    packs = [draw(st.sampled_from(["a" * 64, "b" * 64, "c" * 64])) for _ in range(nframes)]
    frames = tuple(
        mf.Frame(
            packs[i],
            draw(st.integers(0, 2**40)),
            draw(st.integers(1, 2**31 - 1)),
            draw(st.integers(0, mf.MAX_FRAME_RAW_SIZE)),
        )
        for i in range(nframes)
    )
    root = draw(NAME)
    files = [mf.FileEntry(root, mf.DIR, 0o755, draw(st.integers(-(2**63), 2**63 - 1)))]
    dirs = [root]
    used = {root}
    for _ in range(draw(st.integers(0, 12))):
        parent = draw(st.sampled_from(dirs))
        path = f"{parent}/{draw(NAME)}"
        if path in used:
            continue
        used.add(path)
        kind = draw(st.sampled_from([mf.DIR, mf.FILE, mf.SYMLINK]))
        mode = draw(st.integers(0, 0o1777))
        mtime = draw(st.integers(-(2**63), 2**63 - 1))
        if kind == mf.DIR:
            dirs.append(path)
            files.append(mf.FileEntry(path, kind, mode, mtime))
        elif kind == mf.SYMLINK:
            files.append(
                mf.FileEntry(
                    path,
                    kind,
                    mode,
                    mtime,
                    target=posixpath.relpath(draw(st.sampled_from(dirs)), posixpath.dirname(path)),
                )
            )
        else:
            chunks = []
            if nframes:
                for _ in range(draw(st.integers(0, 3))):
                    i = draw(st.integers(0, nframes - 1))
                    off = draw(st.integers(0, frames[i].raw_size))
                    chunks.append(mf.Chunk(i, off, draw(st.integers(0, frames[i].raw_size - off))))
            digest = draw(st.binary(min_size=32, max_size=32)).hex()
            files.append(
                mf.FileEntry(
                    path, kind, mode, mtime, sum(c.raw_length for c in chunks), digest, None, tuple(chunks)
                )
            )
    created = draw(st.floats(0, 4e9))
    return mf.Manifest(draw(st.text(max_size=20)), created, frames, tuple(files), (root,))


@budget(150)
@given(manifests())
def test_valid_manifests_round_trip_in_both_versions(m):
    mf.validate(m, where="generated")
    for version in (1, 2):
        assert mf.parse(mf.encode(m, version=version), where="rt") == m
    assert mf.encode(m) == mf.encode(mf.parse(mf.encode(m), where="rt")), "encoding is deterministic"


# -- coordinator: request checks ------------------------------------------------------------------------
BAD_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
KEYS = st.one_of(
    st.text(max_size=600),
    st.lists(TRICKY, max_size=40).map("".join),
    st.text(alphabet="k/", min_size=500, max_size=520),
)


@budget(400)
@given(KEYS)
def test_accepted_keys_are_printable_nfc_and_short(key):
    try:
        validate.cache_key(key, "spec.cache.key")
    except InvalidArgument as exc:
        assert str(exc).startswith("spec.cache.key: ") and len(str(exc)) < 400
        return
    assert 0 < len(key.encode()) <= validate.MAX_KEY_BYTES
    assert not any(unicodedata.category(c) in BAD_CATEGORIES for c in key)
    assert unicodedata.is_normalized("NFC", key)
    assert "\uff0f" not in key and "\u2215" not in key


@budget(400)
@given(PATHS, st.booleans())
def test_accepted_paths_are_printable_short_relative_and_inside_the_workspace(path, trailing):
    field = "spec.cache.paths[0]"
    try:
        clean = validate.relative_path(path, field, allow_trailing_slash=trailing)
    except InvalidArgument as exc:
        assert str(exc).startswith(field + ": ") and len(str(exc)) < 400
        return
    assert 0 < len(path.encode()) <= validate.MAX_PATH_BYTES
    assert not any(unicodedata.category(c) in BAD_CATEGORIES for c in path)
    assert not path.startswith("/") and "\\" not in path and "\0" not in path
    assert inside(ROOT, path) and inside(ROOT, clean)
    # What the coordinator accepts the agent accepts too (else the build fails late on its node).
    mf.check_relative_path(clean, where="agent")
    assert tree.check_roots([path]) == (clean,)


@budget(200)
@given(st.dictionaries(PATHS, st.binary(max_size=4), max_size=6))
def test_accepted_input_files_land_inside_a_fresh_workspace(tmp_path_factory, files):
    from stoker.v1 import common_pb2

    try:
        validate.build_spec(
            common_pb2.BuildSpec(workspace="w", command=["true"], files=files),
            need_command=True,
            max_files_bytes=1 << 20,
            max_timeout_s=10,
        )
    except InvalidArgument as exc:
        assert str(exc).startswith("spec.files")
        return
    except ValueError:  # protobuf refuses strings that are not valid UTF-8 before we see them
        return
    for name in files:
        assert inside(ROOT, name)
        for other in files:  # no input file is a directory of another: writing them cannot collide
            assert not other.startswith(name + "/")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_timeouts_are_refused(value):
    from stoker.v1 import common_pb2

    with pytest.raises(InvalidArgument, match="^spec.timeout_s: must be a finite number"):
        validate.build_spec(
            common_pb2.BuildSpec(workspace="w", command=["true"], timeout_s=value),
            need_command=True,
            max_files_bytes=1,
            max_timeout_s=10,
        )
