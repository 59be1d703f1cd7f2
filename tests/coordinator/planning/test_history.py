"""The history as a trace (coordinator/planning/history.py): sizes, measured changed shares and rates, the
fleet's real joins and losses under the simulator's names; the node events' SQLite table; the dead-time
split; the planner's variants and its answer to a p99 target."""

from __future__ import annotations

from stoker.coordinator.core.state import NodeEvent, SqliteStateStore
from stoker.coordinator.planning import dead_time, planner
from stoker.coordinator.planning.history import NodeChange, RunRecord, from_history
from stoker.coordinator.planning.trace import Build, Fleet, FleetEvent, parse_record, record_doc

T0 = 1_700_000_000.0


def run(i: int, key: str, **kw) -> RunRecord:
    base = dict(
        id=f"b{i}",
        created=T0 + 10 * i,
        workspace="web",
        tenant="web",
        key=key,
        run_s=5.0,
        restore_keys=("web/deps-",),
        node="n1",
        placed_after_s=0.5,
        started_after_s=1.0,
    )
    base.update(kw)
    return RunRecord(**base)  # fmt: skip


def test_sizes_changed_shares_rates_and_the_fleets_changes_become_the_trace():
    runs = [
        # v1 saved cold from nothing: 4 MB stored, compressed 2:1 (a later cold restore fetched 4 of 8 MB).
        run(0, "web/deps-v1", warmth="cold", saved=True, bytes_uploaded=4_000_000),
        run(1, "web/deps-v1", node="n2", warmth="cold", restored_key="web/deps-v1", bytes_fetched=4_000_000,
            bytes_restored=8_000_000, files_restored=800, restore_s=2.0),
        # v2 saved by a build that restored v1 locally and uploaded 400 kB: 10 % of 4 MB changed.
        run(2, "web/deps-v2", warmth="partial", restored_key="web/deps-v1", bytes_restored=8_000_000,
            bytes_uploaded=400_000, saved=True, restore_s=0.5),
        run(3, "web/deps-v2", node="n2", warmth="warm", restored_key="web/deps-v2", bytes_restored=8_000_000,
            restore_s=0.4),
        run(4, "", workspace="docs", tenant="docs", restore_keys=()),  # no cache: still held a slot
        run(5, "web/deps-v2", ran=False, node=""),  # cancelled while queued: never ran
    ]  # fmt: skip
    changes = [
        NodeChange(T0 - 60, "n1", "joined", "zone-a", 2, 50_000_000_000),
        NodeChange(T0 - 50, "n2", "joined", "zone-b", 2, 50_000_000_000),
        NodeChange(T0 - 40, "old", "joined", "zone-a", 2, 1),
        NodeChange(T0 - 30, "old", "lost"),
        NodeChange(T0 + 15, "n1", "joined", "zone-a", 2, 1),  # reconnected, not new: no event
        NodeChange(T0 + 25, "n3", "joined", "zone-c", 2, 1),
        NodeChange(T0 + 35, "n2", "lost"),
        NodeChange(T0 + 45, "n3", "lost"),
        NodeChange(T0 + 55, "n2", "joined", "zone-b", 2, 1),  # back after it was lost: a new node
        NodeChange(T0 + 65, "n2", "lost"),
    ]
    h = from_history(runs, changes)
    builds = [r for r in h.records if isinstance(r, Build)]
    events = [r for r in h.records if isinstance(r, FleetEvent)]
    assert [b.key for b in builds] == ["web/deps-v1"] * 2 + ["web/deps-v2"] * 2 + ["docs/~no-cache"]
    assert h.measured.compression == 0.5
    assert builds[0].bytes == 4_000_000 and builds[2].bytes == 4_000_000 and builds[4].bytes == 0
    assert builds[1].files == 800
    assert [b.changed_fraction for b in builds[:4]] == [0.0, 0.0, 0.1, 0.1]
    assert builds[1].observed == {"warmth": "cold", "bytes_fetched": 4_000_000, "node": "n2",
                                  "ready_s": 2.0}  # fmt: skip
    assert [(e.t, e.event, e.node, e.zone) for e in events] == [
        (25.0, "node_add", "n3", "zone-c"),
        (35.0, "node_fail", "n2", ""),
        (45.0, "node_fail", "n3", ""),
        (55.0, "node_add", "n2~1", "zone-b"),
        (65.0, "node_fail", "n2~1", ""),
    ]
    assert (h.fleet.nodes, h.fleet.slots, h.fleet.zones, h.fleet.disk_bytes) == (
        2,
        2,
        ("zone-a", "zone-b"),
        50e9,
    )
    assert (h.fleet.node_names, h.fleet.node_zones) == (("n1", "n2"), ("zone-a", "zone-b"))
    assert h.fleet.fetch_bps == 2 * 4_000_000 / 2.0  # fetch+extract measured together, split evenly
    assert h.fleet.materialize_bps == 8_000_000 * 0.5 / 0.4
    # Every record survives the trace format's own validation as it is written.
    for i, r in enumerate(h.records):
        assert parse_record(record_doc(r), f"line {i}") == r


