"""A census of the coordinator's memory, taken from inside it while bench/load.py runs (a diagnostic, not a
benchmark: it pauses the coordinator for a second or two each time).

    DIAG_DIR=/tmp/census DIAG_AT=150,300,600,900,1200,1500 PYTHONPATH=bench/census \\
        python bench/load.py --json --seconds 1500

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; in the coordinator's processes (and only
there) this one starts a thread that, at each of ``DIAG_AT`` seconds after the process started:
- unfreezes everything (``GcPolicy`` freezes survivors) and runs a full collection;
- records ``sys.getallocatedblocks()``, RSS, glibc's heap (``mallinfo2``: arena, in use, free), the number
  of objects the collector tracks by type (and which types grew since the last census), and the length of
  every sized attribute of the build service, scheduler, inventory, registry and stream servicer;
- writes ``sys._debugmallocstats()`` (pymalloc's arenas and size classes) beside it;
then freezes again. Output: ``DIAG_DIR/census-<pid>.txt`` (one JSON line per census, with the sizes and the
growth on the lines after it) and ``DIAG_DIR/malloc-<pid>-<seconds>.txt``.

This is what found the string each touched entry left behind (b56751f) and showed that the growth left
after it was the scheduler's recent-demand map filling up (bench/RESULTS.md, "Coordinator load").
"""

import os
import sys
import threading
import time

_dir = os.environ.get("DIAG_DIR")
if _dir and "coordinator" in sys.argv:
    import collections
    import ctypes
    import gc
    import json

    _t0 = time.monotonic()

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        _libc = ctypes.CDLL("libc.so.6")
        _libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        _libc = None

    _WATCH = {"BuildQueue", "Scheduler", "InventoryIndex", "NodeRegistry", "LoadHistory", "Estimator",
              "Demand", "Prewarmer", "Rendezvous", "AgentGatewayServicer"}
    _real_freeze = gc.freeze
    _busy = [False]
    gc.freeze = lambda: None if _busy[0] else _real_freeze()  # GcPolicy must not freeze mid-census

    def _rss_mib() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
        return -1

    def _sizes(objs) -> dict:
        out = {}
        for o in objs:
            name = type(o).__name__
            if name in _WATCH and hasattr(o, "__dict__"):
                for attr, value in vars(o).items():
                    try:
                        out[f"{name}.{attr}"] = len(value)
                    except TypeError:
                        pass
        return out

    def _census_loop() -> None:
        times = [float(x) for x in os.environ.get("DIAG_AT", "120,240,360").split(",")]
        with open(os.path.join(_dir, f"census-{os.getpid()}.txt"), "w") as out:
            prev_types, prev_sizes = None, {}
            for at in times:
                while time.monotonic() - _t0 < at:
                    time.sleep(1)
                _busy[0] = True
                gc.unfreeze()
                blocks_before, rss_before = sys.getallocatedblocks(), _rss_mib()
                found = gc.collect()
                record = {"t": round(time.monotonic() - _t0), "collected": found,
                          "blocks_before": blocks_before, "blocks_after": sys.getallocatedblocks(),
                          "rss_before": rss_before, "rss_after": _rss_mib()}
                if _libc is not None:
                    mi = _libc.mallinfo2()
                    record.update(malloc_arena_mib=mi.arena >> 20, malloc_inuse_mib=mi.uordblks >> 20,
                                  malloc_free_mib=mi.fordblks >> 20, mmap_mib=mi.hblkhd >> 20)
                objs = gc.get_objects()
                types = collections.Counter(type(o).__qualname__ for o in objs)
                sizes = _sizes(objs)
                del objs
                record["gc_tracked"] = sum(types.values())
                out.write(json.dumps(record) + "\n")
                out.write("   sizes: " + json.dumps({k: v for k, v in sizes.items() if v}) + "\n")
                if prev_types is not None:
                    grew = sorted(((types[k] - prev_types.get(k, 0), k) for k in types), reverse=True)[:20]
                    out.write("   grew: " + ", ".join(f"{k}+{v}" for v, k in grew if v > 0) + "\n")
                    changed = {k: v - prev_sizes.get(k, 0) for k, v in sizes.items() if v != prev_sizes.get(k, 0)}
                    out.write("   sizes changed: " + json.dumps(changed) + "\n")
                out.flush()
                saved = os.dup(2)
                with open(os.path.join(_dir, f"malloc-{os.getpid()}-{round(at)}.txt"), "wb") as stats:
                    os.dup2(stats.fileno(), 2)
                    sys._debugmallocstats()
                    os.dup2(saved, 2)
                os.close(saved)
                prev_types, prev_sizes = types, sizes
                _busy[0] = False
                _real_freeze()

    threading.Thread(target=_census_loop, name="census", daemon=True).start()
