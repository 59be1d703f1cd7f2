"""The rollout store: SQLite (in the same file as the builds) and its in-memory twin behave the same."""

from __future__ import annotations

import pytest

from stoker.coordinator.core.errors import FailedPrecondition
from stoker.coordinator.core.state import SqliteStateStore
from stoker.coordinator.rollouts import machine as m
from stoker.coordinator.rollouts.store import MemoryRolloutStore, SqliteRolloutStore


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path):
    s = SqliteRolloutStore(tmp_path / "c.db") if request.param == "sqlite" else MemoryRolloutStore()
    yield s
    s.close()


def rollout(rid: str, service: str = "web", t: float = 1.0) -> m.Rollout:
    return m.new_rollout(rid, m.Spec(service=service, version="v2"), t)


def test_one_active_rollout_per_service(store):
    store.create(rollout("r1"))
    with pytest.raises(FailedPrecondition, match="already has a rollout in progress"):
        store.create(rollout("r2"))
    store.create(rollout("r3", service="api", t=2.0))
    r1 = store.get("r1")
    r1.phase = m.Phase.ROLLED_BACK
    store.save(r1)
    store.create(rollout("r4", t=3.0))
    assert [r.id for r in store.list()] == ["r4", "r3", "r1"]
    assert [r.id for r in store.list("web")] == ["r4", "r1"]
    assert [r.id for r in store.active()] == ["r3", "r4"]
    assert store.get("nope") is None


def test_intents_are_written_once(store):
    store.create(rollout("r1"))
    intent, fresh = store.record_intent("r1", "r1/1/canary", {"a": {"v1": 1, "v2": 1}}, 10.0)
    assert fresh and intent.done is None
    again, fresh = store.record_intent("r1", "r1/1/canary", {"a": {"v2": 9}}, 20.0)
    assert not fresh and again.desired == {"a": {"v1": 1, "v2": 1}} and again.created == 10.0
    store.finish_intent("r1", "r1/1/canary", 30.0)
    store.finish_intent("r1", "r1/1/canary", 40.0)
    assert [(i.key, i.done) for i in store.intents("r1")] == [("r1/1/canary", 30.0)]


def test_events_and_round_trip(store):
    r = rollout("r1")
    r.verdicts.append(
        __import__("stoker.coordinator.rollouts.judge", fromlist=["Verdict"]).Verdict(
            5.0, "pass", "ok", "all"
        )
    )
    store.create(r)
    store.append_event("r1", 1.0, "created")
    store.append_event("r1", 2.0, "canary")
    assert store.events("r1") == [(1.0, "created"), (2.0, "canary")]
    assert store.get("r1").to_dict() == r.to_dict()


def test_shares_the_builds_database_file(tmp_path):
    builds = SqliteStateStore(tmp_path / "c.db")
    rollouts = SqliteRolloutStore(tmp_path / "c.db")
    rollouts.create(rollout("r1"))
    assert builds.unfinished() == []
    reopened = SqliteRolloutStore(tmp_path / "c.db")
    assert reopened.get("r1").spec.service == "web"
    for s in (builds, rollouts, reopened):
        s.close()
