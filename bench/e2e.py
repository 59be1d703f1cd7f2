"""End to end with real package managers (issue 21): the time from ``SubmitBuild`` to the end of the
dependency step, for the same real lockfile, done five ways in one run on one loopback fleet:

  (a) managed CI     fresh workspace, empty package-manager cache: ``npm ci`` / a fresh venv + pip install
  (b) actions/cache  restore a tar.zst of the package manager's cache (as actions/cache and setup-node
                     or setup-python's ``cache:`` do), then the same clean install. For pip, a wheelhouse
                     (``pip download``) installed with ``--no-index``: pip's own cache keeps only responses
                     whose headers allow it (Cache-Control max-age, Expires or ETag), which PyPI sends and
                     some mirrors and proxies (this machine's among them) drop, leaving it empty; the
                     wheelhouse works either way and skips the index queries a real pip cache still makes,
                     which favours (b)
  (c) stoker exact   the recipe (recipes/npm.sh, recipes/pip.sh) on the node holding the entry, once its
                     ready tree is back (the unpacked copy the agent re-makes in the background after
                     each build, as a build minutes after the last one finds it)
  (c') right behind  the same build again at once, before that ready tree is re-made
  (d) stoker partial the recipe after one dependency changed (npm: rxjs 7.8.1 -> 7.8.0; pip: requests
                     2.34.2 -> 2.34.1), restoring the previous entry
  (e) busy warm node the warm node runs another build for --busy-s seconds: where the scheduler sends
                     the exact-hit build and how long it took, against the same build pinned to the warm
                     node (waiting for it)

The lockfiles are bench/package.json + bench/package-lock.json (457 packages, ~384 MB of node_modules) and
bench/requirements-e2e.txt (32 packages, ~360 MB). Every build's HOME is an empty directory of the bench's
own and every package-manager cache lives in the build's workspace, so (a) is truly cold and nothing leaks
from one build to the next except through stoker's cache (or, for (b), the tarball). pip builds ignore the
machine's pip configuration (PIP_CONFIG_FILE=/dev/null): they fetch from PyPI as a clean CI machine does.
The tarball of (b) is read from local disk: its download from a cache service is not counted, which
favours (b).

    python bench/e2e.py --json                 # both ecosystems
    python bench/e2e.py --ecosystems npm --exact-runs 5
    python bench/e2e.py --ecosystems pip --pip-requirements small.txt --skip-busy   # a quick try (it must pin
                                                                                    # requests==2.34.2)

Ratios matter, not seconds: the machine is shared. Targets: (c) <= 0.1x (a) and <= 0.3x (b); (d) <= 0.3x (a).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from stoker.cli.client import warmth_name
from stoker.demo import local_fleet
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2

REPO = Path(__file__).resolve().parents[1]
MARK = "E2E-DEPENDENCIES-READY"
NODE_LABEL = "bench.stoker.dev/node"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass
class Run:
    """One build as the CI client saw it."""

    name: str
    node: str = ""
    warmth: str = ""
    cache_hit: str = ""
    restored_key: str = ""
    deps_s: float = 0.0
    """SubmitBuild sent -> the line that ends the dependency step received."""
    placed_s: float = 0.0
    restore_s: float = 0.0
    bytes_fetched: int = 0
    total_s: float = 0.0
    exit_code: int = -1
    installer: list[str] = field(default_factory=list)
    """What the package manager (or the recipe) said about the install."""
    check: str = ""
    """What the project's own check printed after the dependency step."""


@dataclass
class Ecosystem:
    name: str
    files_v1: dict[str, bytes]
    files_v2: dict[str, bytes]
    key_names: tuple[str, ...]
    paths: tuple[str, ...]
    recipe: str
    cache_dir: str
    """What (b) restores from its tarball, packed after (a)."""
    clean_install: str
    check: str
    installer_lines: tuple[str, ...]
    env: dict[str, str]
    change: str
    lockfile: str
    fill_cache: str = ""
    """Run after (a) and before packing, untimed: puts into ``cache_dir`` what (a) did not leave there."""
    cached_install: str = ""
    """(b)'s install after the unpack; the clean install when empty."""


