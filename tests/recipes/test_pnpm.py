"""The pnpm recipe (recipes/pnpm.sh) with real pnpm (pinned in tests/recipes/tools) against the npm
registry, on a loopback fleet.

The npm test's tiny tree (is-number, left-pad, debug -> ms) locked by pnpm; v2 changes one dependency
(is-number 7 -> 6). What pnpm did is counted from its own summary line ("Packages: +1 -1"), and that it
kept the restored tree from the inode of an unchanged package's file, read before and after the recipe.
"""

from __future__ import annotations

import pytest

from tests.recipes.recipekit import DATA, files_of, key_of, npm_registry_tool, require_tool

pytestmark = pytest.mark.integration

PATHS = ("node_modules",)
CHECK = (
    "node -e \"for (const p of ['is-number', 'left-pad', 'debug']) "
    "console.log('version ' + p + ' ' + require(p + '/package.json').version); "
    "require('debug'); if (!require('is-number')(5)) process.exit(3)\""
)
PNPM_RAN = r"^Packages: |^Progress: |^Done in "
UNCHANGED = "node_modules/.pnpm/left-pad@1.3.0/node_modules/left-pad/index.js"
STALE_LOCKFILE = r"Cannot install with \"frozen-lockfile\" because pnpm-lock.yaml is not up to date"


def pnpm_files(version: str) -> dict[str, bytes]:
    return files_of(DATA / "pnpm" / version, recipe="pnpm.sh")


def key(files: dict[str, bytes], prefix: str = "web/pnpm-") -> str:
    return key_of(prefix, files, "package.json", "pnpm-lock.yaml")


def build(f, files, prefix="web/pnpm-", *, key_=None, before=""):
    return f.run(
        f"{before}sh recipes/pnpm.sh && {CHECK}",
        files,
        key=key_ or key(files, prefix),
        restore=(prefix,),
        paths=PATHS,
    )


@pytest.fixture
def recipe_tools():
    require_tool("node", "apt-get install nodejs npm (Debian); scripts/system_deps.sh installs them")
    return {"pnpm": npm_registry_tool("pnpm")}


def test_cold_then_exact_hit_skips_install_then_one_changed_dependency_changes_one_package(recipe_fleet):
    f = recipe_fleet
    v1, v2 = pnpm_files("v1"), pnpm_files("v2")

    cold = build(f, v1)
    assert cold.ok, cold.explain()
    assert cold.env("STOKER_CACHE_HIT") == "none"
    assert cold.count(r"^Packages: \+4\b") == 1, cold.output
    assert "version is-number 7.0.0" in cold.lines and cold.finished.cache.saved

    exact = build(f, v1)
    assert exact.ok, exact.explain()
    assert exact.env("STOKER_CACHE_HIT") == "exact"
    assert exact.count(PNPM_RAN) == 0, f"pnpm ran on an exact hit:\n{exact.output}"
    assert exact.count(r"^stoker-pnpm: dependencies ready \(skip\)") == 1, exact.output
    assert {"version is-number 7.0.0", "version debug 4.3.4"} <= set(exact.lines)

    # The tree comes from another workspace (another path): pnpm must keep it, not recreate it.
    identity = f"stat -c 'identity %i' {UNCHANGED}"
    partial = f.run(
        f"{identity} && sh recipes/pnpm.sh && {identity} && {CHECK}",
        v2,
        key=key(v2),
        restore=("web/pnpm-",),
        paths=PATHS,
    )
    assert partial.ok, partial.explain()
    assert (partial.env("STOKER_CACHE_HIT"), partial.env("STOKER_CACHE_RESTORED_KEY")) == ("partial", key(v1))
    assert partial.count(r"^Packages: ") == 1 and partial.count(r"^Packages: \+1 -1\b") == 1, partial.output
    assert partial.count(r"Unexpected store location|has to be recreated") == 0, partial.output
    inodes = [line for line in partial.lines if line.startswith("identity ")]
    assert len(inodes) == 2 and inodes[0] == inodes[1], f"left-pad was reinstalled: {inodes}"
    assert {"version is-number 6.0.0", "version left-pad 1.3.0"} <= set(partial.lines)
    assert partial.finished.cache.saved

    again = build(f, v2)
    assert again.env("STOKER_CACHE_HIT") == "exact" and again.count(PNPM_RAN) == 0, again.output
    assert "version is-number 6.0.0" in again.lines

    assert f.home_contents() == [], "a build wrote into the agent's HOME"


def test_package_json_out_of_step_with_the_lockfile_fails_as_pnpm_fails(recipe_fleet):
    f = recipe_fleet
    v1 = pnpm_files("v1")
    assert build(f, v1).ok
    stale = dict(v1)  # left-pad bumped in package.json, pnpm-lock.yaml not updated
    stale["package.json"] = v1["package.json"].replace(b'"left-pad":"1.3.0"', b'"left-pad":"1.2.0"')
    assert stale["package.json"] != v1["package.json"]

    bad = build(f, stale)
    assert not bad.ok and bad.env("STOKER_CACHE_HIT") == "partial"
    assert bad.count(STALE_LOCKFILE) == 1, bad.output
    assert bad.count(r"^version ") == 0 and not bad.finished.cache.saved

    cold = build(f, stale, prefix="other/pnpm-")
    assert not cold.ok and cold.env("STOKER_CACHE_HIT") == "none"
    assert cold.count(STALE_LOCKFILE) == 1, cold.output

    # A key made from the lockfile alone gives an exact hit on the stale manifest: the recipe's stamp
    # (which hashes package.json too) disagrees, so pnpm runs, and fails, instead of skipping the install.
    lock_only = key_of("lock/pnpm-", v1, "pnpm-lock.yaml")
    assert build(f, v1, "lock/pnpm-", key_=lock_only).ok
    skipped = build(f, stale, "lock/pnpm-", key_=lock_only)
    assert not skipped.ok and skipped.env("STOKER_CACHE_HIT") == "exact"
    assert skipped.count(STALE_LOCKFILE) == 1, skipped.output


def test_an_exact_entry_made_on_another_runtime_is_not_used_as_exact(recipe_fleet):
    f = recipe_fleet
    v1 = pnpm_files("v1")
    inputs = key_of("", v1, "package.json", "pnpm-lock.yaml", length=64)
    foreign = (
        "mkdir -p node_modules/is-number && "
        'echo \'{"name":"is-number","version":"7.0.0-built-on-arm64"}\' > '
        "node_modules/is-number/package.json && "
        f"printf 'inputs={inputs} runtime=linux-arm64-node-abi108-musl\\nworkspace=/elsewhere\\n' "
        "> node_modules/.stoker-recipe"
    )
    assert f.run(foreign, v1, key=key(v1), paths=PATHS).ok

    b = build(f, v1)
    assert b.ok, b.explain()
    assert b.env("STOKER_CACHE_HIT") == "exact"
    assert b.count(r"made for linux-arm64-node-abi108-musl, this node runs linux-") == 1, b.output
    assert b.count(r"^Packages: \+4\b") == 1, b.output
    assert "version is-number 7.0.0" in b.lines
