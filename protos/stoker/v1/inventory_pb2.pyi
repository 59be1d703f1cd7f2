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

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_DISCONNECTED: _ClassVar[NodeState]
    NODE_STATE_LOST: _ClassVar[NodeState]
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_DISCONNECTED: NodeState
NODE_STATE_LOST: NodeState

class ForgetNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class ForgetNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class PrewarmRequest(_message.Message):
    __slots__ = ("key", "restore_keys", "replicas", "zone")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RESTORE_KEYS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    key: str
    restore_keys: _containers.RepeatedScalarFieldContainer[str]
    replicas: int
    zone: str
    def __init__(self, key: _Optional[str] = ..., restore_keys: _Optional[_Iterable[str]] = ..., replicas: _Optional[int] = ..., zone: _Optional[str] = ...) -> None: ...

class PrewarmResponse(_message.Message):
    __slots__ = ("holding", "asked")
    HOLDING_FIELD_NUMBER: _ClassVar[int]
    ASKED_FIELD_NUMBER: _ClassVar[int]
    holding: _containers.RepeatedScalarFieldContainer[str]
    asked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, holding: _Optional[_Iterable[str]] = ..., asked: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryInventoryRequest(_message.Message):
    __slots__ = ("key_prefix", "zone", "node", "summary_only")
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_ONLY_FIELD_NUMBER: _ClassVar[int]
    key_prefix: str
    zone: str
    node: str
    summary_only: bool
    def __init__(self, key_prefix: _Optional[str] = ..., zone: _Optional[str] = ..., node: _Optional[str] = ..., summary_only: _Optional[bool] = ...) -> None: ...

class NodeInventory(_message.Message):
    __slots__ = ("node", "zone", "state", "slots", "running", "disk_capacity_bytes", "disk_used_bytes", "disk_free_bytes", "evicted_bytes_total", "generation", "last_seen", "labels", "entries", "entry_count", "entry_bytes", "images", "image_count", "image_bytes", "executor", "oci_runtime", "maxima", "uncorroborated_entries", "registered_slots")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DISK_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTED_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    OCI_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    MAXIMA_FIELD_NUMBER: _ClassVar[int]
    UNCORROBORATED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    node: str
    zone: str
    state: NodeState
    slots: int
    running: int
    disk_capacity_bytes: int
    disk_used_bytes: int
    disk_free_bytes: int
    evicted_bytes_total: int
    generation: int
    last_seen: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    entries: _containers.RepeatedCompositeFieldContainer[_common_pb2.CacheEntry]
    entry_count: int
    entry_bytes: int
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.ImageEntry]
    image_count: int
    image_bytes: int
    executor: str
    oci_runtime: str
    maxima: _common_pb2.BuildLimits
    uncorroborated_entries: int
    registered_slots: int
    def __init__(self, node: _Optional[str] = ..., zone: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., slots: _Optional[int] = ..., running: _Optional[int] = ..., disk_capacity_bytes: _Optional[int] = ..., disk_used_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., evicted_bytes_total: _Optional[int] = ..., generation: _Optional[int] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., entries: _Optional[_Iterable[_Union[_common_pb2.CacheEntry, _Mapping]]] = ..., entry_count: _Optional[int] = ..., entry_bytes: _Optional[int] = ..., images: _Optional[_Iterable[_Union[_common_pb2.ImageEntry, _Mapping]]] = ..., image_count: _Optional[int] = ..., image_bytes: _Optional[int] = ..., executor: _Optional[str] = ..., oci_runtime: _Optional[str] = ..., maxima: _Optional[_Union[_common_pb2.BuildLimits, _Mapping]] = ..., uncorroborated_entries: _Optional[int] = ..., registered_slots: _Optional[int] = ...) -> None: ...

class KeySummary(_message.Message):
    __slots__ = ("key", "replicas", "nodes", "bytes", "last_used")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    key: str
    replicas: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    bytes: int
    last_used: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., replicas: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., bytes: _Optional[int] = ..., last_used: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ZoneSummary(_message.Message):
    __slots__ = ("zone", "nodes", "slots", "running", "disk_capacity_bytes", "disk_used_bytes")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DISK_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    zone: str
    nodes: int
    slots: int
    running: int
    disk_capacity_bytes: int
    disk_used_bytes: int
    def __init__(self, zone: _Optional[str] = ..., nodes: _Optional[int] = ..., slots: _Optional[int] = ..., running: _Optional[int] = ..., disk_capacity_bytes: _Optional[int] = ..., disk_used_bytes: _Optional[int] = ...) -> None: ...

class HitRates(_message.Message):
    __slots__ = ("warm_builds", "partial_builds", "cold_builds", "bytes_local", "bytes_fetched", "warm_bytes", "partial_bytes", "cold_bytes")
    WARM_BUILDS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_BUILDS_FIELD_NUMBER: _ClassVar[int]
    COLD_BUILDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_LOCAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_FETCHED_FIELD_NUMBER: _ClassVar[int]
    WARM_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLD_BYTES_FIELD_NUMBER: _ClassVar[int]
    warm_builds: int
    partial_builds: int
    cold_builds: int
    bytes_local: int
    bytes_fetched: int
    warm_bytes: int
    partial_bytes: int
    cold_bytes: int
    def __init__(self, warm_builds: _Optional[int] = ..., partial_builds: _Optional[int] = ..., cold_builds: _Optional[int] = ..., bytes_local: _Optional[int] = ..., bytes_fetched: _Optional[int] = ..., warm_bytes: _Optional[int] = ..., partial_bytes: _Optional[int] = ..., cold_bytes: _Optional[int] = ...) -> None: ...

class QueryInventoryResponse(_message.Message):
    __slots__ = ("nodes", "keys", "zones", "hit_rates")
    NODES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    HIT_RATES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInventory]
    keys: _containers.RepeatedCompositeFieldContainer[KeySummary]
    zones: _containers.RepeatedCompositeFieldContainer[ZoneSummary]
    hit_rates: HitRates
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInventory, _Mapping]]] = ..., keys: _Optional[_Iterable[_Union[KeySummary, _Mapping]]] = ..., zones: _Optional[_Iterable[_Union[ZoneSummary, _Mapping]]] = ..., hit_rates: _Optional[_Union[HitRates, _Mapping]] = ...) -> None: ...
