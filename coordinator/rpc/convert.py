"""Protobuf ⇄ domain conversions, in one place."""

from __future__ import annotations

import itertools
import operator
import sys
from collections.abc import Iterable

from google.protobuf import timestamp_pb2

from stoker.common import scopes, sketch
from stoker.coordinator.placement.domain import (
    BYTES,
    CREATED,
    FILES,
    KEY,
    LAST_USED,
    SKETCH,
    Constraints,
    Entry,
    ImageRecord,
    NodeInfo,
    NodeState,
    PlacementRequest,
    Resources,
    Warmth,
    needs_sandbox,
)
from stoker.coordinator.placement.registry import NodeRecord
from stoker.v1 import agent_pb2, common_pb2, inventory_pb2

WARMTH_TO_PB = {
    Warmth.WARM: common_pb2.WARMTH_WARM,
    Warmth.PARTIAL: common_pb2.WARMTH_PARTIAL,
    Warmth.COLD: common_pb2.WARMTH_COLD,
}
WARMTH_FROM_PB = {v: k for k, v in WARMTH_TO_PB.items()}

NODE_STATE_TO_PB = {
    NodeState.READY: inventory_pb2.NODE_STATE_READY,
    NodeState.DISCONNECTED: inventory_pb2.NODE_STATE_DISCONNECTED,
    NodeState.LOST: inventory_pb2.NODE_STATE_LOST,
}


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def node_info(req: agent_pb2.RegisterRequest) -> NodeInfo:
    return NodeInfo(
        name=req.node,
        zone=req.zone,
        slots=req.slots,
        disk_capacity_bytes=req.disk_capacity_bytes,
        labels=dict(req.labels),
        agent_version=req.agent_version,
        instance_type=req.instance_type,
        cpus=req.cpus,
        memory_bytes=req.memory_bytes,
        taints=tuple(req.taints),
        executor=req.executor,
        oci_runtime=req.oci_runtime,
        maxima=resources(req.maxima),
    )


def resources(pb: common_pb2.BuildLimits) -> Resources:
    return Resources(
        cpus=pb.cpus,
        memory_bytes=pb.memory_bytes,
        pids=pb.pids,
        output_bytes=pb.output_bytes,
        disk_bytes=pb.disk_bytes,
    )


def limits_pb(r: Resources) -> common_pb2.BuildLimits:
    return common_pb2.BuildLimits(
        cpus=r.cpus,
        memory_bytes=r.memory_bytes,
        pids=r.pids,
        output_bytes=r.output_bytes,
        disk_bytes=r.disk_bytes,
    )


def entry(pb: common_pb2.CacheEntry) -> Entry:
    # On the hot path of snapshots (a million entries after a coordinator restart): kept lean.
    # An exact tuple, not an EntryRecord, so the garbage collector stops tracking it (see EntryRecord).
    # The key is interned: every node that holds a key, and every later delta that touches it, then shares
    # one string with the index's maps. Without it each report of a key kept a string of its own, and the
    # index's dicts went on holding the first one as well: memory grew with every entry a delta touched.
    # A malformed sketch (not whole 8-byte values, or too many) is dropped: the entry counts as unsketched.
    created, used, packed = pb.created, pb.last_used, pb.sketch
    return (
        sys.intern(pb.key),
        pb.bytes,
        pb.files,
        created.seconds + created.nanos * 1e-9,
        used.seconds + used.nanos * 1e-9,
        packed if sketch.valid(packed) else b"",
    )


def entry_to_pb(e: Entry) -> common_pb2.CacheEntry:
    return common_pb2.CacheEntry(
        key=e[KEY],
        bytes=e[BYTES],
        files=e[FILES],
        created=timestamp(e[CREATED]),
        last_used=timestamp(e[LAST_USED]),
        sketch=e[SKETCH],
    )


MAX_IMAGES = 256
"""At most this many images of one node's report are kept (a node's word is bounded like any caller's)."""
MAX_IMAGE_REFERENCES = 16
MAX_REFERENCE_CHARS = 512


