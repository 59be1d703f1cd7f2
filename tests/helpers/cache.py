"""Helpers for the cache tests: sample trees, snapshots, caches over a local blob store."""

from __future__ import annotations

import os
import random
from pathlib import Path

from stoker.agent.cache.content_cache import ContentCache
from stoker.agent.cache.local_blobs import LocalBlobStore
from stoker.agent.cache.store import LocalStore
from stoker.agent.cache.writers import WriterKind


def make_tree(
    root: Path, *, seed: int = 1, packages: int = 6, files_per_package: int = 12, big_bytes: int = 9 << 20
) -> Path:
    """A small node_modules-like tree: packages (one scoped), a big file, empty file, symlinks, modes."""
    rng = random.Random(seed)
    nm = root / "node_modules"
    nm.mkdir(parents=True, exist_ok=True)
    words = [f"token{i}" for i in range(200)]
    for p in range(packages):
        pkg = nm / (f"@scope/pkg{p}" if p == 0 else f"pkg{p}")
        (pkg / "lib").mkdir(parents=True, exist_ok=True)
        for f in range(files_per_package):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(10, 3000)))
            (pkg / "lib" / f"f{f}.js").write_text(f"// {pkg.name} {f}\n{text}\n")
        (pkg / "package.json").write_text(f'{{"name": "{pkg.name}", "version": "1.0.{seed}"}}\n')
    big = nm / "pkg1" / "big.bin"
    big.write_bytes(bytes(rng.getrandbits(8) for _ in range(4096)) * (big_bytes // 4096))
    (nm / "pkg2" / "empty.txt").write_bytes(b"")
    tool = nm / "pkg2" / "bin.js"
    tool.write_text("#!/usr/bin/env node\n")
    tool.chmod(0o755)
    (nm / ".bin").mkdir(exist_ok=True)
    os.symlink("../pkg2/bin.js", nm / ".bin" / "tool")
    os.symlink("pkg3", nm / "alias")
    (nm / "pkg3" / "lib").chmod(0o750)
    os.utime(nm / "pkg3" / "package.json", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a restore must reproduce: type, mode, mtime (files, symlinks), content, link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, st.st_mtime_ns, p.read_bytes())
    return out


def open_local_cache(
    tmp: Path,
    *,
    name: str = "store",
    budget: int = 1 << 30,
    blobs: Path | None = None,
    workers: int = 2,
    writer: WriterKind = "auto",
) -> ContentCache:
    cache = ContentCache(
        LocalStore(tmp / name, budget), LocalBlobStore(blobs or tmp / "blobs"), workers=workers, writer=writer
    )
    cache.open()
    return cache
