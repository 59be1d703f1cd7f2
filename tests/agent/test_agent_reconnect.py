"""Every agent comes back after a coordinator kill -9, however its stream happened to break.

When the coordinator dies, an agent that writes to its stream at that moment (a heartbeat, a delta, a build
update) can find the call already finished: grpc.aio then raises ``asyncio.InvalidStateError`` ("RPC
already finished") from ``call.write`` rather than an ``AioRpcError``. The agent must treat that like any
other broken stream and reconnect (it used to stop silently: fixed in 98099e3). Agents here send heartbeats
every 5 ms, so at each kill most of them are writing; bench/load.py saw the same at the default interval.
"""

from __future__ import annotations

import time

import pytest

from stoker.v1 import inventory_pb2
from tests.helpers.faults import inventory, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

AGENTS = 6


def ready_nodes(address: str) -> set[str]:
    try:
        reply = inventory(address, summary_only=True)
    except Exception:
        return set()
    return {n.node for n in reply.nodes if n.state == inventory_pb2.NODE_STATE_READY}


def test_every_agent_reconnects_after_coordinator_kill_9(fleet, port_factory):
    port = port_factory()
    listen = f"127.0.0.1:{port}"
    state = fleet.root / "state.db"
    c = fleet.start_coordinator(listen=listen, state=state)
    names = [f"a{i}" for i in range(AGENTS)]
    for name in names:
        fleet.start_agent(name, env={"STOKER_AGENT_SERVER_HEARTBEAT_INTERVAL_S": "0.005"})
    fleet.wait_ready(*names)
    for round_ in range(3):
        c.kill()
        time.sleep(0.5)
        c = fleet.start_coordinator(listen=listen, state=state, name=f"coordinator-{round_ + 2}")
        try:
            wait_until(
                lambda address=c.address: ready_nodes(address) >= set(names),
                20,
                f"all {AGENTS} agents to reconnect after kill -9 number {round_ + 1}",
            )
        except AssertionError:
            missing = sorted(set(names) - ready_nodes(c.address))
            tails = {n: fleet.agents[n].log_tail(8) for n in missing}
            raise AssertionError(f"agents {missing} never came back; their logs end with:\n{tails}") from None