def _npm(tmp: Path) -> Ecosystem:
    v1 = {
        "package.json": (REPO / "bench/package.json").read_bytes(),
        "package-lock.json": (REPO / "bench/package-lock.json").read_bytes(),
    }
    work = tmp / "npm-v2"
    work.mkdir(parents=True)
    for name, data in v1.items():
        (work / name).write_bytes(data)
    subprocess.run(
        [
            "npm",
            "install",
            "rxjs@7.8.0",
            "--save-exact",
            "--package-lock-only",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
        ],
        cwd=work,
        check=True,
        capture_output=True,
        env={**os.environ, "npm_config_cache": str(tmp / "npm-v2-cache")},
    )
    v2 = {name: (work / name).read_bytes() for name in v1}
    assert v2 != v1, "changing rxjs did not change the lockfile"
    return Ecosystem(
        name="npm",
        files_v1=v1,
        files_v2=v2,
        key_names=("package.json", "package-lock.json"),
        paths=("node_modules", ".npm-cache"),
        recipe="npm.sh",
        cache_dir=".npm-cache",
        clean_install=(
            "export npm_config_cache=$PWD/.npm-cache && npm ci --prefer-offline --no-audit --no-fund"
        ),
        check="node -e \"require('react'); require('next/package.json'); "
        "console.log('check rxjs', require('rxjs/package.json').version)\"",
        installer_lines=("added ", "changed ", "removed ", "up to date", "stoker-npm: "),
        env={},
        change="rxjs 7.8.1 -> 7.8.0 (a direct dependency)",
        lockfile="bench/package.json + bench/package-lock.json",
    )


def _pip(tmp: Path, requirements: Path = REPO / "bench/requirements-e2e.txt") -> Ecosystem:
    v1 = {"requirements.txt": requirements.read_bytes()}
    v2 = {"requirements.txt": v1["requirements.txt"].replace(b"requests==2.34.2", b"requests==2.34.1")}
    assert v2 != v1, f"{requirements} does not pin requests==2.34.2, which (d) changes"
    pinned = v1["requirements.txt"].decode()
    modules = ", ".join(["requests"] + [m for m in ("pandas", "matplotlib", "boto3") if f"\n{m}==" in pinned])
    venv = "export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off && python3 -m venv --copies .venv && "
    env = {"PIP_CONFIG_FILE": "/dev/null"}
    if Path(CA_BUNDLE).exists():
        env["PIP_CERT"] = CA_BUNDLE  # the system's CA bundle (pip's own would refuse a TLS-inspecting proxy)
    return Ecosystem(
        name="pip",
        files_v1=v1,
        files_v2=v2,
        key_names=("requirements.txt",),
        paths=(".venv", ".pip-cache"),
        recipe="pip.sh",
        cache_dir=".pip-wheels",
        clean_install=f"export PIP_CACHE_DIR=$PWD/.pip-cache && {venv}.venv/bin/python -m pip install -r "
        "requirements.txt",
        # pip's own cache after (a) (empty when the index's responses carry no cache headers), then the
        # wheelhouse (b) restores.
        fill_cache='echo "pack: pip cache (.pip-cache) after (a): '
        "$( (du -sb .pip-cache 2>/dev/null || echo 0) | cut -f1) bytes, "
        '$(find .pip-cache -type f 2>/dev/null | wc -l) files" && '
        ".venv/bin/python -m pip download -q -r requirements.txt -d .pip-wheels",
        cached_install=f"export PIP_CACHE_DIR=$PWD/.pip-cache && {venv}.venv/bin/python -m pip install "
        "--no-index --find-links .pip-wheels -r requirements.txt",
        check=f".venv/bin/python -c \"import {modules}; print('check requests', requests.__version__)\"",
        installer_lines=("Successfully installed", "Successfully uninstalled", "stoker-pip: "),
        env=env,
        change="requests 2.34.2 -> 2.34.1 (a direct dependency)",
        lockfile=str(requirements.relative_to(REPO) if requirements.is_relative_to(REPO) else requirements),
    )


def _npm_tree(tmp: Path) -> Ecosystem:
    """The npm recipe saving node_modules only: its npm cache stays in the workspace (out of HOME) but is not
    kept, so an exact hit restores only the tree and a partial hit downloads the changed packages again."""
    eco = _npm(tmp / "tree")
    eco.name, eco.paths = "npm-tree", ("node_modules",)
    return eco


ECOSYSTEMS = {"npm": _npm, "npm-tree": _npm_tree, "pip": _pip}
# Variants whose (a) and (b) are the same builds as another's: measured once, there.
SAME_AB = {"npm-tree": "npm"}


