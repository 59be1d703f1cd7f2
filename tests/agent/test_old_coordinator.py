"""An agent beside a coordinator from before build events were numbered (a rolling upgrade that reaches the
nodes first). Such a coordinator never acknowledges events, and records every event it is sent: the agent
must take a written event as delivered (RegisterResponse.acknowledges_build_events is false), not keep it and
send it again after a reconnection, where it would be recorded twice.

The old coordinator is a small gRPC server in this test speaking the AgentGateway API as that version did
(Register without the flag; Connect sends one build, never acknowledges); the agent is the real process.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from stoker.demo import local_fleet
from stoker.v1 import agent_pb2, agent_pb2_grpc
from tests.helpers.faults import spec, wait_until

pytestmark = pytest.mark.integration


class OldCoordinator(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self) -> None:
        self.updates: list[list[agent_pb2.BuildUpdate]] = []
        """The build updates received on each connection, in order."""
        self.lock = threading.Lock()

    def Register(self, request, context):
        return agent_pb2.RegisterResponse(session_id="s", lease_ttl_s=30, heartbeat_interval_s=0.2)

    def Connect(self, request_iterator, context):
        with self.lock:
            seen: list[agent_pb2.BuildUpdate] = []
            self.updates.append(seen)
            first = len(self.updates) == 1
        ended = threading.Event()

        def read() -> None:
            try:
                for message in request_iterator:
                    if message.WhichOneof("body") == "build_update":
                        seen.append(message.build_update)
                        if message.build_update.event.HasField("finished"):
                            ended.set()
            except grpc.RpcError:
                pass  # the stream ended

        threading.Thread(target=read, daemon=True).start()
        if first:
            command = agent_pb2.RunBuildCommand(
                build_id="b-old", attempt=1, spec=spec(["sh", "-c", "echo a; echo b"], workspace="w-old")
            )
            yield agent_pb2.CoordinatorCommand(run_build=command)
            ended.wait(30)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the old coordinator restarts")
        time.sleep(3.0)  # the second connection: long enough for the agent to send anything it kept


def test_an_agent_does_not_send_events_again_to_a_coordinator_that_never_acknowledges_them(fleet):
    old = OldCoordinator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(old, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        address = f"127.0.0.1:{port}"
        fleet.agents["n-old"] = local_fleet.start_agent(fleet.root, "n-old", address, blobs=fleet.blobs)
        wait_until(lambda: len(old.updates) >= 2, 60, "the agent to run the build and connect again")
        time.sleep(2.0)
        first, second = old.updates[0], old.updates[1]
        kinds = [u.event.WhichOneof("kind") for u in first]
        assert "finished" in kinds and [u.agent_seq for u in first] == list(range(1, len(first) + 1)), kinds
        assert [u.event.log.text for u in first if u.event.HasField("log")][-2:] == ["a", "b"]
        assert second == [], [u.event.WhichOneof("kind") for u in second]
    finally:
        server.stop(0)
