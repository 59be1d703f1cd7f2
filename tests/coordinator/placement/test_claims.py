"""Node claims, checked (issue 16, item 5), in the pure core: what corroborates a claim, what sizes placement
sees, what a restarted coordinator still knows (vouchers in a real SQLite state store), and the build queue's
wiring of its builds' figures and its prewarms into the check."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from stoker.coordinator.config import BuildSettings
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.core.state import MemoryStateStore, SqliteStateStore
from stoker.coordinator.placement.build_queue import AgentLink, BuildQueue
from stoker.coordinator.placement.claims import ClaimChecker
from stoker.coordinator.placement.domain import (
    BYTES,
    CREATED,
    FILES,
    LAST_USED,
    SKETCH,
    EntryRecord,
    NodeInfo,
)
from stoker.coordinator.placement.inventory import InventoryIndex
from stoker.coordinator.placement.registry import NodeRegistry
from stoker.coordinator.placement.scheduler import Scheduler
from stoker.v1 import agent_pb2, build_pb2, common_pb2
from tests.helpers.clock import FakeClock


def claim(key: str, size: int = 100, created: float = 1.0, last_used: float = 1.0, sketch: bytes = b""):
    return EntryRecord(key=key, bytes=size, files=3, created=created, last_used=last_used, sketch=sketch)


def checker(store=None, clock=None) -> tuple[ClaimChecker, InventoryIndex, FakeClock]:
    clock = clock or FakeClock()
    inventory = InventoryIndex()
    return ClaimChecker(inventory, clock, store, window_s=600), inventory, clock


def test_a_claim_nothing_corroborates_makes_no_holder_and_is_counted():
    claims, inventory, _ = checker()
    claims.snapshot("liar", 0, [claim("web/a"), claim("web/b")])
    assert inventory.holders("web/a") == {} and inventory.entries("liar") == []
    assert sorted(e[0] for e in claims.uncorroborated("liar")) == ["web/a", "web/b"]
    assert claims.uncorroborated_total() == 2 and claims.flagged_nodes() == 1
    # A delta adds more claims; none of them counts either, and a removal takes one off the count.
    assert claims.delta("liar", 1, [claim("web/c")], ["web/a"])
    assert inventory.holders("web/c") == {} and claims.uncorroborated_total() == 2
    # A delta that skips a generation is refused, as the inventory refuses it.
    assert not claims.delta("liar", 5, [claim("web/d")], [])


def test_a_save_corroborates_the_claim_that_came_first_and_its_size_becomes_the_record():
    claims, inventory, _ = checker()
    claims.snapshot("n1", 0, [])
    # The agent's delta for its save arrives before its build's finished: uncorroborated for that moment.
    claims.delta("n1", 1, [claim("web/a", size=500, created=7.0, sketch=b"s1")], [])
    assert inventory.holders("web/a") == {} and claims.flagged_nodes() == 1
    claims.vouch("n1", "web/a")  # the build assigned to n1 saved web/a
    assert inventory.holders("web/a")["n1"][BYTES] == 500 and claims.flagged_nodes() == 0
    # Another node that restored it in an assigned build holds it at the record's size, creation time and
    # sketch, whatever it claims; its own last use is its own.
    claims.snapshot("n2", 0, [])
    claims.vouch("n2", "web/a", size=500, files=3)
    claims.delta("n2", 1, [claim("web/a", size=1, created=99.0, last_used=42.0, sketch=b"forged")], [])
    held = inventory.holders("web/a")["n2"]
    assert (held[BYTES], held[FILES], held[CREATED], held[SKETCH], held[LAST_USED]) == (
        500,
        3,
        7.0,
        b"s1",
        42.0,
    )
    # A later touch by n1 cannot rewrite its size either.
    claims.delta("n1", 2, [claim("web/a", size=1, last_used=50.0)], [])
    assert inventory.holders("web/a")["n1"][BYTES] == 500


def test_a_restore_vouches_with_its_own_size_and_an_eviction_ends_the_voucher():
    claims, inventory, _ = checker()
    claims.snapshot("n1", 0, [])
    claims.vouch("n1", "web/old", size=800, files=9)
    claims.delta("n1", 1, [claim("web/old", size=5)], [])
    assert inventory.holders("web/old")["n1"][BYTES] == 800
    claims.delta("n1", 2, [], ["web/old"])
    # Evicted, then claimed again without any fetch the coordinator knows of: no longer corroborated.
    claims.delta("n1", 3, [claim("web/old")], [])
    assert inventory.holders("web/old") == {} and claims.uncorroborated_total() == 1


def test_a_prewarm_corroborates_its_key_or_one_key_under_its_prefixes_that_another_node_holds():
    claims, inventory, clock = checker()
    claims.snapshot("n1", 0, [])
    claims.vouch("n1", "web/deps-1")
    claims.vouch("n1", "web/deps-2")
    claims.delta("n1", 1, [claim("web/deps-1"), claim("web/deps-2")], [])
    claims.snapshot("n2", 0, [claim("web/deps-3")])  # claimed before any prewarm: stays uncorroborated
    claims.expect("n2", ("web/deps-3",), ("web/deps-",))
    assert inventory.holders("web/deps-3") == {}
    # Reported after the prewarm: the asked key, and one known key under its prefix (the newest the agent
    # found when the exact key was missing); a second key under the prefix, or one nobody holds, is not.
    claims.delta(
        "n2", 1, [claim("web/deps-3"), claim("web/deps-2"), claim("web/deps-1"), claim("web/deps-9")], []
    )
    assert set(e[0] for e in inventory.entries("n2")) == {"web/deps-3", "web/deps-2"}
    assert sorted(e[0] for e in claims.uncorroborated("n2")) == ["web/deps-1", "web/deps-9"]
    # Past the window a prewarm corroborates nothing.
    claims.expect("n2", ("web/late",), ())
    clock.t += 601
    claims.delta("n2", 2, [claim("web/late")], [])
    assert inventory.holders("web/late") == {}


def test_a_restarted_coordinator_corroborates_from_the_vouchers_in_its_state_store(tmp_path):
    store = SqliteStateStore(tmp_path / "state.db")
    claims, inventory, _ = checker(store)
    claims.snapshot("n1", 0, [claim("web/a", size=500)])
    claims.vouch("n1", "web/a")
    claims.vouch("n1", "web/b", size=70, files=2)
    claims.delta("n1", 1, [claim("web/b", size=1)], [])
    store.close()
    store = SqliteStateStore(tmp_path / "state.db")
    claims, inventory, _ = checker(store)
    claims.snapshot("n1", 0, [claim("web/a", size=9), claim("web/b", size=9), claim("web/never")])
    assert {e[0]: e[BYTES] for e in inventory.entries("n1")} == {"web/a": 500, "web/b": 70}
    assert [e[0] for e in claims.uncorroborated("n1")] == ["web/never"]
    # Vouchers go with the build history (builds.history_days).
    store.prune(created_before=10**12)
    assert store.vouchers("n1") == {}


def test_checks_off_applies_reports_as_sent():
    inventory = InventoryIndex()
    claims = ClaimChecker(inventory, FakeClock(), enabled=False)
    claims.snapshot("n1", 0, [claim("web/a")])
    assert "n1" in inventory.holders("web/a") and claims.uncorroborated_total() == 0


def test_slots_are_bounded_by_the_setting_and_the_node_is_flagged():
    registry = NodeRegistry(FakeClock(), 10, max_slots=2)
    big = registry.register(NodeInfo(name="big", slots=8))
    small = registry.register(NodeInfo(name="small", slots=1))
    assert (big.info.slots, big.registered_slots, big.slots_flagged) == (2, 8, True)
    assert (small.info.slots, small.slots_flagged) == (1, False)


def test_the_build_queue_vouches_for_its_builds_saves_and_restores_and_its_prewarms():
    """The wiring: what a node's assigned build restored and saved, and what it was sent to prewarm, counts;
    another node's word about that build does not."""

    async def body():
        clock = FakeClock()
        registry = NodeRegistry(clock, lease_ttl_s=10)
        inventory = InventoryIndex()
        claims = ClaimChecker(inventory, clock, window_s=600)
        scheduler = Scheduler(inventory, clock)
        queue = BuildQueue(
            BuildSettings(),
            registry,
            inventory,
            scheduler,
            MemoryStateStore(),
            clock,
            CoordinatorMetrics(CollectorRegistry()),
            claims=claims,
        )
        for name in ("n1", "liar"):
            rec = registry.register(NodeInfo(name=name, slots=1, executor="podman"))
            registry.attach(name, rec.session_id)
            queue.attach(AgentLink(name, rec.session_id))
            queue.heartbeat(name, rec.session_id, agent_pb2.Heartbeat())
            claims.snapshot(name, 0, [])
        spec = common_pb2.BuildSpec(
            workspace="web",
            command=["true"],
            cache=common_pb2.CacheSpec(key="web/k2", restore_keys=["web/k"], paths=["nm"]),
        )
        build_id = queue.submit(spec)
        node = queue.get(build_id).node
        other = "liar" if node == "n1" else "n1"
        # The node's save and the entry it restored are reported before its build ends: not yet counted.
        claims.delta(node, 1, [claim("web/k2", size=300), claim("web/k1", size=5)], [])
        assert inventory.holders("web/k2") == {}
        # The other node says it ran that build, restored web/x and saved: not its build, nothing counts.
        claims.delta(other, 1, [claim("web/k2"), claim("web/x")], [])
        figures = common_pb2.CacheFigures(restored_key="web/x", saved=True)
        lie = build_pb2.BuildEvent(
            finished=build_pb2.Finished(state=build_pb2.BUILD_STATE_SUCCEEDED, cache=figures)
        )
        queue.build_update(other, agent_pb2.BuildUpdate(build_id=build_id, attempt=1, event=lie))
        assert queue.get(build_id).state == build_pb2.BUILD_STATE_RUNNING
        restored = common_pb2.CacheFigures(restored_key="web/k1", bytes_restored=200, files_restored=4)
        queue.build_update(
            node,
            agent_pb2.BuildUpdate(
                build_id=build_id,
                attempt=1,
                event=build_pb2.BuildEvent(restored=build_pb2.Restored(cache=restored)),
            ),
        )
        done = build_pb2.Finished(
            state=build_pb2.BUILD_STATE_SUCCEEDED, cache=common_pb2.CacheFigures(saved=True)
        )
        queue.build_update(
            node,
            agent_pb2.BuildUpdate(build_id=build_id, attempt=1, event=build_pb2.BuildEvent(finished=done)),
        )
        assert set(inventory.holders("web/k2")) == {node} and inventory.holders("web/k2")[node][BYTES] == 300
        assert inventory.holders("web/k1")[node][BYTES] == 200  # the restore's figures, not the claim's 5
        assert inventory.holders("web/x") == {} and len(claims.uncorroborated(other)) == 2
        # A prewarm the coordinator sends makes the node's later report of its key count.
        scheduler.prewarms.queue(other, "web/k2", ())
        queue.tick()
        assert inventory.holders("web/k2").keys() == {node}
        claims.delta(other, 2, [claim("web/k2")], [])
        assert set(inventory.holders("web/k2")) == {node, other}
        assert inventory.holders("web/k2")[other][BYTES] == 300  # the record's size, not the claim's 100

    asyncio.run(body())
