"""apply_diff's comparison of a ready tree with an entry: the C version (``_fastio.diff_entries``) gives
exactly what the Python version (``hydrate._diff_entries``) gives."""

from __future__ import annotations

import random

import pytest

from stoker.agent.cache import hydrate
from stoker.agent.cache import manifest as mf


@pytest.fixture(autouse=True)
def _compiled_module_is_built() -> None:
    """These tests compare the C diff with the Python one: without the C module they fail, saying how to
    build it (nothing in this suite skips silently)."""
    assert hydrate._compiled is not None, (
        "the compiled module (agent/cache/_fastio.c) is not built: install gcc and run ./scripts/setup.sh"
    )


D, F, S = mf.DIR, mf.FILE, mf.SYMLINK


def _dir(path: str, mode: int = 0o755, mtime: int = 1) -> mf.FileEntry:
    return mf.FileEntry(path, D, mode, mtime)


def _file(path: str, content: str = "a", mode: int = 0o644, mtime: int = 1) -> mf.FileEntry:
    digest = (content * 64)[:64]
    return mf.FileEntry(path, F, mode, mtime, len(content), digest, None, (mf.Chunk(0, 0, len(content)),))


def _link(path: str, target: str, mtime: int = 1) -> mf.FileEntry:
    return mf.FileEntry(path, S, 0o777, mtime, 0, None, target)


def _both(held: list[mf.FileEntry], files: list[mf.FileEntry]) -> hydrate.Diff:
    found = hydrate._compiled.diff_entries(held, files, mf.DIR)
    assert found is not None
    compiled = hydrate.Diff(*found)
    assert compiled == hydrate._diff_entries(held, files)
    return compiled


HELD = [
    _dir("nm"),
    _dir("nm/a"),
    _file("nm/a/same"),
    _file("nm/a/mtime"),
    _file("nm/a/content", "b"),
    _file("nm/a/mode"),
    _file("nm/a/gone"),
    _link("nm/a/link", "same"),
    _file("nm/a/to_dir"),
    _dir("nm/a/to_file"),
    _file("nm/a/to_file/inner"),
    _link("nm/a/to_link", "same"),
    _dir("nm/b", mode=0o555),
    _file("nm/b/x"),
    _dir("nm/c"),
    _dir("nm/c/deep"),
    _file("nm/c/deep/y"),
    _dir("nm/e", mode=0o700),
]


def test_every_kind_of_change_gives_the_python_result() -> None:
    files = [
        _dir("nm", mtime=2),
        _dir("nm/a"),
        _file("nm/a/same"),
        _file("nm/a/mtime", mtime=5),  # mtime only: kept, its mtime set
        _file("nm/a/content", "c"),  # content: written again
        _file("nm/a/mode", mode=0o755),  # mode of a file: written again
        _link("nm/a/link", "mtime"),  # retargeted
        _dir("nm/a/to_dir"),  # file -> directory
        _file("nm/a/to_file"),  # directory -> file
        _link("nm/a/to_link", "same", mtime=3),
        _dir("nm/b", mode=0o755),  # a directory's mode: kept
        _file("nm/b/x"),
        _dir("nm/e", mode=0o700, mtime=9),
        _file("nm/new"),
    ]
    diff = _both(HELD, files)
    assert [f.path for f in diff.removed] == [
        "nm/a/content",
        "nm/a/mode",
        "nm/a/gone",
        "nm/a/link",
        "nm/a/to_dir",
        "nm/a/to_file",
        "nm/a/to_file/inner",
        "nm/c",
        "nm/c/deep",
        "nm/c/deep/y",
    ]
    assert [f.path for f in diff.create] == [
        "nm/a/content",
        "nm/a/mode",
        "nm/a/link",
        "nm/a/to_dir",
        "nm/a/to_file",
        "nm/new",
    ]
    assert diff.touched == {
        "nm": HELD[0],
        "nm/a": HELD[1],
        "nm/a/to_file": HELD[9],
        "nm/c": HELD[14],
        "nm/c/deep": HELD[15],
    }
    assert [f.path for f in diff.set_times] == ["nm/a/mtime", "nm/a/to_link"]
    assert [f.path for f in diff.dirs] == ["nm", "nm/a", "nm/b", "nm/e"]
    assert diff.dir_modes == [False, False, True, False]


def test_no_change_and_empty_sides() -> None:
    assert _both(HELD, HELD) == hydrate.Diff([], [], {}, [], [], [])
    assert _both([], HELD).create == HELD
    assert _both(HELD, []).removed == HELD
    assert _both([], []) == hydrate.Diff([], [], {}, [], [], [])


def test_repeated_held_paths_are_left_to_python() -> None:
    assert hydrate._compiled.diff_entries(HELD + [HELD[2]], HELD, mf.DIR) is None
    diff = hydrate.diff_entries(HELD + [HELD[2]], HELD)  # falls back, and still answers
    assert diff == hydrate._diff_entries(HELD + [HELD[2]], HELD)


def test_not_entries_are_refused() -> None:
    with pytest.raises(TypeError):
        hydrate._compiled.diff_entries([("nm",)], [], mf.DIR)
    with pytest.raises(TypeError):
        hydrate._compiled.diff_entries([], [(1, D, 0, 0, 0, None, None, ())], mf.DIR)


def _random_tree(rng: random.Random, prefix: str, depth: int) -> list[mf.FileEntry]:
    out: list[mf.FileEntry] = []
    for i in range(rng.randrange(1, 5)):
        path = f"{prefix}/{'d' if depth and rng.random() < 0.4 else 'f'}{i}"
        if path.rsplit("/", 1)[1].startswith("d"):
            out.append(_dir(path, rng.choice((0o755, 0o555)), rng.randrange(3)))
            out += _random_tree(rng, path, depth - 1)
        elif rng.random() < 0.2:
            out.append(_link(path, rng.choice(("f0", "f1", "../x")), rng.randrange(3)))
        else:
            out.append(_file(path, rng.choice("abc"), rng.choice((0o644, 0o755)), rng.randrange(3)))
    return out


def _mutate(rng: random.Random, entries: list[mf.FileEntry]) -> list[mf.FileEntry]:
    out: list[mf.FileEntry] = []
    skip = None
    for f in entries:
        if skip and f.path.startswith(skip):
            continue
        skip = None
        r = rng.random()
        if r < 0.05:  # removed, with what it holds
            skip = f.path + "/"
        elif r < 0.1 and f.type != D:  # retyped into an empty directory
            out.append(_dir(f.path, mtime=f.mtime_ns))
        elif r < 0.15 and f.type == D:  # a directory (and what it held) becomes a file
            out.append(_file(f.path))
            skip = f.path + "/"
        elif r < 0.3:
            out.append(f._replace(mtime_ns=f.mtime_ns + 1))
        elif r < 0.35:
            out.append(f._replace(mode=f.mode ^ 0o200))
        elif r < 0.4 and f.type == S:
            out.append(f._replace(target="f2"))
        elif r < 0.45 and f.type == F:
            out.append(_file(f.path, "z", f.mode, f.mtime_ns))
        else:
            out.append(f)
        if rng.random() < 0.05:
            out.append(_file(f.path + "-new"))
    return out


def test_random_trees_give_the_python_result() -> None:
    rng = random.Random(13)
    for _ in range(300):
        held = [_dir("nm")] + _random_tree(rng, "nm", 3)
        _both(held, _mutate(rng, held))
