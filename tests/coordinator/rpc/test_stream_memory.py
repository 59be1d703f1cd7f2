"""Agents' first stream messages (their whole inventories) on the coordinator: none is kept once applied, and
a stream that sends none gives up its turn.

A real coordinator (``create_server``, run in this test's process so that its live objects can be counted)
and real agent streams over gRPC on 127.0.0.1. The first message of a stream is the node's whole inventory
(~0.6 MB for 1,000 entries with their content sketches). The Connect handler used to keep that message for
the life of the stream: with a fleet of 1,000 nodes, ~570 MB of the coordinator's memory (bench/load.py). And
only ``nodes.snapshot_intake`` streams read and apply their first message at once, so that a fleet connecting
together does not put every snapshot in memory at the same time.
"""

from __future__ import annotations

import asyncio
import gc
import random

import grpc
import pytest
from prometheus_client import CollectorRegistry

from stoker.common import sketch
from stoker.coordinator import config as coordinator_config
from stoker.coordinator.server import create_server
from stoker.v1 import agent_pb2, agent_pb2_grpc, common_pb2

pytestmark = pytest.mark.integration

NODES = 3
ENTRIES = 1000


def _snapshot(rng: random.Random) -> agent_pb2.InventorySnapshot:
    return agent_pb2.InventorySnapshot(
        generation=1,
        entries=[
            common_pb2.CacheEntry(
                key=f"ws/deps-{i:05d}",
                bytes=1 << 20,
                files=10,
                sketch=sketch.pack(sorted(rng.getrandbits(64) for _ in range(64))),
            )
            for i in range(ENTRIES)
        ],
    )


def _live_snapshot_messages() -> int:
    """Agent messages carrying a snapshot that are alive in this process."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, agent_pb2.AgentMessage) and o.WhichOneof("body") == "snapshot"
    )


async def _run() -> tuple[int, int]:
    config = coordinator_config.load(
        overrides={
            "server": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"},
            "state": {"path": ":memory:"},
        }
    )
    metrics = CollectorRegistry()
    coordinator = create_server(config, registry=metrics)
    await coordinator.start()
    rng = random.Random(1)
    streams = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            for n in range(NODES):
                reply = await stub.Register(agent_pb2.RegisterRequest(node=f"n{n}", slots=1), timeout=10)
                queue: asyncio.Queue = asyncio.Queue()
                # Built here and handed over, not kept by the test: the only copies left are the
                # coordinator's.
                queue.put_nowait(agent_pb2.AgentMessage(session_id=reply.session_id, snapshot=_snapshot(rng)))
                queue.put_nowait(
                    agent_pb2.AgentMessage(
                        session_id=reply.session_id, heartbeat=agent_pb2.Heartbeat(free_slots=1, generation=1)
                    )
                )

                async def messages(queue=queue):
                    while (m := await queue.get()) is not None:
                        yield m

                streams.append((queue, stub.Connect(messages())))
            for _ in range(200):  # until every snapshot is applied and each stream has moved past it
                if (
                    all(coordinator.inventory.generation(f"n{n}") == 1 for n in range(NODES))
                    and (
                        metrics.get_sample_value(
                            "stoker_coordinator_agent_messages_total", {"kind": "heartbeat"}
                        )
                        or 0
                    )
                    >= NODES
                ):
                    break
                await asyncio.sleep(0.05)
            applied = sum(_taken(coordinator, f"n{n}") for n in range(NODES))
            kept = _live_snapshot_messages()  # the streams are still open
            for queue, call in streams:
                queue.put_nowait(None)
                call.cancel()
    finally:
        await coordinator.stop(grace_s=0)
    return applied, kept


def _taken(coordinator, node: str) -> int:
    """Entries the coordinator took in from ``node``: corroborated or not (these nodes' are not)."""
    assert coordinator.claims is not None
    return len(coordinator.inventory.entries(node)) + len(coordinator.claims.uncorroborated(node))


def test_the_coordinator_keeps_no_snapshot_message_once_applied():
    applied, kept = asyncio.run(_run())
    assert applied == NODES * ENTRIES
    assert kept == 0, f"{kept} snapshot messages still alive while their streams are open"


async def _run_silent_first() -> tuple[grpc.StatusCode, str, bool, int]:
    config = coordinator_config.load(
        overrides={
            "server": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"},
            "state": {"path": ":memory:"},
            "nodes": {"snapshot_intake": 1, "first_message_s": 1.0},
        }
    )
    coordinator = create_server(config, registry=CollectorRegistry())
    await coordinator.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            silent_gate, talker_gate = asyncio.Event(), asyncio.Event()

            async def silent():  # connects and never sends its first message
                await silent_gate.wait()
                yield agent_pb2.AgentMessage()

            silent_call = stub.Connect(silent())
            await asyncio.sleep(0.2)  # the silent stream takes the only turn first
            reply = await stub.Register(agent_pb2.RegisterRequest(node="n1", slots=1), timeout=10)

            async def talker():
                yield agent_pb2.AgentMessage(
                    session_id=reply.session_id,
                    snapshot=agent_pb2.InventorySnapshot(
                        generation=1, entries=[common_pb2.CacheEntry(key="ws/deps-1", bytes=1)]
                    ),
                )
                await talker_gate.wait()

            talker_call = stub.Connect(talker())
            await asyncio.sleep(0.5)
            waited = coordinator.inventory.generation("n1") == -1  # its turn has not come yet
            try:
                await asyncio.wait_for(silent_call.read(), 10)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details()
            else:
                code, details = grpc.StatusCode.OK, ""
            for _ in range(100):
                if coordinator.inventory.generation("n1") == 1:
                    break
                await asyncio.sleep(0.05)
            applied = _taken(coordinator, "n1")
            silent_gate.set()
            talker_gate.set()
            talker_call.cancel()
    finally:
        await coordinator.stop(grace_s=0)
    return code, details, waited, applied


def test_a_stream_without_a_first_message_is_ended_and_the_next_takes_its_turn():
    code, details, waited, applied = asyncio.run(_run_silent_first())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "no first message within 1 s" in details
    assert waited, "the second stream's snapshot was applied while the only turn was taken"
    assert applied == 1
