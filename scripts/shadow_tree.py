"""Lay stoker's sources out as they install (``stoker/coordinator/…``), as links, for mypy and import-linter.

    python scripts/shadow_tree.py DIR             link every module of every package in pyproject into DIR
    mypy … | python scripts/shadow_tree.py --unmap DIR   map DIR/stoker/… paths in messages to sources

The mapping comes from ``[tool.setuptools.package-dir]``, so a new top-level package is covered once it is
declared there (as it must be for pip to install it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """Installed package name → its source folder, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: ROOT / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def build(shadow: Path) -> None:
    for name, folder in sorted(package_dirs().items()):
        target = shadow.joinpath(*name.split("."))
        for source in folder.rglob("*"):
            if source.suffix not in (".py", ".pyi") or "__pycache__" in source.parts:
                continue
            link = target / source.relative_to(folder)
            if link.exists():
                continue  # a nested package declared on its own maps the same file
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source, link)


def unmap(shadow: Path) -> int:
    links = {
        str(p.relative_to(shadow)): str(p.resolve().relative_to(ROOT))
        for p in shadow.rglob("*")
        if p.is_symlink()
    }
    failed = 0
    for line in sys.stdin:
        path, sep, rest = line.partition(":")
        if sep and path in links:
            line = links[path] + sep + rest
        if ": error:" in line or line.startswith("Found "):
            failed = 1
        sys.stdout.write(line)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shadow", type=Path)
    parser.add_argument("--unmap", action="store_true", help="map paths in stdin's messages back to sources")
    args = parser.parse_args()
    if args.unmap:
        return unmap(args.shadow)
    build(args.shadow)
    return 0


if __name__ == "__main__":
    sys.exit(main())
