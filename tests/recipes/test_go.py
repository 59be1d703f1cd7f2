"""The Go recipe (recipes/go.sh) with the real Go toolchain (Debian's golang-go), on a loopback fleet.

proxy.golang.org is not reachable from these machines, so the modules come from a module proxy directory
the test writes (GOPROXY=file://..., the layout `go help goproxy` documents: @v/list, .info, .mod, .zip).
Everything else is the real `go`: it downloads, verifies against go.sum, and compiles. What go did is
counted from `go build -x` (each compiler run is a line naming the compile tool) and from the module
archives in the module cache before and after the recipe; v2 moves one module to a new version.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.recipes.recipekit import REPO, key_of, require_tool

pytestmark = pytest.mark.integration

PATHS = (".gomodcache", ".gocache")
MAIN = b"""package main

import (
\t"fmt"

\t"example.com/greet"
\t"example.com/shout"
)

func main() { fmt.Println("says", greet.Hello(), shout.Loud()) }
"""
CHECK = (
    "{ go build -x -o app . 2> build.log || { cat build.log; exit 1; }; }"
    " && echo compiled $(grep -c '/compile ' build.log) && ./app"
)


def write_proxy(root: Path) -> None:
    """Two modules: greet v1.0.0 and v1.1.0, shout v1.0.0."""
    for module, version, body in (
        ("greet", "v1.0.0", 'func Hello() string { return "hello" }'),
        ("greet", "v1.1.0", 'func Hello() string { return "hi" }'),
        ("shout", "v1.0.0", 'func Loud() string { return "HEY" }'),
    ):
        d = root / "example.com" / module / "@v"
        d.mkdir(parents=True, exist_ok=True)
        mod = f"module example.com/{module}\n\ngo 1.19\n"
        (d / f"{version}.mod").write_text(mod)
        (d / f"{version}.info").write_text(json.dumps({"Version": version, "Time": "2026-01-01T00:00:00Z"}))
        with zipfile.ZipFile(d / f"{version}.zip", "w") as z:
            z.writestr(f"example.com/{module}@{version}/go.mod", mod)
            z.writestr(f"example.com/{module}@{version}/{module}.go", f"package {module}\n\n{body}\n")
        with (d / "list").open("a") as f:
            f.write(version + "\n")


def project(tmp: Path, proxy: Path, greet: str) -> dict[str, bytes]:
    """go.mod, go.sum (made by the real go against the proxy), main.go and the recipe."""
    d = tmp / f"project-{greet}"
    d.mkdir()
    (d / "go.mod").write_text(
        f"module example.com/app\n\ngo 1.19\n\nrequire (\n\texample.com/greet {greet}\n"
        "\texample.com/shout v1.0.0\n)\n"
    )
    (d / "main.go").write_bytes(MAIN)
    env = {**os.environ, "GOPROXY": f"file://{proxy}", "GOSUMDB": "off", "GOFLAGS": "-mod=mod",
           "GOMODCACHE": str(tmp / "sum-modcache"), "GOCACHE": str(tmp / "sum-cache")}  # fmt: skip
    subprocess.run(["go", "mod", "download", "all"], cwd=d, env=env, check=True, capture_output=True)
    subprocess.run(["go", "mod", "tidy"], cwd=d, env=env, check=True, capture_output=True)
    files = {name: (d / name).read_bytes() for name in ("go.mod", "go.sum", "main.go")}
    files["recipes/go.sh"] = (REPO / "recipes" / "go.sh").read_bytes()
    return files


@pytest.fixture
def recipe_tools():
    require_tool("go", "apt-get install golang-go (Debian; scripts/system_deps.sh installs it)")
    return {}


def test_cold_then_exact_hit_downloads_and_compiles_nothing_then_one_module_changed(recipe_fleet, tmp_path):
    f = recipe_fleet
    proxy = tmp_path / "proxy"
    write_proxy(proxy)
    v1, v2 = project(tmp_path, proxy, "v1.0.0"), project(tmp_path, proxy, "v1.1.0")
    env = {"GOPROXY": f"file://{proxy}", "GOSUMDB": "off"}

    def build(files):
        return f.run(
            ". recipes/go.sh && " + CHECK,
            files,
            key=key_of("api/go-", files, "go.sum"),
            restore=("api/go-",),
            paths=PATHS,
            workspace="api",
            env=env,
        )

    cold = build(v1)
    assert cold.ok, cold.explain()
    assert cold.env("STOKER_CACHE_HIT") == "none"
    compiled_cold = int(next(ln.split()[1] for ln in cold.lines if ln.startswith("compiled ")))
    assert compiled_cold > 10, cold.output  # the standard library's packages, then greet, shout, main
    assert "says hello HEY" in cold.lines and cold.finished.cache.saved

    # Exact: nothing downloaded (no proxy at all: GOPROXY=off) and, the build cache restored into a new
    # workspace path, nothing compiled but the link of main.
    exact = f.run(
        ". recipes/go.sh && " + CHECK,
        v1,
        key=key_of("api/go-", v1, "go.sum"),
        restore=("api/go-",),
        paths=PATHS,
        workspace="api",
        env={"GOPROXY": "off", "GOSUMDB": "off"},
    )
    assert exact.ok, exact.explain()
    assert exact.env("STOKER_CACHE_HIT") == "exact"
    assert exact.count(r"^stoker-go: exact hit .*no download") == 1, exact.output
    assert "compiled 0" in exact.lines, exact.output
    assert "says hello HEY" in exact.lines

    # Partial: greet moves to v1.1.0; only it is fetched (the module cache's zips go from 2 to 3) and
    # compiled (with main); shout and the standard library are reused.
    zips = "$(ls .gomodcache/cache/download/example.com/*/@v/*.zip 2>/dev/null | wc -l)"
    partial = f.run(
        f"echo zips-before {zips}; . recipes/go.sh && echo zips-after {zips} && " + CHECK,
        v2,
        key=key_of("api/go-", v2, "go.sum"),
        restore=("api/go-",),
        paths=PATHS,
        workspace="api",
        env=env,
    )
    assert partial.ok, partial.explain()
    assert partial.env("STOKER_CACHE_HIT") == "partial"
    assert partial.count(r"^stoker-go: partial hit") == 1, partial.output
    assert "zips-before 2" in partial.lines and "zips-after 3" in partial.lines, partial.output
    compiled = int(next(ln.split()[1] for ln in partial.lines if ln.startswith("compiled ")))
    assert 1 <= compiled <= 2, partial.output  # greet (and main), never the standard library or shout
    assert "says hi HEY" in partial.lines
    assert f.home_contents() == [], "a build wrote into the agent's HOME"


def test_a_go_mod_out_of_step_with_go_sum_fails_as_go_fails(recipe_fleet, tmp_path):
    f = recipe_fleet
    proxy = tmp_path / "proxy"
    write_proxy(proxy)
    v1, v2 = project(tmp_path, proxy, "v1.0.0"), project(tmp_path, proxy, "v1.1.0")
    stale = dict(v1)
    stale["go.mod"] = v2["go.mod"]  # greet bumped in go.mod, go.sum not updated
    bad = f.run(
        ". recipes/go.sh && " + CHECK,
        stale,
        key=key_of("api/go-", stale, "go.sum"),
        restore=("api/go-",),
        paths=PATHS,
        workspace="api",
        env={"GOPROXY": f"file://{proxy}", "GOSUMDB": "off"},
    )
    assert not bad.ok
    assert bad.count(r"missing go\.sum entry") >= 1, bad.output
    assert not any(ln.startswith("says ") for ln in bad.lines)
