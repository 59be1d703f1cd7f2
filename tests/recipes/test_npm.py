"""The npm recipe (recipes/npm.sh) with real npm against the npm registry, on a loopback fleet.

A tiny real lockfile (is-number, left-pad, debug -> ms); v2 changes one dependency (is-number 7 -> 6).
What npm did is counted from its own summary lines ("added 4 packages", "changed 1 package").
"""

from __future__ import annotations

import hashlib

import pytest

from tests.recipes.recipekit import DATA, files_of, key_of, require_tool

pytestmark = pytest.mark.integration

PATHS = ("node_modules", ".npm-cache")
CHECK = (
    "node -e \"for (const p of ['is-number', 'left-pad', 'debug', 'ms']) "
    "console.log('version ' + p + ' ' + require(p + '/package.json').version); "
    "require('debug'); if (!require('is-number')(5)) process.exit(3)\""
)
NPM_SUMMARY = r"^(added|removed|changed) \d+ package|^up to date"


def npm_files(version: str) -> dict[str, bytes]:
    return files_of(DATA / "npm" / version, recipe="npm.sh")


def key(files: dict[str, bytes], prefix: str = "web/npm-") -> str:
    return key_of(prefix, files, "package.json", "package-lock.json")


def build(f, files, prefix="web/npm-", *, key_=None):
    return f.run(
        f"sh recipes/npm.sh && {CHECK}", files, key=key_ or key(files, prefix), restore=(prefix,), paths=PATHS
    )


@pytest.fixture(autouse=True)
def _npm():
    require_tool(
        "npm",
        "apt-get install npm (Debian), or Node.js 20+ from nodejs.org; scripts/system_deps.sh installs it",
    )


def test_cold_then_exact_hit_skips_install_then_one_changed_dependency_changes_one_package(recipe_fleet):
    f = recipe_fleet
    v1, v2 = npm_files("v1"), npm_files("v2")

    cold = build(f, v1)
    assert cold.ok, cold.explain()
    assert cold.env("STOKER_CACHE_HIT") == "none"
    assert cold.count(r"^added 4 packages") == 1, cold.output
    assert "version is-number 7.0.0" in cold.lines
    assert cold.finished.cache.saved

    exact = build(f, v1)
    assert exact.ok, exact.explain()
    assert exact.env("STOKER_CACHE_HIT") == "exact"
    assert exact.count(NPM_SUMMARY) == 0, f"npm ran on an exact hit:\n{exact.output}"
    assert exact.count(r"^stoker-npm: dependencies ready \(skip\)") == 1, exact.output
    assert {"version is-number 7.0.0", "version ms 2.1.2"} <= set(exact.lines)

    partial = build(f, v2)
    assert partial.ok, partial.explain()
    assert (partial.env("STOKER_CACHE_HIT"), partial.env("STOKER_CACHE_RESTORED_KEY")) == ("partial", key(v1))
    assert partial.count(NPM_SUMMARY) == 1 and partial.count(r"^changed 1 package in") == 1, partial.output
    assert "version is-number 6.0.0" in partial.lines and "version ms 2.1.2" in partial.lines
    assert partial.finished.cache.saved

    # The updated tree was saved under v2's key: the next v2 build is an exact hit with nothing to install.
    again = build(f, v2)
    assert again.env("STOKER_CACHE_HIT") == "exact" and again.count(NPM_SUMMARY) == 0, again.output
    assert "version is-number 6.0.0" in again.lines

    assert f.home_contents() == [], "a build wrote into the agent's HOME"


