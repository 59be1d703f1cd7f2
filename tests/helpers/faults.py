"""Helpers the fault tests share (the conftest module name is taken by other test folders)."""

from __future__ import annotations

import time

import grpc

from stoker.v1 import build_pb2_grpc, common_pb2, inventory_pb2, inventory_pb2_grpc


def builds_stub(address: str) -> build_pb2_grpc.BuildsStub:
    return build_pb2_grpc.BuildsStub(grpc.insecure_channel(address))


def inventory(address: str, **kw) -> inventory_pb2.QueryInventoryResponse:
    with grpc.insecure_channel(address) as ch:
        return inventory_pb2_grpc.InventoryStub(ch).QueryInventory(
            inventory_pb2.QueryInventoryRequest(**kw), timeout=10
        )


def spec(
    command,
    *,
    key: str = "",
    paths=("out",),
    restore=(),
    workspace="web",
    timeout=120.0,
    zone="",
    labels=None,
) -> common_pb2.BuildSpec:
    return common_pb2.BuildSpec(
        workspace=workspace,
        command=list(command),
        timeout_s=timeout,
        cache=common_pb2.CacheSpec(key=key, restore_keys=list(restore), paths=list(paths) if key else []),
        constraints=common_pb2.Constraints(zone=zone, labels=labels or {}),
    )


def wait_until(predicate, timeout=30.0, message="condition", interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")


def kinds(events) -> list[str]:
    return [e.WhichOneof("kind") for e in events]
