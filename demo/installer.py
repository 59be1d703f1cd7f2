"""A tiny stand-in for a package manager, used by ``stoker demo`` as the build's command.

``python -m stoker.demo.installer deps.json`` makes ``node_modules/`` match ``deps.json``
(``{"name": "version", ...}``): packages already present at the right version are kept, others are
written (a deterministic set of text files per name@version, like a registry tarball), and
packages no longer listed are removed. Like ``npm ci`` on a warm tree, the work it does is
proportional to what changed, so cold, partial and warm builds differ for real.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

_WORDS = (
    "function return const let var import export default from require module exports this "
    "if else for while new class extends super async await yield try catch finally throw "
    "null undefined true false typeof instanceof object string number array map filter"
).split()


def package_files(name: str, version: str) -> dict[str, bytes]:
    """The files of one package version: same name@version, same bytes, on any machine."""
    seed = int.from_bytes(hashlib.sha256(f"{name}@{version}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    files = {"package.json": json.dumps({"name": name, "version": version}).encode()}
    for i in range(rng.randint(12, 40)):
        words = rng.choices(_WORDS, k=rng.randint(200, 3000))
        files[f"lib/part{i}.js"] = (" ".join(words) + "\n").encode()
    return files


def install(deps: dict[str, str], root: Path) -> tuple[int, int, int]:
    """Bring ``root/node_modules`` in line with ``deps``. Returns (added, kept, removed)."""
    modules = root / "node_modules"
    modules.mkdir(exist_ok=True)
    added = kept = removed = 0
    for name, version in sorted(deps.items()):
        pkg = modules / name
        manifest = pkg / "package.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("version") == version:
            kept += 1
            continue
        shutil.rmtree(pkg, ignore_errors=True)
        for rel, data in package_files(name, version).items():
            path = pkg / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        added += 1
    for pkg in modules.iterdir():
        if pkg.name not in deps:
            shutil.rmtree(pkg)
            removed += 1
    return added, kept, removed


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m stoker.demo.installer deps.json", file=sys.stderr)
        return 2
    deps = json.loads(Path(argv[0]).read_text())
    started = time.monotonic()
    added, kept, removed = install(deps, Path.cwd())
    print(
        f"installed {len(deps)} packages: {added} added, {kept} already present, {removed} removed "
        f"in {time.monotonic() - started:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