def test_a_replay_adds_and_loses_the_named_nodes_also_in_a_larger_fleet():
    from dataclasses import replace

    from stoker.coordinator.planning.planner import replay

    runs = [run(i, "web/deps-v1", warmth="warm", node="n1") for i in range(8)]
    changes = [
        NodeChange(T0 - 60, "n1", "joined", "zone-a", 1, 10**10),
        NodeChange(T0 + 15, "n3", "joined", "zone-b", 1, 10**10),
        NodeChange(T0 + 45, "n3", "lost"),
    ]
    h = from_history(runs, changes)
    for nodes in (1, 4):  # the fleet as it was, and a variant with three more nodes
        sim = replay(h.records, replace(h.fleet, nodes=nodes))
        assert "n3" in sim.nodes and not sim.nodes["n3"].alive and sim.nodes["n3"].died == 45.0
        assert sum(1 for n in sim.nodes.values() if n.alive) == nodes


def test_an_empty_history_is_an_empty_trace_on_the_default_fleet():
    h = from_history([], [])
    assert h.records == [] and h.fleet.nodes == Fleet().nodes


def test_node_events_are_kept_in_sqlite_across_a_restart(tmp_path):
    store = SqliteStateStore(tmp_path / "state.db")
    store.append_node_event(NodeEvent(T0, "n1", "joined", "zone-a", 4, 10))
    store.append_node_event(NodeEvent(T0 + 1, "n1", "lost", "zone-a", 4, 10))
    store.close()
    store = SqliteStateStore(tmp_path / "state.db")
    assert [(e.node, e.event, e.slots) for e in store.node_events()] == [
        ("n1", "joined", 4),
        ("n1", "lost", 4),
    ]
    store.close()


def test_dead_time_splits_into_phases_and_names_the_largest():
    slow_queue = run(0, "k", placed_after_s=20.0, pull_s=1.0, restore_s=2.0, started_after_s=24.0,
                     first_line_after_s=24.5, warmth="warm")  # fmt: skip
    d = dead_time.dead_time(slow_queue)
    assert d is not None
    assert (d.queue, d.pull, d.restore, d.start) == (20.0, 1.0, 2.0, 0.5)
    assert round(d.placement, 6) == 1.0 and d.total == 24.5
    assert dead_time.dead_time(run(1, "k", started_after_s=-1)) is None  # never started
    report = dead_time.report([slow_queue], by="workspace")
    assert report["groups"][0]["advice"].startswith("more slots or nodes")
    cold = run(2, "k", placed_after_s=0.1, restore_s=9.0, started_after_s=9.5, warmth="cold")
    assert dead_time.report([cold])["overall"]["advice"].startswith("a prewarm of its keys or a bigger disk")


def test_the_smallest_fleet_meeting_the_target_or_the_closest():
    results = [
        {"variant": "a", "nodes": 4, "slots": 2, "disk_bytes": 1, "cost": 3, "ready_p99_s": 40.0},
        {"variant": "b", "nodes": 8, "slots": 2, "disk_bytes": 1, "cost": 6, "ready_p99_s": 12.0},
        {"variant": "c", "nodes": 16, "slots": 2, "disk_bytes": 1, "cost": 12, "ready_p99_s": 9.0},
    ]
    best, closest = planner.smallest_meeting(results, 30.0)
    assert best is not None and best["variant"] == "b" and closest["variant"] == "c"
    best, closest = planner.smallest_meeting(results, 5.0)
    assert best is None and closest["variant"] == "c"
    assert len(planner.variants([1, 2], [1e9], None, [1, 3], ["stoker", "least_loaded"])) == 8