def images(pbs: Iterable[common_pb2.ImageEntry]) -> tuple[ImageRecord, ...]:
    """A node's image report, bounded: at most ``MAX_IMAGES`` images of ``MAX_IMAGE_REFERENCES`` names each;
    names and digests longer than ``MAX_REFERENCE_CHARS`` and negative sizes are dropped."""
    records = []
    for pb in itertools.islice(pbs, MAX_IMAGES):
        refs = tuple(r for r in pb.references[:MAX_IMAGE_REFERENCES] if 0 < len(r) <= MAX_REFERENCE_CHARS)
        digest = pb.digest if len(pb.digest) <= MAX_REFERENCE_CHARS else ""
        if (digest or refs) and pb.bytes >= 0:
            records.append(ImageRecord(digest, refs, pb.bytes, seconds(pb.last_used)))
    return tuple(records)


def image_to_pb(r: ImageRecord) -> common_pb2.ImageEntry:
    pb = common_pb2.ImageEntry(digest=r.digest, references=r.references, bytes=r.bytes)
    if r.last_used:
        pb.last_used.CopyFrom(timestamp(r.last_used))
    return pb


def placement_request(
    request_id: str, spec: common_pb2.BuildSpec, enqueued_at: float, process_nodes: str = "when_asked"
) -> PlacementRequest:
    """The scheduler's view of a build; ``process_nodes`` is the setting builds.process_nodes."""
    limits = resources(spec.limits)
    keys = scopes.physical(
        spec.cache.key,
        spec.cache.restore_keys,
        spec.cache.scope,
        spec.cache.read_scopes,
        [(s.scope, s.prefix) for s in spec.cache.shared],
    )
    sandbox = needs_sandbox(
        image=spec.image,
        limits=limits,
        network_none=spec.limits.network == "none",
        allowed=spec.allow_unsandboxed,
        policy=process_nodes,
    )
    return PlacementRequest(
        id=request_id,
        workspace=spec.workspace,
        # The keys as nodes store them (in the build's cache scope). The key is interned: the scheduler keeps
        # it in per-key maps, one string with the inventory's. A holder of the build's key in a scope it may
        # only read is a warm candidate too (also_exact).
        key=sys.intern(keys.key),
        also_exact=keys.exact[1:],
        restore_keys=keys.prefixes,
        constraints=Constraints(
            zone=spec.constraints.zone, labels=dict(spec.constraints.labels), sandbox=sandbox, limits=limits
        ),
        tenant=spec.tenant or spec.workspace,
        priority=spec.priority,
        enqueued_at=enqueued_at,
        image=spec.image,
    )


def node_inventory(
    record: NodeRecord, entries: list[Entry], *, with_entries: bool, uncorroborated: int = 0
) -> inventory_pb2.NodeInventory:
    pb = inventory_pb2.NodeInventory(
        node=record.name,
        zone=record.info.zone,
        state=NODE_STATE_TO_PB[record.state],
        slots=record.info.slots,
        running=len(record.holders),
        disk_capacity_bytes=record.info.disk_capacity_bytes,
        disk_used_bytes=record.disk_used_bytes,
        disk_free_bytes=record.disk_free_bytes,
        evicted_bytes_total=record.evicted_bytes_total,
        generation=max(record.generation, 0),
        last_seen=timestamp(record.last_seen),
        labels=record.info.labels,
        entry_count=len(entries),
        entry_bytes=sum(e[BYTES] for e in entries),
        executor=record.info.executor,
        oci_runtime=record.info.oci_runtime,
        maxima=limits_pb(record.info.maxima),
        image_count=len(record.image_records),
        image_bytes=sum(r.bytes for r in record.image_records),
        uncorroborated_entries=uncorroborated,
        registered_slots=record.registered_slots or record.info.slots,
    )
    if with_entries:
        pb.entries.extend(entry_to_pb(e) for e in sorted(entries, key=operator.itemgetter(KEY)))
        pb.images.extend(image_to_pb(r) for r in record.image_records)
    return pb
