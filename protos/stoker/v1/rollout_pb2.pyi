import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_PHASE_UNSPECIFIED: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_PENDING: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_CANARY: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_BAKING: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_SURGING: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_POST_BAKE: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_SUCCEEDED: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_ROLLING_BACK: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_ROLLED_BACK: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_PAUSED: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_FAILED: _ClassVar[RolloutPhase]

class VerdictResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_RESULT_UNSPECIFIED: _ClassVar[VerdictResult]
    VERDICT_RESULT_PASS: _ClassVar[VerdictResult]
    VERDICT_RESULT_FAIL: _ClassVar[VerdictResult]
    VERDICT_RESULT_INCONCLUSIVE: _ClassVar[VerdictResult]
ROLLOUT_PHASE_UNSPECIFIED: RolloutPhase
ROLLOUT_PHASE_PENDING: RolloutPhase
ROLLOUT_PHASE_CANARY: RolloutPhase
ROLLOUT_PHASE_BAKING: RolloutPhase
ROLLOUT_PHASE_SURGING: RolloutPhase
ROLLOUT_PHASE_POST_BAKE: RolloutPhase
ROLLOUT_PHASE_SUCCEEDED: RolloutPhase
ROLLOUT_PHASE_ROLLING_BACK: RolloutPhase
ROLLOUT_PHASE_ROLLED_BACK: RolloutPhase
ROLLOUT_PHASE_PAUSED: RolloutPhase
ROLLOUT_PHASE_FAILED: RolloutPhase
VERDICT_RESULT_UNSPECIFIED: VerdictResult
VERDICT_RESULT_PASS: VerdictResult
VERDICT_RESULT_FAIL: VerdictResult
VERDICT_RESULT_INCONCLUSIVE: VerdictResult

class RolloutSpec(_message.Message):
    __slots__ = ("service", "target", "version", "canary_percent", "bake_s", "min_requests", "zone_first", "namespace", "post_bake_s", "zones", "instances_per_zone", "env", "source", "deployment")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    BAKE_S_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIRST_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POST_BAKE_S_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_PER_ZONE_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    service: str
    target: str
    version: str
    canary_percent: float
    bake_s: float
    min_requests: int
    zone_first: bool
    namespace: str
    post_bake_s: float
    zones: _containers.RepeatedScalarFieldContainer[str]
    instances_per_zone: int
    env: _containers.ScalarMap[str, str]
    source: str
    deployment: str
    def __init__(self, service: _Optional[str] = ..., target: _Optional[str] = ..., version: _Optional[str] = ..., canary_percent: _Optional[float] = ..., bake_s: _Optional[float] = ..., min_requests: _Optional[int] = ..., zone_first: _Optional[bool] = ..., namespace: _Optional[str] = ..., post_bake_s: _Optional[float] = ..., zones: _Optional[_Iterable[str]] = ..., instances_per_zone: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ..., source: _Optional[str] = ..., deployment: _Optional[str] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("spec", "rollout_file", "rollout_file_name")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FILE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    spec: RolloutSpec
    rollout_file: str
    rollout_file_name: str
    def __init__(self, spec: _Optional[_Union[RolloutSpec, _Mapping]] = ..., rollout_file: _Optional[str] = ..., rollout_file_name: _Optional[str] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class RolloutActionRequest(_message.Message):
    __slots__ = ("rollout_id", "reason")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    reason: str
    def __init__(self, rollout_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ZoneStatus(_message.Message):
    __slots__ = ("zone", "old_instances", "new_instances", "ready_instances")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    OLD_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NEW_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    READY_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    zone: str
    old_instances: int
    new_instances: int
    ready_instances: int
    def __init__(self, zone: _Optional[str] = ..., old_instances: _Optional[int] = ..., new_instances: _Optional[int] = ..., ready_instances: _Optional[int] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("time", "result", "reason", "canary_requests", "canary_errors", "baseline_requests", "baseline_errors", "canary_p50_ms", "baseline_p50_ms", "p_value", "check", "alpha")
    TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANARY_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CANARY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CANARY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_P50_MS_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    result: VerdictResult
    reason: str
    canary_requests: int
    canary_errors: int
    baseline_requests: int
    baseline_errors: int
    canary_p50_ms: float
    baseline_p50_ms: float
    p_value: float
    check: str
    alpha: float
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[_Union[VerdictResult, str]] = ..., reason: _Optional[str] = ..., canary_requests: _Optional[int] = ..., canary_errors: _Optional[int] = ..., baseline_requests: _Optional[int] = ..., baseline_errors: _Optional[int] = ..., canary_p50_ms: _Optional[float] = ..., baseline_p50_ms: _Optional[float] = ..., p_value: _Optional[float] = ..., check: _Optional[str] = ..., alpha: _Optional[float] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "spec", "phase", "from_version", "zones", "verdicts", "created", "updated", "message", "endpoint", "last_look", "attempt", "events", "bake_until", "deadline", "plan", "step", "steps", "awaiting_promotion")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    LAST_LOOK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    BAKE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    AWAITING_PROMOTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: RolloutSpec
    phase: RolloutPhase
    from_version: str
    zones: _containers.RepeatedCompositeFieldContainer[ZoneStatus]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    message: str
    endpoint: str
    last_look: Verdict
    attempt: int
    events: _containers.RepeatedScalarFieldContainer[str]
    bake_until: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    plan: _containers.RepeatedScalarFieldContainer[str]
    step: int
    steps: int
    awaiting_promotion: bool
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[RolloutSpec, _Mapping]] = ..., phase: _Optional[_Union[RolloutPhase, str]] = ..., from_version: _Optional[str] = ..., zones: _Optional[_Iterable[_Union[ZoneStatus, _Mapping]]] = ..., verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., endpoint: _Optional[str] = ..., last_look: _Optional[_Union[Verdict, _Mapping]] = ..., attempt: _Optional[int] = ..., events: _Optional[_Iterable[str]] = ..., bake_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., plan: _Optional[_Iterable[str]] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., awaiting_promotion: _Optional[bool] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...
