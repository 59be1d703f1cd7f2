import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Warmth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WARMTH_UNSPECIFIED: _ClassVar[Warmth]
    WARMTH_WARM: _ClassVar[Warmth]
    WARMTH_PARTIAL: _ClassVar[Warmth]
    WARMTH_COLD: _ClassVar[Warmth]
WARMTH_UNSPECIFIED: Warmth
WARMTH_WARM: Warmth
WARMTH_PARTIAL: Warmth
WARMTH_COLD: Warmth

class CacheSpec(_message.Message):
    __slots__ = ("key", "restore_keys", "paths", "scope", "read_scopes", "ref", "shared")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RESTORE_KEYS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    READ_SCOPES_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    key: str
    restore_keys: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    scope: str
    read_scopes: _containers.RepeatedScalarFieldContainer[str]
    ref: str
    shared: _containers.RepeatedCompositeFieldContainer[SharedPrefix]
    def __init__(self, key: _Optional[str] = ..., restore_keys: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ..., scope: _Optional[str] = ..., read_scopes: _Optional[_Iterable[str]] = ..., ref: _Optional[str] = ..., shared: _Optional[_Iterable[_Union[SharedPrefix, _Mapping]]] = ...) -> None: ...

class SharedPrefix(_message.Message):
    __slots__ = ("scope", "prefix")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    scope: str
    prefix: str
    def __init__(self, scope: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class Constraints(_message.Message):
    __slots__ = ("zone", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ZONE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    zone: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, zone: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BuildSpec(_message.Message):
    __slots__ = ("workspace", "cache", "command", "env", "timeout_s", "constraints", "files", "tenant", "priority", "image", "limits", "allow_unsandboxed", "trust")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNSANDBOXED_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    workspace: str
    cache: CacheSpec
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    timeout_s: float
    constraints: Constraints
    files: _containers.ScalarMap[str, bytes]
    tenant: str
    priority: int
    image: str
    limits: BuildLimits
    allow_unsandboxed: bool
    trust: str
    def __init__(self, workspace: _Optional[str] = ..., cache: _Optional[_Union[CacheSpec, _Mapping]] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., timeout_s: _Optional[float] = ..., constraints: _Optional[_Union[Constraints, _Mapping]] = ..., files: _Optional[_Mapping[str, bytes]] = ..., tenant: _Optional[str] = ..., priority: _Optional[int] = ..., image: _Optional[str] = ..., limits: _Optional[_Union[BuildLimits, _Mapping]] = ..., allow_unsandboxed: _Optional[bool] = ..., trust: _Optional[str] = ...) -> None: ...

class BuildLimits(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "pids", "output_bytes", "network", "disk_bytes")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    memory_bytes: int
    pids: int
    output_bytes: int
    network: str
    disk_bytes: int
    def __init__(self, cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., pids: _Optional[int] = ..., output_bytes: _Optional[int] = ..., network: _Optional[str] = ..., disk_bytes: _Optional[int] = ...) -> None: ...

class CacheEntry(_message.Message):
    __slots__ = ("key", "bytes", "files", "last_used", "created", "sketch")
    KEY_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    key: str
    bytes: int
    files: int
    last_used: _timestamp_pb2.Timestamp
    created: _timestamp_pb2.Timestamp
    sketch: bytes
    def __init__(self, key: _Optional[str] = ..., bytes: _Optional[int] = ..., files: _Optional[int] = ..., last_used: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sketch: _Optional[bytes] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queued_s", "restore_s", "run_s", "save_s", "total_s", "pull_s")
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    RESTORE_S_FIELD_NUMBER: _ClassVar[int]
    RUN_S_FIELD_NUMBER: _ClassVar[int]
    SAVE_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    PULL_S_FIELD_NUMBER: _ClassVar[int]
    queued_s: float
    restore_s: float
    run_s: float
    save_s: float
    total_s: float
    pull_s: float
    def __init__(self, queued_s: _Optional[float] = ..., restore_s: _Optional[float] = ..., run_s: _Optional[float] = ..., save_s: _Optional[float] = ..., total_s: _Optional[float] = ..., pull_s: _Optional[float] = ...) -> None: ...

class CacheFigures(_message.Message):
    __slots__ = ("warmth", "restored_key", "bytes_fetched", "bytes_restored", "files_restored", "bytes_uploaded", "saved")
    WARMTH_FIELD_NUMBER: _ClassVar[int]
    RESTORED_KEY_FIELD_NUMBER: _ClassVar[int]
    BYTES_FETCHED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RESTORED_FIELD_NUMBER: _ClassVar[int]
    FILES_RESTORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    SAVED_FIELD_NUMBER: _ClassVar[int]
    warmth: Warmth
    restored_key: str
    bytes_fetched: int
    bytes_restored: int
    files_restored: int
    bytes_uploaded: int
    saved: bool
    def __init__(self, warmth: _Optional[_Union[Warmth, str]] = ..., restored_key: _Optional[str] = ..., bytes_fetched: _Optional[int] = ..., bytes_restored: _Optional[int] = ..., files_restored: _Optional[int] = ..., bytes_uploaded: _Optional[int] = ..., saved: _Optional[bool] = ...) -> None: ...

class ImageEntry(_message.Message):
    __slots__ = ("digest", "references", "bytes", "last_used")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    references: _containers.RepeatedScalarFieldContainer[str]
    bytes: int
    last_used: _timestamp_pb2.Timestamp
    def __init__(self, digest: _Optional[str] = ..., references: _Optional[_Iterable[str]] = ..., bytes: _Optional[int] = ..., last_used: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
