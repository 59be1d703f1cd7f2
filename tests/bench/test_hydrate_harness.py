"""bench/hydrate.py's process runner (issue 17, item 15): with --tree on another file system, `cp -al`
wrote a line per file to stderr, filled the pipe nobody read while waiting, and the benchmark hung."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HYDRATE = Path(__file__).resolve().parents[2] / "bench" / "hydrate.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_hydrate", HYDRATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_a_child_that_floods_stderr_and_fails_is_reported_not_waited_on_forever():
    hydrate = load()
    flood = "import sys; sys.stderr.write('Invalid cross-device link\\n' * 50000); sys.exit(1)"
    with pytest.raises(RuntimeError, match=r"failed \(1\): ") as failed:
        hydrate.measured([sys.executable, "-c", flood])
    assert str(failed.value).endswith("Invalid cross-device link\n")
    wall, _cpu, _rss, out = hydrate.measured([sys.executable, "-c", "print('ok')"])
    assert out == "ok\n" and wall > 0
