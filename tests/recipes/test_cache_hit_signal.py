"""The build's environment says what the restore found: STOKER_CACHE_HIT and STOKER_CACHE_RESTORED_KEY."""

from __future__ import annotations

import pytest

from stoker.v1 import build_pb2, common_pb2

pytestmark = pytest.mark.integration

WRITE = "mkdir -p out && echo {v} > out/v"


def test_exact_partial_and_none_reach_the_build(recipe_fleet):
    f = recipe_fleet
    first = f.run(WRITE.format(v=1), {}, key="sig/k-1", restore=("sig/k-",), paths=("out",))
    assert first.ok, first.explain()
    assert (first.env("STOKER_CACHE_HIT"), first.env("STOKER_CACHE_RESTORED_KEY")) == ("none", "")

    again = f.run("cat out/v", {}, key="sig/k-1", restore=("sig/k-",), paths=("out",))
    assert (again.env("STOKER_CACHE_HIT"), again.env("STOKER_CACHE_RESTORED_KEY")) == ("exact", "sig/k-1")
    assert "1" in again.lines

    newer = f.run(WRITE.format(v=2), {}, key="sig/k-2", restore=("sig/k-",), paths=("out",))
    assert (newer.env("STOKER_CACHE_HIT"), newer.env("STOKER_CACHE_RESTORED_KEY")) == ("partial", "sig/k-1")

    unrelated = f.run("true", {}, key="sig/other", paths=("out",))
    assert (unrelated.env("STOKER_CACHE_HIT"), unrelated.env("STOKER_CACHE_RESTORED_KEY")) == ("none", "")

    no_cache = f.run("true", {})
    assert no_cache.env("STOKER_CACHE_HIT") == "none"


def test_a_build_cannot_claim_a_hit_through_its_env(recipe_fleet):
    b = recipe_fleet.run(
        "true",
        {},
        key="sig/fresh",
        paths=("out",),
        env={"STOKER_CACHE_HIT": "exact", "STOKER_CACHE_RESTORED_KEY": "sig/fresh"},
    )
    assert (b.env("STOKER_CACHE_HIT"), b.env("STOKER_CACHE_RESTORED_KEY")) == ("none", "")


def test_an_exact_entry_fetched_from_the_blob_store_is_exact_though_the_node_was_cold(recipe_fleet):
    f = recipe_fleet
    assert f.run(WRITE.format(v=3), {}, key="sig/shared", paths=("out",)).ok
    f.fleet.start_agent("n2", zone="zone-b", env={"HOME": str(f.home)})
    f.fleet.wait_ready("n1", "n2")
    spec = common_pb2.BuildSpec(
        workspace="web",
        command=["sh", "-c", 'echo "HIT=$STOKER_CACHE_HIT" && cat out/v'],
        timeout_s=60,
        constraints=common_pb2.Constraints(zone="zone-b"),
        cache=common_pb2.CacheSpec(key="sig/shared", paths=["out"]),
    )
    events = list(f.stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=120))
    logs = [e.log.text for e in events if e.HasField("log")]
    fin = events[-1].finished
    assert fin.node == "n2" and fin.cache.warmth == common_pb2.WARMTH_COLD and fin.cache.bytes_fetched > 0
    assert "HIT=exact" in logs and "3" in logs
