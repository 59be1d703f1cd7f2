"""Content sketches as bytes on the wire (stoker/common/sketch.py), and what the coordinator does with them."""

from __future__ import annotations

import random

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from stoker.common import sketch
from stoker.coordinator.placement.domain import SKETCH
from stoker.coordinator.rpc import convert
from stoker.v1 import common_pb2


def _old_cache_entry():
    """``CacheEntry`` as it was declared before, with ``repeated fixed64 sketch = 6`` (built from a
    descriptor here, so that the test does not depend on an old copy of the generated code)."""
    file = descriptor_pb2.FileDescriptorProto(name="old_cache_entry.proto", package="old", syntax="proto3")
    message = file.message_type.add(name="CacheEntry")
    message.field.add(
        name="key",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    message.field.add(
        name="sketch",
        number=6,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("old.CacheEntry"))


def test_pack_is_eight_little_endian_bytes_per_value_and_unpacks_to_the_values():
    values = sorted(random.Random(3).getrandbits(64) for _ in range(64))
    packed = sketch.pack(values)
    assert len(packed) == 8 * 64 and sketch.valid(packed)
    assert packed[:8] == values[0].to_bytes(8, "little")
    assert list(sketch.unpack(packed)) == values
    assert sketch.pack([]) == b"" and list(sketch.unpack(b"")) == []


def test_the_bytes_field_reads_and_writes_what_the_repeated_fixed64_field_did():
    old = _old_cache_entry()
    values = sorted(random.Random(4).getrandbits(64) for _ in range(64))
    from_old_agent = common_pb2.CacheEntry.FromString(old(key="k", sketch=values).SerializeToString())
    assert from_old_agent.key == "k" and from_old_agent.sketch == sketch.pack(values)
    to_old_reader = old.FromString(
        common_pb2.CacheEntry(key="k", sketch=sketch.pack(values)).SerializeToString()
    )
    assert list(to_old_reader.sketch) == values


def test_the_coordinator_drops_a_malformed_sketch_and_keeps_the_entry():
    for bad in (b"\x01" * 7, sketch.pack(range(65))):
        entry = convert.entry(common_pb2.CacheEntry(key="ws/deps-1", bytes=5, sketch=bad))
        assert entry[SKETCH] == b"" and entry[:2] == ("ws/deps-1", 5)
    good = sketch.pack([1, 2, 3])
    assert convert.entry(common_pb2.CacheEntry(key="ws/deps-1", sketch=good))[SKETCH] == good
    assert (
        convert.entry_to_pb(convert.entry(common_pb2.CacheEntry(key="ws/deps-1", sketch=good))).sketch == good
    )
