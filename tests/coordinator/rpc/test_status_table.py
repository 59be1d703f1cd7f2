"""Every refusal leaves through the one table of domain errors → gRPC codes (``rpc/status.py``).

The table itself, against the contract in STYLE.md, and the refusals of an agent's ``Connect`` stream
through a real coordinator over gRPC on 127.0.0.1: each comes from a domain error the table converts.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import CollectorRegistry

from stoker.coordinator import config as coordinator_config
from stoker.coordinator.core import errors
from stoker.coordinator.rpc.status import STATUS_FOR, status_for
from stoker.coordinator.server import create_server
from stoker.v1 import agent_pb2, agent_pb2_grpc


def test_every_domain_error_has_its_code_and_anything_else_is_internal():
    assert {cls.__name__: code for cls, code in STATUS_FOR.items()} == {
        "NotFound": grpc.StatusCode.NOT_FOUND,
        "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
        "AlreadyExists": grpc.StatusCode.ALREADY_EXISTS,
        "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION,
        "Aborted": grpc.StatusCode.ABORTED,
        "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Unavailable": grpc.StatusCode.UNAVAILABLE,
        "DeadlineExceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
        "Unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
        "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
    }
    declared = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.DomainError) and cls is not errors.DomainError
    }
    assert declared == set(STATUS_FOR), "a domain error without a row in the table would leave as INTERNAL"
    assert status_for(errors.DomainError("bare")) == grpc.StatusCode.INTERNAL
    assert status_for(KeyError("bug")) == grpc.StatusCode.INTERNAL


async def _connect_refusals() -> dict[str, tuple[grpc.StatusCode, str]]:
    config = coordinator_config.load(
        environ={},
        overrides={
            "server": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"},
            "state": {"path": ":memory:"},
        },
    )
    coordinator = create_server(config, registry=CollectorRegistry())
    await coordinator.start()
    out: dict[str, tuple[grpc.StatusCode, str]] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            snapshot = agent_pb2.InventorySnapshot(generation=1)

            async def refusal(first: agent_pb2.AgentMessage) -> tuple[grpc.StatusCode, str]:
                async def messages():
                    yield first
                    await asyncio.sleep(30)  # keeps the stream open: the refusal must come from the server

                call = stub.Connect(messages(), timeout=10)
                try:
                    await call.read()
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details()
                call.cancel()
                return grpc.StatusCode.OK, ""

            out["unknown session"] = await refusal(
                agent_pb2.AgentMessage(session_id="nope", snapshot=snapshot)
            )
            old = await stub.Register(agent_pb2.RegisterRequest(node="n1", slots=1), timeout=10)
            out["no snapshot first"] = await refusal(
                agent_pb2.AgentMessage(session_id=old.session_id, heartbeat=agent_pb2.Heartbeat())
            )
            await stub.Register(agent_pb2.RegisterRequest(node="n1", slots=1), timeout=10)
            out["superseded session"] = await refusal(
                agent_pb2.AgentMessage(session_id=old.session_id, snapshot=snapshot)
            )
    finally:
        await coordinator.stop(grace_s=0)
    return out


@pytest.mark.integration
def test_connect_refusals_leave_with_the_codes_of_the_table():
    got = asyncio.run(_connect_refusals())
    assert got["unknown session"] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "unknown session: call Register first (the coordinator may have restarted)",
    )
    assert got["no snapshot first"] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the first message must carry a snapshot",
    )
    code, details = got["superseded session"]
    assert code == grpc.StatusCode.ABORTED and "superseded by a newer registration" in details
