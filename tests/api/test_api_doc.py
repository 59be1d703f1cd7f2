"""docs/api.md's client programs, run as written against a live coordinator (issue 17, item 12): the
Node.js one with the real @grpc/grpc-js and @grpc/proto-loader from npm (versions locked in
tests/api/node), across a coordinator restart mid-build (its reattach recipe), and the Python one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"


def block(language: str) -> str:
    [code] = re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.M | re.S)
    return code


@pytest.fixture(scope="session")
def node_client(tmp_path_factory) -> Path:
    """A directory with the doc's submit.js and its node_modules (npm ci from the lockfile)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: apt-get install nodejs npm (scripts/system_deps.sh does)")
    work = tmp_path_factory.mktemp("node-client")
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / "tests" / "api" / "node" / name, work / name)
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"npm ci failed (is the npm registry reachable?):\n{done.stderr[-2000:]}"
    (work / "submit.js").write_text(block("js"))
    return work


def test_the_node_client_runs_a_build_and_reattaches_across_a_coordinator_restart(
    fleet, node_client, port_factory
):
    listen, state = f"127.0.0.1:{port_factory()}", fleet.root / "state.db"
    fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10)
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    env = {
        **os.environ,
        "STOKER_COORDINATOR": listen,
        "STOKER_PROTOS": str(ROOT / "protos"),
        "BUILD_SCRIPT": "for i in $(seq 1 30); do echo line-$i; sleep 0.1; done",
        "REQUEST_ID": "api-doc-1",
    }
    client = subprocess.Popen(
        ["node", "submit.js"],
        cwd=node_client,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(client.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not any(line.strip() == "line-5" for line in out):
        assert time.monotonic() < deadline and client.poll() is None, (out, client.stderr.read())
        time.sleep(0.05)
    fleet.coordinator.stop()  # SIGTERM: the stream ends with UNAVAILABLE
    fleet.start_coordinator(listen=listen, state=state, lease_ttl_s=10, name="coordinator-2")
    assert client.wait(90) == 0, client.stderr.read()
    reader.join(5)
    lines = [line.rstrip("\n") for line in out]
    assert lines == [f"line-{i}" for i in range(1, 31)] + ["finished: BUILD_STATE_SUCCEEDED exit 0"], lines
    assert "reattaching" in client.stderr.read()


def test_the_python_client_runs_a_build_and_lists_builds_and_nodes(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    done = subprocess.run(
        [sys.executable, "-c", block("python")],
        env={**os.environ, "STOKER_COORDINATOR": c.address}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    build_id = lines[0].split()[1]
    assert lines[1:] == [
        "hi",
        "finished: BUILD_STATE_SUCCEEDED 0",
        f"recent builds: ['{build_id}']",
        "nodes: ['n1']",
    ], lines
