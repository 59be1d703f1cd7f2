"""A planted entry under a victim's restore prefix (issue 16, item 2): "one planted entry with other roots
under a victim's restore prefix failed every victim build, on every node". On a loopback fleet of three
agents sharing a real S3 server (SeaweedFS), the victim's builds skip the planted entry, restore the next
good candidate and succeed, on both nodes; the first node says why in the build's log and marks the entry
in the blob store, and the second skips it on that mark without reading it."""

from __future__ import annotations

import uuid

import pytest

from stoker.v1 import build_pb2
from tests.helpers.faults import builds_stub, spec

pytestmark = pytest.mark.integration


def _build(address: str, command: str, **kw):
    events = list(
        builds_stub(address).SubmitBuild(
            build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", command], **kw)), timeout=120
        )
    )
    lines = [e.log.text for e in events if e.HasField("log")]
    return events[-1].finished, lines


def test_a_planted_entry_with_other_roots_is_skipped_on_every_node(fleet, seaweed_endpoint):
    from stoker.agent.cache.s3_blobs import S3BlobStore

    bucket = f"bad-{uuid.uuid4().hex[:8]}"
    S3BlobStore(bucket, endpoint_url=seaweed_endpoint, region="us-east-1").create_bucket()
    env = {
        "STOKER_AGENT_CACHE_S3_ENDPOINT_URL": seaweed_endpoint,
        "STOKER_AGENT_CACHE_S3_REGION": "us-east-1",
    }
    s3 = ["--blobs", f"s3://{bucket}/cache"]
    c = fleet.start_coordinator()
    fleet.start_agent("n1", zone="zone-a", extra=s3, env=env)
    fleet.start_agent("n2", zone="zone-b", extra=s3, env=env)
    fleet.start_agent("n3", zone="zone-c", extra=s3, env=env)
    fleet.wait_ready("n1", "n2", "n3")

    # The victim's good entry, then a newer one under the same prefix holding other paths.
    done, _ = _build(
        c.address, "mkdir -p deps && echo good > deps/who", key="web/deps-H1", paths=["deps"], zone="zone-a"
    )
    assert done.state == build_pb2.BUILD_STATE_SUCCEEDED and done.cache.saved, done
    done, _ = _build(
        c.address,
        "mkdir -p other && echo planted > other/x",
        key="web/deps-H2",
        paths=["other"],
        zone="zone-b",
    )
    assert done.state == build_pb2.BUILD_STATE_SUCCEEDED and done.cache.saved, done

    victim = "test -f deps/who && cat deps/who && echo hit=$STOKER_CACHE_HIT from=$STOKER_CACHE_RESTORED_KEY"
    # n2 holds the planted entry (the newest under the prefix) and finds it bad; n3 holds neither and
    # skips it on n2's mark in the blob store. (The victims save under keys outside the prefix, so the
    # planted entry stays the newest under it.)
    for zone, key, why in (
        ("zone-b", "web/victim-1", "do not hold ['deps']"),
        ("zone-c", "web/victim-2", "marked bad by another node"),
    ):
        done, lines = _build(c.address, victim, key=key, restore=["web/deps-"], paths=["deps"], zone=zone)
        assert done.state == build_pb2.BUILD_STATE_SUCCEEDED, (zone, done, lines)
        assert done.cache.restored_key == "web/deps-H1", (zone, done)
        assert lines[-2:] == ["good", "hit=partial from=web/deps-H1"], (zone, lines)
        skipped = [line for line in lines if line.startswith("stoker: cache entry web/deps-H2 skipped:")]
        assert len(skipped) == 1 and why in skipped[0], (zone, lines)

    marks = [
        o.name
        for o in S3BlobStore(bucket, prefix="cache", endpoint_url=seaweed_endpoint, region="us-east-1").list(
            "bad/"
        )
    ]
    assert len(marks) == 1 and marks[0].startswith("bad/web%2Fdeps-H2/"), marks
