from stoker.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LocalCacheRequest(_message.Message):
    __slots__ = ("lease_id", "lease_secret", "workspace")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECRET_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    lease_secret: str
    workspace: str
    def __init__(self, lease_id: _Optional[str] = ..., lease_secret: _Optional[str] = ..., workspace: _Optional[str] = ...) -> None: ...

class LocalRestoreResponse(_message.Message):
    __slots__ = ("cache", "seconds", "cache_hit", "notes")
    CACHE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    cache: _common_pb2.CacheFigures
    seconds: float
    cache_hit: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cache: _Optional[_Union[_common_pb2.CacheFigures, _Mapping]] = ..., seconds: _Optional[float] = ..., cache_hit: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class LocalSaveResponse(_message.Message):
    __slots__ = ("key", "saved", "bytes_uploaded", "seconds", "message")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SAVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    saved: bool
    bytes_uploaded: int
    seconds: float
    message: str
    def __init__(self, key: _Optional[str] = ..., saved: _Optional[bool] = ..., bytes_uploaded: _Optional[int] = ..., seconds: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...
