"""The pip recipe (recipes/pip.sh) with real pip against PyPI, on a loopback fleet.

A tiny hashed lockfile (iniconfig, python-dateutil -> six); v2 changes one pin (six 1.16.0 -> 1.17.0).
What pip did is counted from its own lines ("Successfully installed ...", "Collecting ...").
"""

from __future__ import annotations

import hashlib

import pytest

from tests.recipes.recipekit import DATA, files_of, key_of, require_tool

pytestmark = pytest.mark.integration

PATHS = (".venv", ".pip-cache")
CHECK = (
    '.venv/bin/python -c "import importlib.metadata as m, dateutil.parser, iniconfig, six; '
    "[print('version', p, m.version(p)) for p in ('six', 'python-dateutil', 'iniconfig')]; "
    "assert dateutil.parser.parse('2024-01-02').day == 2\""
)


def pip_files(version: str) -> dict[str, bytes]:
    return files_of(DATA / "pip" / version, recipe="pip.sh")


def key(files, prefix="api/pip-"):
    return key_of(prefix, files, "requirements.txt")


def build(f, files, prefix="api/pip-", then=CHECK):
    return f.run(
        f"sh recipes/pip.sh && {then}",
        files,
        key=key(files, prefix),
        restore=(prefix,),
        paths=PATHS,
        workspace="api",
    )


@pytest.fixture(autouse=True)
def _python():
    require_tool("python3", "apt-get install python3 python3-venv (Debian)")


def test_cold_then_exact_hit_skips_install_then_one_changed_pin_installs_one_package(recipe_fleet):
    f = recipe_fleet
    v1, v2 = pip_files("v1"), pip_files("v2")

    cold = build(f, v1)
    assert cold.ok, cold.explain()
    assert cold.env("STOKER_CACHE_HIT") == "none"
    assert (
        cold.count(r"^Successfully installed iniconfig-2.0.0 python-dateutil-2.9.0.post0 six-1.16.0$") == 1
    ), cold.output
    assert "version six 1.16.0" in cold.lines and cold.finished.cache.saved

    # Exact: pip does not run at all, and the venv's own scripts work from the new workspace path.
    exact = build(f, v1, then=CHECK + " && .venv/bin/pip --version")
    assert exact.ok, exact.explain()
    assert exact.env("STOKER_CACHE_HIT") == "exact"
    assert exact.count(r"^(Collecting|Successfully installed|Requirement already satisfied)") == 0, (
        exact.output
    )
    assert exact.count(r"^stoker-pip: dependencies ready \(skip\)") == 1
    assert "version six 1.16.0" in exact.lines and exact.count(r"^pip \d+.* from .*/\.venv/") == 1, (
        exact.output
    )

    partial = build(f, v2)
    assert partial.ok, partial.explain()
    assert (partial.env("STOKER_CACHE_HIT"), partial.env("STOKER_CACHE_RESTORED_KEY")) == ("partial", key(v1))
    assert partial.count(r"^Successfully installed ") == 1, partial.output
    assert partial.count(r"^Successfully installed six-1.17.0$") == 1, partial.output
    assert partial.count(r"^Requirement already satisfied: (iniconfig|python-dateutil)") == 2, partial.output
    assert "version six 1.17.0" in partial.lines and partial.finished.cache.saved

    assert f.home_contents() == [], "a build wrote into the agent's HOME"


def test_a_dropped_package_is_uninstalled_and_a_stale_hash_fails_as_pip_fails(recipe_fleet):
    f = recipe_fleet
    v1, v2 = pip_files("v1"), pip_files("v2")
    assert build(f, v1).ok

    # A partial hit after a package left the lockfile: pip install only adds, the recipe removes it.
    smaller = dict(v1)
    lines = v1["requirements.txt"].decode().splitlines(keepends=True)
    drop = next(i for i, line in enumerate(lines) if line.startswith("iniconfig=="))
    smaller["requirements.txt"] = "".join(lines[:drop] + lines[drop + 2 :]).encode()
    b = build(
        f,
        smaller,
        then='.venv/bin/python -c "import importlib.util as u; '
        "print('iniconfig present', bool(u.find_spec('iniconfig')))\"",
    )
    assert b.ok, b.explain()
    assert b.env("STOKER_CACHE_HIT") == "partial"
    assert b.count(r"Successfully uninstalled iniconfig-2.0.0") == 1, b.output
    assert "iniconfig present False" in b.lines

    # six's pin moved to 1.17.0 but the hash is still 1.16.0's (not what pip-compile writes): pip refuses.
    stale = dict(v2)
    stale["requirements.txt"] = v2["requirements.txt"].replace(
        b"4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274",
        b"8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254",
    )
    bad = build(f, stale)
    assert not bad.ok and bad.env("STOKER_CACHE_HIT") == "partial"
    assert bad.count(r"THESE PACKAGES DO NOT MATCH THE HASHES") == 1, bad.output
    assert bad.count(r"^version ") == 0 and not bad.finished.cache.saved

    # The same lockfile on a cold node fails the same way (a fresh venv, the same pip install).
    cold = build(f, stale, prefix="other/pip-")
    assert not cold.ok and cold.env("STOKER_CACHE_HIT") == "none"
    assert cold.count(r"THESE PACKAGES DO NOT MATCH THE HASHES") == 1, cold.output
    assert not cold.finished.cache.saved


def test_an_exact_entry_made_by_another_interpreter_is_not_used_as_exact(recipe_fleet):
    f = recipe_fleet
    v1 = pip_files("v1")
    inputs = hashlib.sha256(v1["requirements.txt"]).hexdigest()
    foreign = (
        "mkdir -p .venv/bin && printf '#!/bin/sh\\nexit 9\\n' > .venv/bin/python && chmod +x "
        ".venv/bin/python && "
        f"printf 'inputs={inputs} runtime=linux-aarch64-cpython-39\\nvenv=/elsewhere/.venv\\n' "
        "> .venv/.stoker-recipe"
    )
    assert f.run(foreign, v1, key=key(v1), paths=PATHS, workspace="api").ok
    b = build(f, v1)
    assert b.ok, b.explain()
    assert b.env("STOKER_CACHE_HIT") == "exact"
    assert b.count(r"made for linux-aarch64-cpython-39, this node runs linux-") == 1, b.output
    assert b.count(r"^Successfully installed iniconfig-2.0.0 python-dateutil-2.9.0.post0 six-1.16.0$") == 1
    assert "version six 1.16.0" in b.lines
