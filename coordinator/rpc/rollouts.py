"""The Rollouts RPCs: thin — convert, call the engine, convert back. Errors leave through ``status.py``.

The protobuf ⇄ rollout-domain conversions live here too (they concern only this service).
"""

from __future__ import annotations

from stoker.coordinator.core.errors import InvalidArgument
from stoker.coordinator.rollouts import judge, rollout_file
from stoker.coordinator.rollouts.engine import RolloutEngine
from stoker.coordinator.rollouts.machine import Phase, Rollout, Spec, plan_steps
from stoker.coordinator.rpc.convert import timestamp
from stoker.coordinator.rpc.status import streaming, unary
from stoker.v1 import rollout_pb2, rollout_pb2_grpc

PHASE_TO_PB = {
    Phase.PENDING: rollout_pb2.ROLLOUT_PHASE_PENDING,
    Phase.CANARY: rollout_pb2.ROLLOUT_PHASE_CANARY,
    Phase.BAKING: rollout_pb2.ROLLOUT_PHASE_BAKING,
    Phase.SURGING: rollout_pb2.ROLLOUT_PHASE_SURGING,
    Phase.POST_BAKE: rollout_pb2.ROLLOUT_PHASE_POST_BAKE,
    Phase.SUCCEEDED: rollout_pb2.ROLLOUT_PHASE_SUCCEEDED,
    Phase.ROLLING_BACK: rollout_pb2.ROLLOUT_PHASE_ROLLING_BACK,
    Phase.ROLLED_BACK: rollout_pb2.ROLLOUT_PHASE_ROLLED_BACK,
    Phase.PAUSED: rollout_pb2.ROLLOUT_PHASE_PAUSED,
    Phase.FAILED: rollout_pb2.ROLLOUT_PHASE_FAILED,
}
RESULT_TO_PB = {
    judge.PASS: rollout_pb2.VERDICT_RESULT_PASS,
    judge.FAIL: rollout_pb2.VERDICT_RESULT_FAIL,
    judge.INCONCLUSIVE: rollout_pb2.VERDICT_RESULT_INCONCLUSIVE,
}


def spec_from_pb(pb: rollout_pb2.RolloutSpec) -> Spec:
    return Spec(
        service=pb.service,
        version=pb.version,
        target=pb.target or "local",
        canary_percent=pb.canary_percent,
        bake_s=pb.bake_s,
        min_requests=pb.min_requests,
        zone_first=pb.zone_first,
        namespace=pb.namespace,
        post_bake_s=pb.post_bake_s,
        zones=tuple(pb.zones),
        instances_per_zone=pb.instances_per_zone,
        env=dict(pb.env),
    )


def spec_from_file(request: rollout_pb2.StartRolloutRequest) -> Spec:
    """The spec a rollout file describes, for ``request.spec.version`` (the file is untrusted input: the
    same strict loader as ``stoker rollout validate`` checks it)."""
    name = request.rollout_file_name or "rollout.yaml"
    loaded = rollout_file.load(request.rollout_file, name)
    if request.spec.service and request.spec.service != loaded.spec.service:
        raise InvalidArgument(
            f"spec.service: {request.spec.service!r} is not the file's service {loaded.spec.service!r}"
        )
    return loaded.with_version(request.spec.version)


def spec_to_pb(spec: Spec) -> rollout_pb2.RolloutSpec:
    return rollout_pb2.RolloutSpec(
        service=spec.service,
        target=spec.target,
        version=spec.version,
        canary_percent=spec.canary_percent,
        bake_s=spec.bake_s,
        min_requests=spec.min_requests,
        zone_first=spec.zone_first,
        namespace=spec.namespace,
        post_bake_s=spec.post_bake_s,
        zones=list(spec.zones),
        instances_per_zone=spec.instances_per_zone,
        env=spec.env,
        source=spec.source,
        deployment=spec.deployment,
    )


def verdict_to_pb(v: judge.Verdict) -> rollout_pb2.Verdict:
    return rollout_pb2.Verdict(
        time=timestamp(v.time),
        result=RESULT_TO_PB.get(v.result, rollout_pb2.VERDICT_RESULT_UNSPECIFIED),
        reason=v.reason,
        canary_requests=v.canary_requests,
        canary_errors=v.canary_errors,
        baseline_requests=v.baseline_requests,
        baseline_errors=v.baseline_errors,
        canary_p50_ms=v.canary_p50_ms,
        baseline_p50_ms=v.baseline_p50_ms,
        p_value=v.p_value,
        check=v.check,
        alpha=v.alpha,
    )