class Fleet:
    """A coordinator and two agents (n1, n2; one slot each) as processes on loopback."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[local_fleet.Process] = []
        self.coordinator = local_fleet.start_coordinator(base)
        self.procs.append(self.coordinator)
        for name in ("n1", "n2"):
            home = base / f"home-{name}"
            home.mkdir()
            self.procs.append(
                local_fleet.start_agent(
                    base,
                    name,
                    self.coordinator.address,
                    zone="zone-a",
                    slots=1,
                    blobs=base / "blobs",
                    labels={NODE_LABEL: name},
                    env={"HOME": str(home)},
                )
            )
        local_fleet.wait_for_nodes(self.coordinator.address, ["n1", "n2"])
        self.channel = grpc.insecure_channel(self.coordinator.address)
        self.stub = build_pb2_grpc.BuildsStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        for proc in reversed(self.procs):
            proc.stop()


def _key(eco: Ecosystem, files: dict[str, bytes]) -> str:
    digest = hashlib.sha256(b"".join(files[n] for n in eco.key_names)).hexdigest()[:16]
    return f"e2e/{eco.name}/deps-{digest}"


def _spec(
    eco: Ecosystem,
    files: dict[str, bytes],
    command: str,
    *,
    cached: bool,
    node: str = "",
    env: dict[str, str] | None = None,
) -> common_pb2.BuildSpec:
    files = {**files, f"recipes/{eco.recipe}": (REPO / "recipes" / eco.recipe).read_bytes()}
    cache = (
        common_pb2.CacheSpec(
            key=_key(eco, files), restore_keys=[f"e2e/{eco.name}/deps-"], paths=list(eco.paths)
        )
        if cached
        else common_pb2.CacheSpec()
    )
    return common_pb2.BuildSpec(
        workspace=f"e2e-{eco.name}",
        command=["sh", "-c", command],
        timeout_s=1800,
        files=files,
        env={**eco.env, **(env or {})},
        cache=cache,
        constraints=common_pb2.Constraints(labels={NODE_LABEL: node} if node else {}),
    )


def submit(fleet: Fleet, name: str, eco: Ecosystem, spec: common_pb2.BuildSpec, say) -> Run:
    run = Run(name=name)
    t0 = time.monotonic()
    seen_mark = False
    lines: list[str] = []
    for event in fleet.stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=3600):
        kind = event.WhichOneof("kind")
        if kind == "placed":
            run.placed_s = time.monotonic() - t0
            run.node = event.placed.node
        elif kind == "log":
            text = event.log.text
            lines.append(text)
            if text == MARK and not seen_mark:
                run.deps_s = time.monotonic() - t0
                seen_mark = True
            elif text.startswith("STOKER_CACHE_HIT="):
                run.cache_hit = text.split("=", 1)[1]
            elif text.startswith("check "):
                run.check = text
            elif text.startswith(eco.installer_lines) or text.startswith("pack: "):
                run.installer.append(text)
        elif kind == "finished":
            fin = event.finished
            run.node = fin.node or run.node
            run.exit_code = fin.exit_code
            run.warmth = warmth_name(fin.cache.warmth)
            run.restored_key = fin.cache.restored_key
            run.restore_s = round(fin.timings.restore_s, 3)
            run.bytes_fetched = fin.cache.bytes_fetched
            run.total_s = round(time.monotonic() - t0, 3)
    run.deps_s = round(run.deps_s, 3)
    run.placed_s = round(run.placed_s, 3)
    if run.exit_code != 0 or not seen_mark:
        tail = "\n".join(lines[-25:])
        raise RuntimeError(f"{eco.name} {name}: the build failed (exit {run.exit_code}):\n{tail}")
    say(
        f"  {eco.name} {name:<34} {run.deps_s:7.2f} s to dependencies ready  on {run.node} ({run.warmth}, "
        f"hit {run.cache_hit or '-'}, restore {run.restore_s:.2f} s)  {'; '.join(run.installer)[:110]}"
    )
    return run


def wait_ready_tree(fleet: Fleet, node: str, key: str, timeout: float) -> float:
    """Wait until ``node`` holds a ready tree of ``key`` (the unpacked copy its agent keeps for the next
    warm restore, re-made in the background at the lowest priority after each build: see
    docs/cache-format.md). A build minutes after the last one finds it; one right behind it does not.
    Returns the seconds waited; -1 when it did not appear in time (the build then runs without it)."""
    trees = fleet.base / node / "cache" / "trees"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for record in trees.glob("*.json"):
            try:
                if json.loads(record.read_bytes()).get("key") == key:
                    return round(time.monotonic() - t0, 1)
            except (OSError, ValueError):
                pass
        time.sleep(0.5)
    return -1.0


def _signal() -> str:
    return 'echo "STOKER_CACHE_HIT=$STOKER_CACHE_HIT"; '


def bench_ecosystem(
    fleet: Fleet, eco: Ecosystem, tarball: Path, args, say, same_ab: dict | None = None
) -> dict:
    v1 = eco.files_v1
    mark = f"echo {MARK}"
    if same_ab is not None:
        a, b = Run(**same_ab["a_managed_ci"]), Run(**same_ab["b_actions_cache"])
        return _stoker_part(fleet, eco, args, say, a, b, busy=False)
    # (a) managed CI: empty cache; afterwards (not timed) the cache is packed as actions/cache would save it.
    pack = (
        f"{eco.fill_cache + ' && ' if eco.fill_cache else ''}"
        f"tar --use-compress-program 'zstd -T0 --long=30 -3' -cf {tarball} {eco.cache_dir} && "
        f"ls -l {tarball} | awk '{{print \"pack: tarball bytes\", $5}}'"
    )
    a = submit(
        fleet,
        "(a) managed CI, cold",
        eco,
        _spec(
            eco,
            v1,
            f"{_signal()}{eco.clean_install} && {mark} && {eco.check} && {pack}",
            cached=False,
            node="n1",
        ),
        say,
    )
    # (b) actions/cache: restore the tarball of the package manager's cache, then the clean install.
    unpack = f"tar --use-compress-program 'zstd -d --long=30' -xf {tarball}"
    b = submit(
        fleet,
        "(b) actions/cache + clean install",
        eco,
        _spec(
            eco,
            v1,
            f"{_signal()}{unpack} && {eco.cached_install or eco.clean_install} && {mark} && {eco.check}",
            cached=False,
            node="n1",
        ),
        say,
    )
    return _stoker_part(fleet, eco, args, say, a, b)


def _stoker_part(fleet: Fleet, eco: Ecosystem, args, say, a: Run, b: Run, busy: bool = True) -> dict:
    v1, v2 = eco.files_v1, eco.files_v2
    recipe = f"{_signal()}sh recipes/{eco.recipe} && echo {MARK} && {eco.check}"
    seed = submit(
        fleet, "stoker, first build (recipe, cold)", eco, _spec(eco, v1, recipe, cached=True, node="n1"), say
    )
    key1 = _key(eco, v1)
    exact, settled, back_to_back = [], [], []
    for i in range(args.exact_runs):
        settled.append(wait_ready_tree(fleet, "n1", key1, args.settle_timeout_s))
        exact.append(
            submit(fleet, f"(c) stoker exact hit #{i + 1}", eco, _spec(eco, v1, recipe, cached=True), say)
        )
        # Right behind it: the ready tree was just used and is not re-made yet.
        back_to_back.append(
            submit(
                fleet, f"(c') exact hit right behind #{i + 1}", eco, _spec(eco, v1, recipe, cached=True), say
            )
        )
    d_settled = wait_ready_tree(fleet, "n1", key1, args.settle_timeout_s)
    d = submit(fleet, "(d) stoker partial, one dep changed", eco, _spec(eco, v2, recipe, cached=True), say)
    c_s = statistics.median(r.deps_s for r in exact)
    cb_s = statistics.median(r.deps_s for r in back_to_back)
    result: dict[str, Any] = {
        "paths": list(eco.paths),
        "lockfile": eco.lockfile,
        "change_for_d": eco.change,
        "a_managed_ci": asdict(a),
        "b_actions_cache": asdict(b),
        "stoker_first_build": asdict(seed),
        "c_exact": [asdict(r) for r in exact],
        "c_exact_median_s": round(c_s, 3),
        "c_waited_for_ready_tree_s": settled,
        "c_back_to_back": [asdict(r) for r in back_to_back],
        "c_back_to_back_median_s": round(cb_s, 3),
        "d_partial": asdict(d),
        "d_waited_for_ready_tree_s": d_settled,
        "ratios": {
            "c_over_a": round(c_s / a.deps_s, 4),
            "c_over_b": round(c_s / b.deps_s, 4),
            "c_back_to_back_over_a": round(cb_s / a.deps_s, 4),
            "c_back_to_back_over_b": round(cb_s / b.deps_s, 4),
            "d_over_a": round(d.deps_s / a.deps_s, 4),
            "b_over_a": round(b.deps_s / a.deps_s, 4),
            "stoker_first_over_a": round(seed.deps_s / a.deps_s, 4),
        },
    }
    r = result["ratios"]
    result["targets"] = {
        "c <= 0.1 a": r["c_over_a"] <= 0.1,
        "c <= 0.3 b": r["c_over_b"] <= 0.3,
        "d <= 0.3 a": r["d_over_a"] <= 0.3,
    }
    if busy and not args.skip_busy:
        result["e_busy_warm_node"] = bench_busy(fleet, eco, recipe, args.busy_s, say)
    return result


def bench_busy(fleet: Fleet, eco: Ecosystem, recipe: str, busy_s: float, say) -> dict:
    """n1 holds the entry but runs another build for ``busy_s``: the scheduler's choice, then waiting."""
    out: dict[str, Any] = {"busy_s": busy_s}
    for name, node in (
        ("(e) warm node busy: scheduler's choice", ""),
        ("(e) warm node busy: wait for it", "n1"),
    ):
        busy = common_pb2.BuildSpec(
            workspace="e2e-busy",
            command=["sleep", str(busy_s)],
            timeout_s=busy_s + 120,
            constraints=common_pb2.Constraints(labels={NODE_LABEL: "n1"}),
        )
        started = threading.Event()

        def occupy(busy: common_pb2.BuildSpec = busy, started: threading.Event = started) -> None:
            for event in fleet.stub.SubmitBuild(
                build_pb2.SubmitBuildRequest(spec=busy), timeout=busy_s + 300
            ):
                if event.WhichOneof("kind") == "started":
                    started.set()

        t = threading.Thread(target=occupy, daemon=True)
        t.start()
        if not started.wait(60):
            raise RuntimeError("the busy build did not start on n1")
        run = submit(fleet, name, eco, _spec(eco, eco.files_v1, recipe, cached=True, node=node), say)
        t.join()
        out["scheduler" if not node else "wait_for_warm"] = asdict(run)
    s, w = out["scheduler"]["deps_s"], out["wait_for_warm"]["deps_s"]
    out["scheduler_over_wait"] = round(s / w, 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument(
        "--ecosystems",
        default="npm,npm-tree,pip",
        help="comma-separated: npm (node_modules + .npm-cache), npm-tree (node_modules only; "
        "(a) and (b) from npm when it ran first), pip",
    )
    parser.add_argument("--exact-runs", type=int, default=2, help="exact-hit builds (the median is used)")
    parser.add_argument("--busy-s", type=float, default=30.0, help="how long the warm node stays busy in (e)")
    parser.add_argument(
        "--settle-timeout-s",
        type=float,
        default=240.0,
        help="how long (c) and (d) wait for the warm node's ready tree of the entry",
    )
    parser.add_argument("--skip-busy", action="store_true", help="leave out (e)")
    parser.add_argument(
        "--pip-requirements",
        type=Path,
        default=REPO / "bench/requirements-e2e.txt",
        help="pip's lockfile (it must pin requests==2.34.2, which (d) changes); a small one for a quick try",
    )
    parser.add_argument("--dir", help="work here and keep it (default: a temporary directory, removed)")
    args = parser.parse_args()
    say = (
        (lambda *a: print(*a, file=sys.stderr, flush=True))
        if args.json
        else (lambda *a: print(*a, flush=True))
    )
    for tool in ("npm", "node", "zstd", "tar", "python3"):
        if shutil.which(tool) is None:
            print(
                f"bench/e2e.py needs {tool} (scripts/system_deps.sh installs node and npm)", file=sys.stderr
            )
            return 2
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="stoker-e2e-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict = {
        "command": "python bench/e2e.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
            "npm": subprocess.run(["npm", "--version"], capture_output=True, text=True).stdout.strip(),
            "kernel": platform.release(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip(),
        "ecosystems": {},
    }
    fleet = None
    try:
        fleet = Fleet(base)
        for name in [e.strip() for e in args.ecosystems.split(",") if e.strip()]:
            eco = (
                _pip(base / "inputs", args.pip_requirements.resolve())
                if name == "pip"
                else ECOSYSTEMS[name](base / "inputs")
            )
            say(f"{name}: {eco.change} for (d)")
            same = results["ecosystems"].get(SAME_AB.get(name, ""))
            try:
                results["ecosystems"][name] = bench_ecosystem(
                    fleet, eco, base / f"{name}-cache.tar.zst", args, say, same_ab=same
                )
            except RuntimeError as exc:  # one ecosystem's failure must not lose the others' figures
                say(f"{name}: FAILED: {exc}")
                results["ecosystems"][name] = {"error": str(exc)[-2000:]}
    finally:
        if fleet is not None:
            fleet.close()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    results["wall_s"] = round(time.time() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results["ecosystems"].items():
            print(
                f"{name}: " + (f"ratios {r['ratios']}  targets {r['targets']}" if "ratios" in r else "FAILED")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
