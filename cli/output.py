"""What the commands print that more than one of them needs: RPC failures, rollout phases and verdicts."""

from __future__ import annotations

import sys

import grpc

from stoker.v1 import rollout_pb2

EXIT_STOKER_ERROR = 125
"""The exit code when stoker itself could not do what was asked (the build's own codes pass through)."""

TERMINAL_PHASES = frozenset(
    {
        rollout_pb2.ROLLOUT_PHASE_SUCCEEDED,
        rollout_pb2.ROLLOUT_PHASE_ROLLED_BACK,
        rollout_pb2.ROLLOUT_PHASE_FAILED,
    }
)


def fail(exc: grpc.RpcError) -> int:
    """Say why an RPC failed, on stderr, and return the exit code for it."""
    print(f"stoker: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return EXIT_STOKER_ERROR


def phase_name(phase: int) -> str:
    return rollout_pb2.RolloutPhase.Name(phase).removeprefix("ROLLOUT_PHASE_").lower()


def verdict_result(v: rollout_pb2.Verdict) -> str:
    return rollout_pb2.VerdictResult.Name(v.result).removeprefix("VERDICT_RESULT_").lower()