def rollout_to_pb(r: Rollout, endpoint: str = "") -> rollout_pb2.Rollout:
    pb = rollout_pb2.Rollout(
        id=r.id,
        spec=spec_to_pb(r.spec),
        phase=PHASE_TO_PB[r.phase],
        from_version=r.from_version,
        zones=[
            rollout_pb2.ZoneStatus(
                zone=z.zone, old_instances=z.old, new_instances=z.new, ready_instances=z.ready
            )
            for z in r.zones
        ],
        verdicts=[verdict_to_pb(v) for v in r.verdicts],
        created=timestamp(r.created),
        updated=timestamp(r.updated),
        message=r.message,
        endpoint=endpoint,
        attempt=r.attempt,
        events=r.history[-50:],
        plan=r.plan,
        step=r.step_index + 1,
        steps=len(plan_steps(r.spec)),
        awaiting_promotion=r.awaiting_promotion,
    )
    if r.last_look is not None:
        pb.last_look.CopyFrom(verdict_to_pb(r.last_look))
    if r.bake_until and r.phase in (Phase.BAKING, Phase.POST_BAKE):
        pb.bake_until.CopyFrom(timestamp(r.bake_until))
    if r.deadline and not r.terminal:
        pb.deadline.CopyFrom(timestamp(r.deadline))
    return pb


def _need_id(request) -> str:
    if not request.rollout_id:
        raise InvalidArgument("rollout_id: must not be empty")
    return request.rollout_id


class RolloutsServicer(rollout_pb2_grpc.RolloutsServicer):
    def __init__(self, engine: RolloutEngine) -> None:
        self._engine = engine

    def _pb(self, r: Rollout) -> rollout_pb2.Rollout:
        return rollout_to_pb(r, self._engine.endpoint(r))

    @unary
    async def StartRollout(self, request: rollout_pb2.StartRolloutRequest, context) -> rollout_pb2.Rollout:
        if request.rollout_file:
            return self._pb(await self._engine.start(spec_from_file(request)))
        if not request.HasField("spec"):
            raise InvalidArgument("spec: required")
        return self._pb(await self._engine.start(spec_from_pb(request.spec)))

    @unary
    async def GetRollout(self, request: rollout_pb2.GetRolloutRequest, context) -> rollout_pb2.Rollout:
        return self._pb(self._engine.get(_need_id(request)))

    @streaming
    async def WatchRollout(self, request: rollout_pb2.GetRolloutRequest, context):
        async for r in self._engine.watch(_need_id(request)):
            yield self._pb(r)

    @unary
    async def ListRollouts(self, request: rollout_pb2.ListRolloutsRequest, context):
        return rollout_pb2.ListRolloutsResponse(
            rollouts=[self._pb(r) for r in self._engine.list(request.service)]
        )

    @unary
    async def PromoteRollout(self, request: rollout_pb2.RolloutActionRequest, context) -> rollout_pb2.Rollout:
        return self._pb(await self._engine.act(_need_id(request), "promote", request.reason))

    @unary
    async def AbortRollout(self, request: rollout_pb2.RolloutActionRequest, context) -> rollout_pb2.Rollout:
        return self._pb(await self._engine.act(_need_id(request), "abort", request.reason))

    @unary
    async def PauseRollout(self, request: rollout_pb2.RolloutActionRequest, context) -> rollout_pb2.Rollout:
        return self._pb(await self._engine.act(_need_id(request), "pause", request.reason))

    @unary
    async def RetryRollout(self, request: rollout_pb2.RolloutActionRequest, context) -> rollout_pb2.Rollout:
        return self._pb(await self._engine.act(_need_id(request), "retry", request.reason))

    @unary
    async def ResumeRollout(self, request: rollout_pb2.RolloutActionRequest, context) -> rollout_pb2.Rollout:
        return self._pb(await self._engine.act(_need_id(request), "resume", request.reason))
