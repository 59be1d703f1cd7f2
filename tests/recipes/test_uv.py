"""The uv recipe (recipes/uv.sh) with real uv (the `test` extra pins it) against PyPI, on a loopback fleet.

A tiny project (pyflakes, python-dateutil -> six) locked by uv; v2 changes one pin (six 1.16.0 -> 1.17.0).
What uv did is counted from its own lines ("Installed 1 package", " + six==1.17.0"), and that it kept the
restored venv from the inode of an unchanged package's file, read before and after the recipe.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.recipes.recipekit import DATA, files_of, key_of, require_tool

pytestmark = pytest.mark.integration

PATHS = (".venv", ".uv-cache")
INPUTS = ("pyproject.toml", "uv.lock")
CHECK = (
    '.venv/bin/python -c "import importlib.metadata as m, dateutil.parser, pyflakes, six; '
    "[print('version', p, m.version(p)) for p in ('six', 'python-dateutil', 'pyflakes')]; "
    "assert dateutil.parser.parse('2024-01-02').day == 2\""
)
UV_RAN = r"^(Resolved|Prepared|Installed|Uninstalled|Audited) \d+ package"
IDENTITY = "stat -c 'identity %i' .venv/lib/python3*/site-packages/pyflakes/api.py"  # in v1 and v2
STALE_LOCKFILE = r"The lockfile at `uv.lock` needs to be updated, but `--locked` was provided"


def uv_files(version: str) -> dict[str, bytes]:
    return files_of(DATA / "uv" / version, recipe="uv.sh")


def key(files: dict[str, bytes], prefix: str = "api/uv-") -> str:
    return key_of(prefix, files, *INPUTS)


def build(f, files, prefix="api/uv-", *, key_=None, around="", then=CHECK):
    """The recipe then the project's check; ``around``: a command run before the recipe and after it."""
    steps = [around, "sh recipes/uv.sh", around, then]
    return f.run(
        " && ".join(s for s in steps if s),
        files,
        key=key_ or key(files, prefix),
        restore=(prefix,),
        paths=PATHS,
        workspace="api",
    )


@pytest.fixture
def recipe_tools():
    require_tool("python3", "apt-get install python3 (Debian)")
    try:
        from uv import find_uv_bin
    except ImportError:
        pytest.fail("uv is not installed: scripts/setup.sh installs it (the test extra)", pytrace=False)
    return {"uv": Path(find_uv_bin())}


def test_cold_then_exact_hit_skips_install_then_one_changed_pin_installs_one_package(recipe_fleet):
    f = recipe_fleet
    v1, v2 = uv_files("v1"), uv_files("v2")

    cold = build(f, v1)
    assert cold.ok, cold.explain()
    assert cold.env("STOKER_CACHE_HIT") == "none"
    assert cold.count(r"^Installed 3 packages in ") == 1, cold.output
    assert "version six 1.16.0" in cold.lines and cold.finished.cache.saved

    # Exact: uv does not run at all, and the venv's own scripts work from the new workspace path.
    exact = build(f, v1, then=CHECK + " && .venv/bin/pyflakes --version")
    assert exact.ok, exact.explain()
    assert exact.env("STOKER_CACHE_HIT") == "exact"
    assert exact.count(UV_RAN) == 0, f"uv ran on an exact hit:\n{exact.output}"
    assert exact.count(r"^stoker-uv: dependencies ready \(skip\)") == 1, exact.output
    assert "version six 1.16.0" in exact.lines and exact.count(r"^3\.2\.0 Python 3") == 1, exact.output

    partial = build(f, v2, around=IDENTITY)
    assert partial.ok, partial.explain()
    assert (partial.env("STOKER_CACHE_HIT"), partial.env("STOKER_CACHE_RESTORED_KEY")) == ("partial", key(v1))
    assert partial.count(r"^Installed 1 package in ") == 1, partial.output
    assert partial.count(r"^Uninstalled 1 package in ") == 1, partial.output
    assert partial.count(r"^ [-+] ") == 2 and partial.count(r"^ \+ six==1\.17\.0$") == 1, partial.output
    inodes = [line for line in partial.lines if line.startswith("identity ")]
    assert len(inodes) == 2 and inodes[0] == inodes[1], f"pyflakes was reinstalled: {inodes}"
    assert {"version six 1.17.0", "version pyflakes 3.2.0"} <= set(partial.lines)
    assert partial.finished.cache.saved

    again = build(f, v2)
    assert again.env("STOKER_CACHE_HIT") == "exact" and again.count(UV_RAN) == 0, again.output
    assert "version six 1.17.0" in again.lines

    assert f.home_contents() == [], "a build wrote into the agent's HOME"


def test_pyproject_out_of_step_with_the_lockfile_fails_as_uv_fails(recipe_fleet):
    f = recipe_fleet
    v1, v2 = uv_files("v1"), uv_files("v2")
    assert build(f, v1).ok
    stale = dict(v1)  # six bumped in pyproject.toml, uv.lock not updated
    stale["pyproject.toml"] = v2["pyproject.toml"]

    bad = build(f, stale)
    assert not bad.ok and bad.env("STOKER_CACHE_HIT") == "partial"
    assert bad.count(STALE_LOCKFILE) == 1, bad.output
    assert bad.count(r"^version ") == 0 and not bad.finished.cache.saved

    cold = build(f, stale, prefix="other/uv-")
    assert not cold.ok and cold.env("STOKER_CACHE_HIT") == "none"
    assert cold.count(STALE_LOCKFILE) == 1, cold.output

    # A key made from the lockfile alone gives an exact hit on the stale pyproject.toml: the recipe's stamp
    # (which hashes pyproject.toml too) disagrees, so uv runs, and fails, instead of skipping the install.
    lock_only = key_of("lock/uv-", v1, "uv.lock")
    assert build(f, v1, "lock/uv-", key_=lock_only).ok
    skipped = build(f, stale, "lock/uv-", key_=lock_only)
    assert not skipped.ok and skipped.env("STOKER_CACHE_HIT") == "exact"
    assert skipped.count(STALE_LOCKFILE) == 1, skipped.output


def test_an_exact_entry_made_by_another_interpreter_is_not_used_as_exact(recipe_fleet):
    f = recipe_fleet
    v1 = uv_files("v1")
    inputs = key_of("", v1, *INPUTS, length=64)
    foreign = (
        "mkdir -p .venv/bin && printf '#!/bin/sh\\nexit 9\\n' > .venv/bin/python && chmod +x "
        ".venv/bin/python && "
        f"echo 'inputs={inputs} runtime=linux-aarch64-cpython-39' > .venv/.stoker-recipe"
    )
    assert f.run(foreign, v1, key=key(v1), paths=PATHS, workspace="api").ok
    b = build(f, v1)
    assert b.ok, b.explain()
    assert b.env("STOKER_CACHE_HIT") == "exact"
    assert b.count(r"made for linux-aarch64-cpython-39, this node runs linux-") == 1, b.output
    assert b.count(r"^Installed 3 packages in ") == 1, b.output
    assert "version six 1.16.0" in b.lines
