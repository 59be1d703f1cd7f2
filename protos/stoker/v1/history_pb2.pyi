import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stoker.v1 import build_pb2 as _build_pb2
from stoker.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportHistoryRequest(_message.Message):
    __slots__ = ("since_s", "workspace")
    SINCE_S_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    since_s: float
    workspace: str
    def __init__(self, since_s: _Optional[float] = ..., workspace: _Optional[str] = ...) -> None: ...

class HistoryBuild(_message.Message):
    __slots__ = ("id", "workspace", "tenant", "priority", "image", "key", "restore_keys", "created", "state", "node", "attempt", "timings", "cache", "placed_after_s", "started_after_s", "first_line_after_s", "zone", "placement_only")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RESTORE_KEYS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    PLACED_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    STARTED_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_LINE_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_ONLY_FIELD_NUMBER: _ClassVar[int]
    id: str
    workspace: str
    tenant: str
    priority: int
    image: str
    key: str
    restore_keys: _containers.RepeatedScalarFieldContainer[str]
    created: _timestamp_pb2.Timestamp
    state: _build_pb2.BuildState
    node: str
    attempt: int
    timings: _common_pb2.Timings
    cache: _common_pb2.CacheFigures
    placed_after_s: float
    started_after_s: float
    first_line_after_s: float
    zone: str
    placement_only: bool
    def __init__(self, id: _Optional[str] = ..., workspace: _Optional[str] = ..., tenant: _Optional[str] = ..., priority: _Optional[int] = ..., image: _Optional[str] = ..., key: _Optional[str] = ..., restore_keys: _Optional[_Iterable[str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[_build_pb2.BuildState, str]] = ..., node: _Optional[str] = ..., attempt: _Optional[int] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., cache: _Optional[_Union[_common_pb2.CacheFigures, _Mapping]] = ..., placed_after_s: _Optional[float] = ..., started_after_s: _Optional[float] = ..., first_line_after_s: _Optional[float] = ..., zone: _Optional[str] = ..., placement_only: _Optional[bool] = ...) -> None: ...

class HistoryNodeEvent(_message.Message):
    __slots__ = ("time", "node", "event", "zone", "slots", "disk_bytes")
    TIME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    node: str
    event: str
    zone: str
    slots: int
    disk_bytes: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node: _Optional[str] = ..., event: _Optional[str] = ..., zone: _Optional[str] = ..., slots: _Optional[int] = ..., disk_bytes: _Optional[int] = ...) -> None: ...

class ExportHistoryResponse(_message.Message):
    __slots__ = ("builds", "node_events", "now", "scheduler")
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    NODE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    builds: _containers.RepeatedCompositeFieldContainer[HistoryBuild]
    node_events: _containers.RepeatedCompositeFieldContainer[HistoryNodeEvent]
    now: _timestamp_pb2.Timestamp
    scheduler: SchedulerRates
    def __init__(self, builds: _Optional[_Iterable[_Union[HistoryBuild, _Mapping]]] = ..., node_events: _Optional[_Iterable[_Union[HistoryNodeEvent, _Mapping]]] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scheduler: _Optional[_Union[SchedulerRates, _Mapping]] = ...) -> None: ...

class SchedulerRates(_message.Message):
    __slots__ = ("fetch_bps", "extract_bps", "materialize_bps", "pull_bps")
    FETCH_BPS_FIELD_NUMBER: _ClassVar[int]
    EXTRACT_BPS_FIELD_NUMBER: _ClassVar[int]
    MATERIALIZE_BPS_FIELD_NUMBER: _ClassVar[int]
    PULL_BPS_FIELD_NUMBER: _ClassVar[int]
    fetch_bps: float
    extract_bps: float
    materialize_bps: float
    pull_bps: float
    def __init__(self, fetch_bps: _Optional[float] = ..., extract_bps: _Optional[float] = ..., materialize_bps: _Optional[float] = ..., pull_bps: _Optional[float] = ...) -> None: ...
