from stoker.v1 import build_pb2 as _build_pb2
from stoker.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("node", "zone", "slots", "disk_capacity_bytes", "labels", "agent_version", "instance_type", "cpus", "memory_bytes", "taints", "executor", "oci_runtime", "maxima")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    DISK_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TAINTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    OCI_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    MAXIMA_FIELD_NUMBER: _ClassVar[int]
    node: str
    zone: str
    slots: int
    disk_capacity_bytes: int
    labels: _containers.ScalarMap[str, str]
    agent_version: str
    instance_type: str
    cpus: int
    memory_bytes: int
    taints: _containers.RepeatedScalarFieldContainer[str]
    executor: str
    oci_runtime: str
    maxima: _common_pb2.BuildLimits
    def __init__(self, node: _Optional[str] = ..., zone: _Optional[str] = ..., slots: _Optional[int] = ..., disk_capacity_bytes: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ..., instance_type: _Optional[str] = ..., cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., taints: _Optional[_Iterable[str]] = ..., executor: _Optional[str] = ..., oci_runtime: _Optional[str] = ..., maxima: _Optional[_Union[_common_pb2.BuildLimits, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("session_id", "lease_ttl_s", "heartbeat_interval_s", "acknowledges_build_events")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGES_BUILD_EVENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_ttl_s: float
    heartbeat_interval_s: float
    acknowledges_build_events: bool
    def __init__(self, session_id: _Optional[str] = ..., lease_ttl_s: _Optional[float] = ..., heartbeat_interval_s: _Optional[float] = ..., acknowledges_build_events: _Optional[bool] = ...) -> None: ...

class InventorySnapshot(_message.Message):
    __slots__ = ("generation", "entries")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    generation: int
    entries: _containers.RepeatedCompositeFieldContainer[_common_pb2.CacheEntry]
    def __init__(self, generation: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[_common_pb2.CacheEntry, _Mapping]]] = ...) -> None: ...

class InventoryDelta(_message.Message):
    __slots__ = ("generation", "upserted", "removed")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    upserted: _containers.RepeatedCompositeFieldContainer[_common_pb2.CacheEntry]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, generation: _Optional[int] = ..., upserted: _Optional[_Iterable[_Union[_common_pb2.CacheEntry, _Mapping]]] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class RunningBuild(_message.Message):
    __slots__ = ("build_id", "attempt")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    attempt: int
    def __init__(self, build_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("running", "free_slots", "disk_used_bytes", "disk_free_bytes", "generation", "evicted_bytes_total", "draining", "images")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    EVICTED_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    running: _containers.RepeatedCompositeFieldContainer[RunningBuild]
    free_slots: int
    disk_used_bytes: int
    disk_free_bytes: int
    generation: int
    evicted_bytes_total: int
    draining: bool
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.ImageEntry]
    def __init__(self, running: _Optional[_Iterable[_Union[RunningBuild, _Mapping]]] = ..., free_slots: _Optional[int] = ..., disk_used_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., generation: _Optional[int] = ..., evicted_bytes_total: _Optional[int] = ..., draining: _Optional[bool] = ..., images: _Optional[_Iterable[_Union[_common_pb2.ImageEntry, _Mapping]]] = ...) -> None: ...

class BuildUpdate(_message.Message):
    __slots__ = ("build_id", "attempt", "event", "agent_seq")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    attempt: int
    event: _build_pb2.BuildEvent
    agent_seq: int
    def __init__(self, build_id: _Optional[str] = ..., attempt: _Optional[int] = ..., event: _Optional[_Union[_build_pb2.BuildEvent, _Mapping]] = ..., agent_seq: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("session_id", "snapshot", "delta", "heartbeat", "build_update", "lease_report")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    BUILD_UPDATE_FIELD_NUMBER: _ClassVar[int]
    LEASE_REPORT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    snapshot: InventorySnapshot
    delta: InventoryDelta
    heartbeat: Heartbeat
    build_update: BuildUpdate
    lease_report: LeaseReport
    def __init__(self, session_id: _Optional[str] = ..., snapshot: _Optional[_Union[InventorySnapshot, _Mapping]] = ..., delta: _Optional[_Union[InventoryDelta, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., build_update: _Optional[_Union[BuildUpdate, _Mapping]] = ..., lease_report: _Optional[_Union[LeaseReport, _Mapping]] = ...) -> None: ...

class LeaseReport(_message.Message):
    __slots__ = ("lease_id", "restored", "saved", "cache", "timings")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    SAVED_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    restored: bool
    saved: bool
    cache: _common_pb2.CacheFigures
    timings: _common_pb2.Timings
    def __init__(self, lease_id: _Optional[str] = ..., restored: _Optional[bool] = ..., saved: _Optional[bool] = ..., cache: _Optional[_Union[_common_pb2.CacheFigures, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ...) -> None: ...

class RunBuildCommand(_message.Message):
    __slots__ = ("build_id", "attempt", "spec", "principal")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    attempt: int
    spec: _common_pb2.BuildSpec
    principal: str
    def __init__(self, build_id: _Optional[str] = ..., attempt: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.BuildSpec, _Mapping]] = ..., principal: _Optional[str] = ...) -> None: ...

class CancelBuildCommand(_message.Message):
    __slots__ = ("build_id", "attempt", "reason")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    attempt: int
    reason: str
    def __init__(self, build_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PrewarmCommand(_message.Message):
    __slots__ = ("key", "restore_keys")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RESTORE_KEYS_FIELD_NUMBER: _ClassVar[int]
    key: str
    restore_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., restore_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class EvictCommand(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GrantLeaseCommand(_message.Message):
    __slots__ = ("lease_id", "secret_sha256", "spec", "principal", "expires_in_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    secret_sha256: bytes
    spec: _common_pb2.BuildSpec
    principal: str
    expires_in_s: float
    def __init__(self, lease_id: _Optional[str] = ..., secret_sha256: _Optional[bytes] = ..., spec: _Optional[_Union[_common_pb2.BuildSpec, _Mapping]] = ..., principal: _Optional[str] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class DropLeaseCommand(_message.Message):
    __slots__ = ("lease_id", "reason")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    reason: str
    def __init__(self, lease_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoordinatorCommand(_message.Message):
    __slots__ = ("run_build", "cancel_build", "prewarm", "evict", "snapshot_request", "grant_lease", "drop_lease", "ack_build_events")
    RUN_BUILD_FIELD_NUMBER: _ClassVar[int]
    CANCEL_BUILD_FIELD_NUMBER: _ClassVar[int]
    PREWARM_FIELD_NUMBER: _ClassVar[int]
    EVICT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    GRANT_LEASE_FIELD_NUMBER: _ClassVar[int]
    DROP_LEASE_FIELD_NUMBER: _ClassVar[int]
    ACK_BUILD_EVENTS_FIELD_NUMBER: _ClassVar[int]
    run_build: RunBuildCommand
    cancel_build: CancelBuildCommand
    prewarm: PrewarmCommand
    evict: EvictCommand
    snapshot_request: SnapshotRequest
    grant_lease: GrantLeaseCommand
    drop_lease: DropLeaseCommand
    ack_build_events: AckBuildEvents
    def __init__(self, run_build: _Optional[_Union[RunBuildCommand, _Mapping]] = ..., cancel_build: _Optional[_Union[CancelBuildCommand, _Mapping]] = ..., prewarm: _Optional[_Union[PrewarmCommand, _Mapping]] = ..., evict: _Optional[_Union[EvictCommand, _Mapping]] = ..., snapshot_request: _Optional[_Union[SnapshotRequest, _Mapping]] = ..., grant_lease: _Optional[_Union[GrantLeaseCommand, _Mapping]] = ..., drop_lease: _Optional[_Union[DropLeaseCommand, _Mapping]] = ..., ack_build_events: _Optional[_Union[AckBuildEvents, _Mapping]] = ...) -> None: ...

class AckBuildEvents(_message.Message):
    __slots__ = ("build_id", "attempt", "agent_seq")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    attempt: int
    agent_seq: int
    def __init__(self, build_id: _Optional[str] = ..., attempt: _Optional[int] = ..., agent_seq: _Optional[int] = ...) -> None: ...