def test_package_json_out_of_step_with_the_lockfile_fails_as_npm_ci_does(recipe_fleet):
    f = recipe_fleet
    v1 = npm_files("v1")
    assert build(f, v1).ok
    stale = dict(v1)  # someone bumped left-pad in package.json and did not update package-lock.json
    stale["package.json"] = v1["package.json"].replace(b'"left-pad":"1.3.0"', b'"left-pad":"1.2.0"')
    assert stale["package.json"] != v1["package.json"]
    bad = build(f, stale)
    assert not bad.ok and bad.finished.exit_code != 0
    assert bad.env("STOKER_CACHE_HIT") == "partial"
    assert (
        bad.count(r"`npm ci` can only install packages when your package.json and package-lock.json") == 1
    ), bad.output
    assert bad.count(r"^version ") == 0 and not bad.finished.cache.saved

    # The lockfile's record of package.json edited along with package.json, its packages left as they were
    # (no npm writes that): the install goes ahead, the tree it made is not the lockfile's, npm ci decides.
    lock = v1["package-lock.json"].decode()
    root_end = lock.index('"node_modules/')
    hand = dict(stale)
    hand["package-lock.json"] = (
        lock[:root_end].replace('"left-pad": "1.3.0"', '"left-pad": "1.2.0"') + lock[root_end:]
    ).encode()
    assert hand["package-lock.json"] != v1["package-lock.json"]
    bad = build(f, hand)
    assert not bad.ok and bad.env("STOKER_CACHE_HIT") == "partial"
    assert bad.count(r"^stoker-npm: node_modules/left-pad is 1.2.0, package-lock.json says 1.3.0$") == 1
    assert bad.count(r"the installed tree is not package-lock.json's: npm ci decides") == 1, bad.output
    assert (
        bad.count(r"`npm ci` can only install packages when your package.json and package-lock.json") == 1
    ), bad.output
    assert bad.count(r"^version ") == 0 and not bad.finished.cache.saved

    # The same mistake on a cold node fails the same way (npm ci itself).
    cold = build(f, stale, prefix="other/npm-")
    assert not cold.ok and cold.env("STOKER_CACHE_HIT") == "none"
    assert cold.count(r"`npm ci` can only install packages when your package.json and package-lock.json") == 1

    # A key made from the lockfile alone (as many actions/cache setups do) gives an exact hit on the stale
    # package.json: the recipe's stamp, which hashes package.json too, disagrees, so the lockfile check
    # runs, and fails, instead of the install being skipped.
    lock_only = key_of("lock/npm-", v1, "package-lock.json")
    assert build(f, v1, "lock/npm-", key_=lock_only).ok
    skipped = build(f, stale, "lock/npm-", key_=lock_only)
    assert not skipped.ok and skipped.env("STOKER_CACHE_HIT") == "exact"
    assert (
        skipped.count(r"`npm ci` can only install packages when your package.json and package-lock.json") == 1
    ), skipped.output
    assert skipped.count(r"^version ") == 0


def test_an_exact_entry_made_on_another_runtime_is_not_used_as_exact(recipe_fleet):
    f = recipe_fleet
    v1 = npm_files("v1")
    inputs = key_of("", v1, "package.json", "package-lock.json")
    # What a node on another platform would have saved under the same key (a key without the runtime in it):
    # its tree with its recipe stamp.
    full = hashlib.sha256(v1["package.json"] + v1["package-lock.json"]).hexdigest()
    assert full.startswith(inputs)
    foreign = (
        "mkdir -p node_modules/is-number && "
        'echo \'{"name":"is-number","version":"7.0.0-built-on-arm64"}\' > '
        "node_modules/is-number/package.json && "
        f"echo 'inputs={full} runtime=linux-arm64-node-abi108-musl' > node_modules/.stoker-recipe"
    )
    made = f.run(foreign, v1, key=key(v1), paths=PATHS)
    assert made.ok, made.explain()

    b = build(f, v1)
    assert b.ok, b.explain()
    assert b.env("STOKER_CACHE_HIT") == "exact"
    assert b.count(r"made for linux-arm64-node-abi108-musl, this node runs linux-") == 1, b.output
    assert b.count(r"^added 4 packages") == 1, b.output
    assert "version is-number 7.0.0" in b.lines
