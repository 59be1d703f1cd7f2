"""The coordinator's garbage-collector policy and pause measurement (coordinator/server.py)."""

from __future__ import annotations

import gc

from stoker.coordinator.server import GcPauses, GcPolicy


def test_policy_freezes_survivors_and_runs_a_full_collection_when_due():
    policy = GcPolicy(freeze_every_s=10.0, full_every_s=3600.0)
    kept = [[i] for i in range(1000)]  # tracked containers, alive
    try:
        assert policy.step() == "freeze"
        assert gc.get_freeze_count() >= len(kept)
        cycle = [None]
        cycle[0] = cycle  # garbage in a cycle, frozen with the rest at the next step
        del cycle
        policy.step()
        policy.full_every_s = 0.0
        assert policy.step() == "full"  # unfreezes, collects everything, freezes what is alive
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()


def test_pauses_are_timed_per_generation_and_drained_once():
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        gc.collect(0)
        gc.collect()
    finally:
        gc.callbacks.remove(pauses)
    drained = pauses.drain()
    assert [g for g, _, _ in drained] == [0, 2] and all(s >= 0 and n >= 0 for _, s, n in drained)
    assert pauses.drain() == []
