"""The agent keeps each build event until the coordinator acknowledges storing it (agent/session.py,
``UnackedEvents``); after a reconnection it sends every unacknowledged one again, in the order made. The
coordinator's side (dropping repeats, acknowledging) is in tests/coordinator/placement/test_build_queue.py,
and both together under kill -9 in tests/coordinator/test_coordinator_kill.py."""

from __future__ import annotations

from stoker.agent.session import UnackedEvents
from stoker.v1 import build_pb2


def line(text: str) -> build_pb2.BuildEvent:
    return build_pb2.BuildEvent(log=build_pb2.LogLine(text=text))


def texts(events: UnackedEvents) -> list[tuple[str, int, int, str]]:
    return [
        (
            m.build_update.build_id,
            m.build_update.attempt,
            m.build_update.agent_seq,
            m.build_update.event.log.text,
        )
        for m in events.pending()
    ]


def test_events_are_numbered_per_attempt_and_kept_in_order_until_acknowledged():
    events = UnackedEvents()
    events.add("b1", 1, line("a"))
    events.add("b2", 1, line("x"))
    events.add("b1", 1, line("b"))
    events.add("b1", 2, line("c"))  # a new attempt numbers from 1 again
    assert texts(events) == [("b1", 1, 1, "a"), ("b2", 1, 1, "x"), ("b1", 1, 2, "b"), ("b1", 2, 1, "c")]
    events.ack("b1", 1, 1)
    events.ack("b9", 1, 5)  # unknown: nothing happens
    assert texts(events) == [("b2", 1, 1, "x"), ("b1", 1, 2, "b"), ("b1", 2, 1, "c")]
    events.ack("b1", 1, 7)  # an acknowledgement covers every number up to its own
    events.ack("b2", 1, 0)
    assert texts(events) == [("b2", 1, 1, "x"), ("b1", 2, 1, "c")]


def test_an_attempt_whose_end_is_acknowledged_is_forgotten_and_log_lines_past_the_bound_are_dropped():
    events = UnackedEvents(log_limit=3)
    for text in ("1", "2", "3", "4"):
        events.add("b1", 1, line(text))
    assert events.dropped_logs == 1 and len(events) == 3
    end = events.add("b1", 1, build_pb2.BuildEvent(finished=build_pb2.Finished(exit_code=0)))
    assert end is not None and end.build_update.agent_seq == 4  # the end is never dropped
    events.ack("b1", 1, 4)
    assert len(events) == 0 and events.pending() == []
    assert events._numbers == {} and events._of_attempt == {}  # nothing of the attempt is kept
