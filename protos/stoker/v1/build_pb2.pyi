import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stoker.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUILD_STATE_UNSPECIFIED: _ClassVar[BuildState]
    BUILD_STATE_QUEUED: _ClassVar[BuildState]
    BUILD_STATE_RUNNING: _ClassVar[BuildState]
    BUILD_STATE_SUCCEEDED: _ClassVar[BuildState]
    BUILD_STATE_FAILED: _ClassVar[BuildState]
    BUILD_STATE_CANCELLED: _ClassVar[BuildState]
    BUILD_STATE_TIMED_OUT: _ClassVar[BuildState]
    BUILD_STATE_ERROR: _ClassVar[BuildState]
BUILD_STATE_UNSPECIFIED: BuildState
BUILD_STATE_QUEUED: BuildState
BUILD_STATE_RUNNING: BuildState
BUILD_STATE_SUCCEEDED: BuildState
BUILD_STATE_FAILED: BuildState
BUILD_STATE_CANCELLED: BuildState
BUILD_STATE_TIMED_OUT: BuildState
BUILD_STATE_ERROR: BuildState

class SubmitBuildRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.BuildSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[_common_pb2.BuildSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class WatchBuildRequest(_message.Message):
    __slots__ = ("build_id", "after_seq")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    after_seq: int
    def __init__(self, build_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class GetBuildRequest(_message.Message):
    __slots__ = ("build_id",)
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    def __init__(self, build_id: _Optional[str] = ...) -> None: ...

class ListBuildsRequest(_message.Message):
    __slots__ = ("workspace", "state", "owner", "node", "since", "page_size", "page_token")
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workspace: str
    state: BuildState
    owner: str
    node: str
    since: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, workspace: _Optional[str] = ..., state: _Optional[_Union[BuildState, str]] = ..., owner: _Optional[str] = ..., node: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBuildsResponse(_message.Message):
    __slots__ = ("builds", "next_page_token")
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    builds: _containers.RepeatedCompositeFieldContainer[Build]
    next_page_token: str
    def __init__(self, builds: _Optional[_Iterable[_Union[Build, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelBuildRequest(_message.Message):
    __slots__ = ("build_id", "reason")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    reason: str
    def __init__(self, build_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Build(_message.Message):
    __slots__ = ("id", "spec", "state", "node", "attempt", "created", "finished", "exit_code", "message", "timings", "cache", "placement_reason", "last_seq", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: _common_pb2.BuildSpec
    state: BuildState
    node: str
    attempt: int
    created: _timestamp_pb2.Timestamp
    finished: _timestamp_pb2.Timestamp
    exit_code: int
    message: str
    timings: _common_pb2.Timings
    cache: _common_pb2.CacheFigures
    placement_reason: str
    last_seq: int
    owner: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.BuildSpec, _Mapping]] = ..., state: _Optional[_Union[BuildState, str]] = ..., node: _Optional[str] = ..., attempt: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., cache: _Optional[_Union[_common_pb2.CacheFigures, _Mapping]] = ..., placement_reason: _Optional[str] = ..., last_seq: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("position", "reason")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    position: int
    reason: str
    def __init__(self, position: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Placed(_message.Message):
    __slots__ = ("node", "zone", "reason", "expected_warmth")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_WARMTH_FIELD_NUMBER: _ClassVar[int]
    node: str
    zone: str
    reason: str
    expected_warmth: _common_pb2.Warmth
    def __init__(self, node: _Optional[str] = ..., zone: _Optional[str] = ..., reason: _Optional[str] = ..., expected_warmth: _Optional[_Union[_common_pb2.Warmth, str]] = ...) -> None: ...

class CacheProgress(_message.Message):
    __slots__ = ("bytes_done", "bytes_total", "files_done", "files_total", "bytes_per_s")
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    bytes_per_s: float
    def __init__(self, bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., files_done: _Optional[int] = ..., files_total: _Optional[int] = ..., bytes_per_s: _Optional[float] = ...) -> None: ...

class Restoring(_message.Message):
    __slots__ = ("key", "progress")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    key: str
    progress: CacheProgress
    def __init__(self, key: _Optional[str] = ..., progress: _Optional[_Union[CacheProgress, _Mapping]] = ...) -> None: ...

class Restored(_message.Message):
    __slots__ = ("cache", "seconds")
    CACHE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    cache: _common_pb2.CacheFigures
    seconds: float
    def __init__(self, cache: _Optional[_Union[_common_pb2.CacheFigures, _Mapping]] = ..., seconds: _Optional[float] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("stream", "text")
    class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STREAM_UNSPECIFIED: _ClassVar[LogLine.Stream]
        STREAM_STDOUT: _ClassVar[LogLine.Stream]
        STREAM_STDERR: _ClassVar[LogLine.Stream]
        STREAM_STOKER: _ClassVar[LogLine.Stream]
    STREAM_UNSPECIFIED: LogLine.Stream
    STREAM_STDOUT: LogLine.Stream
    STREAM_STDERR: LogLine.Stream
    STREAM_STOKER: LogLine.Stream
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stream: LogLine.Stream
    text: str
    def __init__(self, stream: _Optional[_Union[LogLine.Stream, str]] = ..., text: _Optional[str] = ...) -> None: ...

class Saving(_message.Message):
    __slots__ = ("key", "progress")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    key: str
    progress: CacheProgress
    def __init__(self, key: _Optional[str] = ..., progress: _Optional[_Union[CacheProgress, _Mapping]] = ...) -> None: ...

class Retrying(_message.Message):
    __slots__ = ("reason", "next_attempt")
    REASON_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    next_attempt: int
    def __init__(self, reason: _Optional[str] = ..., next_attempt: _Optional[int] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("state", "exit_code", "message", "timings", "cache", "node")
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    state: BuildState
    exit_code: int
    message: str
    timings: _common_pb2.Timings
    cache: _common_pb2.CacheFigures
    node: str
    def __init__(self, state: _Optional[_Union[BuildState, str]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., cache: _Optional[_Union[_common_pb2.CacheFigures, _Mapping]] = ..., node: _Optional[str] = ...) -> None: ...

class BuildEvent(_message.Message):
    __slots__ = ("build_id", "seq", "time", "attempt", "agent_seq", "queued", "placed", "restoring", "restored", "started", "log", "saving", "retrying", "finished")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PLACED_FIELD_NUMBER: _ClassVar[int]
    RESTORING_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    SAVING_FIELD_NUMBER: _ClassVar[int]
    RETRYING_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    attempt: int
    agent_seq: int
    queued: Queued
    placed: Placed
    restoring: Restoring
    restored: Restored
    started: Started
    log: LogLine
    saving: Saving
    retrying: Retrying
    finished: Finished
    def __init__(self, build_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., agent_seq: _Optional[int] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., placed: _Optional[_Union[Placed, _Mapping]] = ..., restoring: _Optional[_Union[Restoring, _Mapping]] = ..., restored: _Optional[_Union[Restored, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., log: _Optional[_Union[LogLine, _Mapping]] = ..., saving: _Optional[_Union[Saving, _Mapping]] = ..., retrying: _Optional[_Union[Retrying, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ...) -> None: ...

class PlaceBuildRequest(_message.Message):
    __slots__ = ("spec", "lease_s")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.BuildSpec
    lease_s: float
    def __init__(self, spec: _Optional[_Union[_common_pb2.BuildSpec, _Mapping]] = ..., lease_s: _Optional[float] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("lease_id", "node", "zone", "reason", "expected_warmth", "expires", "node_labels", "lease_secret")
    class NodeLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_WARMTH_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    NODE_LABELS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECRET_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    node: str
    zone: str
    reason: str
    expected_warmth: _common_pb2.Warmth
    expires: _timestamp_pb2.Timestamp
    node_labels: _containers.ScalarMap[str, str]
    lease_secret: str
    def __init__(self, lease_id: _Optional[str] = ..., node: _Optional[str] = ..., zone: _Optional[str] = ..., reason: _Optional[str] = ..., expected_warmth: _Optional[_Union[_common_pb2.Warmth, str]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node_labels: _Optional[_Mapping[str, str]] = ..., lease_secret: _Optional[str] = ...) -> None: ...

class ReleasePlacementRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class ReleasePlacementResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...
