"""What reading a workspace through no-follow descriptors costs a save (issue 15, item 6).

Times, in this process, on a copy of a real ``node_modules``: a full save into a fresh store (walk, hash
every file, pack, write a local blob store) and an unchanged save of the same workspace (the walk and the
stat check alone). Run it on two commits to compare them; results in bench/RESULTS.md.

    python bench/save_boundary.py --tree /path/holding/node_modules --runs 5 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from stoker.agent.cache.content_cache import ContentCache
from stoker.agent.cache.local_blobs import LocalBlobStore
from stoker.agent.cache.store import LocalStore


def one_round(tree: Path, work: Path, n: int) -> dict[str, float]:
    store = work / f"store-{n}"
    cache = ContentCache(LocalStore(store, 8 << 30), LocalBlobStore(work / f"blobs-{n}"), workers=2)
    cache.open()
    cache.ready_trees = 0  # no background unpacking competing with the timed saves
    try:
        t0 = time.perf_counter()
        full = cache.save("bench/nm-1", tree, ["node_modules"])
        t1 = time.perf_counter()
        time.sleep(0.05)  # past the stat cache's racy margin
        t2 = time.perf_counter()
        same = cache.save("bench/nm-1", tree, ["node_modules"])
        t3 = time.perf_counter()
    finally:
        cache.close()
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(work / f"blobs-{n}", ignore_errors=True)
    assert full.saved and not same.saved
    return {"save_full_s": t1 - t0, "save_unchanged_s": t3 - t2, "files": full.files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True, help="a directory holding node_modules")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stoker-save-bench-") as tmp:
        rounds = [one_round(args.tree, Path(tmp), n) for n in range(args.runs)]
    out = {
        name: {"median": statistics.median(r[name] for r in rounds), "runs": [r[name] for r in rounds]}
        for name in ("save_full_s", "save_unchanged_s")
    }
    out["files"] = rounds[0]["files"]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name in ("save_full_s", "save_unchanged_s"):
            print(f"{name}: median {out[name]['median']:.3f} s of {out[name]['runs']}")


if __name__ == "__main__":
    main()
