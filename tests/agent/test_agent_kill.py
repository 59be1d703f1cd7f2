"""kill -9 an agent mid-build and mid-restore, then restart it.

The build is requeued and completes once elsewhere; the restarted agent cleans its temporaries (cache
staging, half-restored workspaces); no corrupt entry is ever served (every local entry verifies byte for
byte with ``stoker cache verify``, and the inventory lists nothing it cannot serve).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from stoker.v1 import build_pb2
from tests.helpers.faults import builds_stub, inventory, kinds, spec, wait_until
from tests.helpers.s3_fault_proxy import Rule

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def s3_agent_args(fleet, proxy, bucket: str) -> tuple[list[str], dict[str, str]]:
    from stoker.agent.cache.s3_blobs import S3BlobStore

    S3BlobStore(bucket, endpoint_url=proxy.endpoint, region="us-east-1").create_bucket()
    env = {"STOKER_AGENT_CACHE_S3_ENDPOINT_URL": proxy.endpoint, "STOKER_AGENT_CACHE_S3_REGION": "us-east-1"}
    return ["--blobs", f"s3://{bucket}/cache"], env


def cache_verify(cache_dir, blobs: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stoker.cli.main",
            "cache",
            "--dir",
            str(cache_dir),
            "--blobs",
            blobs,
            "--json",
            "verify",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_agent_kill_9_mid_build_requeues_and_runs_once(fleet, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    c = fleet.start_coordinator(lease_ttl_s=2)
    fleet.start_agent("n1")
    fleet.start_agent("n2")
    fleet.wait_ready("n1", "n2")
    stream = builds_stub(c.address).SubmitBuild(
        build_pb2.SubmitBuildRequest(
            spec=spec(
                [
                    "sh",
                    "-c",
                    f"echo run >> {marks}/start; echo begin; sleep 3; echo run >> {marks}/done; echo end",
                ]
            )
        ),
        timeout=90,
    )
    events = []
    for event in stream:
        events.append(event)
        if event.HasField("log") and event.log.text == "begin":
            break
    victim = next(e.placed.node for e in events if e.HasField("placed"))
    build_id = events[0].build_id
    fleet.agents[victim].kill()
    events += list(stream)
    ks = kinds(events)
    assert ks.count("finished") == 1 and ks[-1] == "finished" and "retrying" in ks
    assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED and events[-1].finished.node != victim
    record = builds_stub(c.address).GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5)
    assert record.attempt == 2 and record.state == build_pb2.BUILD_STATE_SUCCEEDED
    assert (marks / "start").read_text().count("run") == 2  # attempt 1 (killed) and attempt 2
    # The killed agent comes back on its own directories: the killed attempt's workspace is gone, and its
    # command did not run on as an orphan to complete a second time.
    fleet.start_agent(victim)
    fleet.wait_ready(victim)
    work = fleet.root / victim / "work"
    leftovers = [p.name for p in work.iterdir()] if work.exists() else []
    assert not [n for n in leftovers if n.startswith(build_id)], (
        f"workspace of the killed attempt left: {leftovers}"
    )
    time.sleep(4)  # longer than the killed attempt had left to run
    assert (marks / "done").read_text().count("run") == 1, (
        "the killed agent's build kept running as an orphan and ran to completion a second time"
    )
    other = "n1" if victim == "n2" else "n2"
    fleet.agents[other].stop()
    events = list(
        builds_stub(c.address).SubmitBuild(
            build_pb2.SubmitBuildRequest(spec=spec(["echo", "back"])), timeout=60
        )
    )
    assert (
        events[-1].finished.node == victim and events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
    ), [e.log.text for e in events if e.HasField("log")]


def test_agent_kill_9_mid_restore_never_serves_a_corrupt_entry(fleet, fault_proxy, tmp_path):
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    c = fleet.start_coordinator(lease_ttl_s=2)
    extra, env = s3_agent_args(fleet, fault_proxy, bucket)
    fleet.start_agent("saver", zone="a", extra=extra, env=env)
    fleet.start_agent("b1", zone="b", extra=extra, env=env)
    fleet.start_agent("b2", zone="b", extra=extra, env=env)
    fleet.wait_ready("saver", "b1", "b2")
    stub = builds_stub(c.address)
    # A big entry: 24 MiB that does not compress, and a few hundred small files.
    make = (
        "mkdir -p out/small && head -c 25165824 /dev/urandom > out/big.bin && "
        "for i in $(seq 1 300); do echo file-$i > out/small/f$i; done && sha256sum out/big.bin > sums"
    )
    events = list(
        stub.SubmitBuild(
            build_pb2.SubmitBuildRequest(
                spec=spec(["sh", "-c", make + " && cat sums"], key="web/big-1", zone="a")
            ),
            timeout=120,
        )
    )
    assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED and events[-1].finished.cache.saved
    digest = next(e.log.text for e in events if e.HasField("log") and "out/big.bin" in e.log.text).split()[0]
    # Restores in zone b now crawl (64 KiB/s per pack read): the kill lands mid-restore.
    fault_proxy.set_rules(Rule("throttle", path=r"/packs/", bytes_per_s=64 << 10))
    check = (
        f"echo '{digest}  out/big.bin' | sha256sum -c - && test \"$(cat out/small/f300)\" = file-300 "
        "&& echo restored-ok"
    )
    stream = stub.SubmitBuild(
        build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", check], key="web/big-1", zone="b")), timeout=120
    )
    events = []
    for event in stream:
        events.append(event)
        if event.HasField("restoring"):
            break
    victim = next(e.placed.node for e in events if e.HasField("placed"))
    staging = fleet.root / victim / "cache" / "staging"
    wait_until(
        lambda: (
            fault_proxy.requests(path=r"/packs/", action="throttle")
            and any(p.is_file() for p in staging.rglob("*"))
        ),
        20,
        "the restore to be fetching packs into staging",
    )
    time.sleep(1.0)  # bytes are arriving
    fleet.agents[victim].kill()
    fault_proxy.set_rules()  # the object store is fast again for the retry
    events += list(stream)
    ks = kinds(events)
    assert ks.count("finished") == 1 and "retrying" in ks, ks
    fin = events[-1].finished
    assert fin.state == build_pb2.BUILD_STATE_SUCCEEDED and fin.node != victim, fin
    assert any(e.log.text == "restored-ok" for e in events if e.HasField("log"))
    assert fin.cache.restored_key == "web/big-1"
    # The killed restore left a partial frame file in staging; the restart removes it.
    assert any(p.is_file() for p in staging.rglob("*")), (
        "nothing partial was left: the kill missed the restore"
    )
    left = set(staging.iterdir())
    log_before = fleet.agents[victim].log_path.stat().st_size
    fleet.start_agent(victim, zone="b", extra=extra, env=env)
    fleet.wait_ready(victim)
    # What the killed restore left is gone. (The restarted node may already be restoring again into a new
    # staging directory: the coordinator can send it a prewarm as soon as it is back.)
    assert not left & set(staging.iterdir()), f"staging not cleaned: {sorted(left & set(staging.iterdir()))}"
    work = fleet.root / victim / "work"
    stale = [p for p in work.rglob(".stoker-staging-*")] if work.exists() else []
    assert not stale, f"half-restored workspace temporaries left: {stale}"
    # The restarted agent reports only entries it can serve; the half-fetched one is not among them,
    # unless the coordinator's prewarm of the (now hot) key fetched it whole again after the restart.
    node = inventory(c.address, node=victim).nodes[0]
    held = [e.key for e in node.entries]
    if "web/big-1" in held:
        with fleet.agents[victim].log_path.open("rb") as f:
            f.seek(log_before)
            since_restart = f.read().decode(errors="replace")
        assert "prewarmed web/big-1: web/big-1" in since_restart, "the half-fetched entry was reported held"
    # Every entry in its store verifies byte for byte (stop the agent: the store admits one process).
    fleet.agents[victim].stop()
    report = cache_verify(fleet.root / victim / "cache", extra[1], env)
    assert not report.get("failed"), report
    # And a build on the victim now restores the entry whole.
    fleet.start_agent(victim, zone="b", extra=extra, env=env)
    fleet.wait_ready(victim)
    other = "b1" if victim == "b2" else "b2"
    fleet.agents[other].stop()
    fleet.wait_ready(victim)
    events = list(
        stub.SubmitBuild(
            build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", check], key="web/big-1", zone="b")),
            timeout=120,
        )
    )
    assert (
        events[-1].finished.node == victim and events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
    ), [e.log.text for e in events if e.HasField("log")]
    assert any(e.log.text == "restored-ok" for e in events if e.HasField("log"))
    # Byte for byte: the entry the victim now holds verifies (stop it first: one process per store).
    fleet.agents[victim].stop()
    report = cache_verify(fleet.root / victim / "cache", extra[1], env)
    assert report["checked"].get("web/big-1", 0) > 300 and not report["failed"], report
