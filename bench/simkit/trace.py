"""Build traces and fleet specs for the scheduling simulator: the formats, their checks, a generator.

Trace: JSON lines, one record per line, in time order. A build arrival::

    {"t": 12.5, "workspace": "ws-3", "key": "ws-3/deps-v2", "restore_keys": ["ws-3/deps-"],
     "bytes": 420000000, "files": 20000, "changed_fraction": 0.04, "duration_s": 180,
     "tenant": "team-1", "priority": 0, "image": "registry.example/ci/node:20", "image_bytes": 380000000}

``t`` is seconds from the start; ``key`` the exact cache key; ``restore_keys`` the prefixes tried when the
exact key is missing; ``bytes``/``files`` the size of the entry; ``changed_fraction`` the share of its
bytes that differ from the previous key of the same workspace (0 for the first); ``duration_s`` how long
the build runs once its cache is in place. ``image`` and ``image_bytes`` are optional: the OCI image the
build runs in and its size; a node that does not hold it pulls it first (at the fleet's ``pull_bps``) and
keeps it, least recently used out first beyond ``image_budget_bytes``. Fleet events share the file::

    {"t": 3600, "event": "node_fail", "node": "node-7"}
    {"t": 7200, "event": "node_add", "zone": "zone-b", "count": 2}

A real CI history converts to this format with one record per job (the key from its lockfile hash).

Fleet spec: one JSON object::

    {"nodes": 40, "zones": ["zone-a", "zone-b", "zone-c"], "slots": 4, "disk_bytes": 20e9,
     "fetch_bps": 100e6, "extract_bps": 250e6, "materialize_bps": 2e9, "install_bps": 20e6,
     "pull_bps": 50e6, "image_budget_bytes": 20e9,
     "prices": {"node_hour": 0.5, "get_request": 4e-7, "put_request": 5e-6, "gb_transfer": 0.0}}

``install_bps`` is how fast a build fills in what its cache lacked (downloading from a package registry).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path


class TraceError(ValueError):
    """A trace or fleet file is malformed; the message names the line and the field."""


@dataclass(frozen=True)
class Build:
    t: float
    workspace: str
    key: str
    restore_keys: tuple[str, ...]
    bytes: int
    files: int
    changed_fraction: float
    duration_s: float
    tenant: str
    priority: int = 0
    image: str = ""
    image_bytes: int = 0


@dataclass(frozen=True)
class FleetEvent:
    t: float
    event: str
    node: str = ""
    zone: str = ""
    count: int = 1


@dataclass(frozen=True)
class Fleet:
    nodes: int = 40
    zones: tuple[str, ...] = ("zone-a", "zone-b", "zone-c")
    slots: int = 4
    disk_bytes: float = 20e9
    fetch_bps: float = 100e6
    extract_bps: float = 250e6
    materialize_bps: float = 2e9
    install_bps: float = 20e6
    pull_bps: float = 50e6
    image_budget_bytes: float = 20e9
    prices: dict = field(
        default_factory=lambda: {
            "node_hour": 0.5,
            "get_request": 4e-7,
            "put_request": 5e-6,
            "gb_transfer": 0.0,
        }
    )


_BUILD_FIELDS = {
    "t": float,
    "workspace": str,
    "key": str,
    "restore_keys": list,
    "bytes": int,
    "files": int,
    "changed_fraction": float,
    "duration_s": float,
    "tenant": str,
}


def load_trace(path: Path) -> list[Build | FleetEvent]:
    records: list[Build | FleetEvent] = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{n}: not JSON: {exc.msg}") from None
            records.append(parse_record(doc, f"{path}:{n}"))
    return records


def parse_record(doc: dict, where: str) -> Build | FleetEvent:
    if not isinstance(doc, dict):
        raise TraceError(f"{where}: a record must be a JSON object")
    if "event" in doc:
        event = doc["event"]
        if event not in ("node_fail", "node_add"):
            raise TraceError(f"{where}: field 'event': unknown event {event!r} (node_fail, node_add)")
        t = _number(doc, "t", where)
        if event == "node_fail" and not doc.get("node"):
            raise TraceError(f"{where}: field 'node': missing (node_fail names the node)")
        count = int(doc.get("count", 1))
        if count < 1:
            raise TraceError(f"{where}: field 'count': must be at least 1")
        return FleetEvent(
            t=t, event=event, node=str(doc.get("node", "")), zone=str(doc.get("zone", "")), count=count
        )
    for name, kind in _BUILD_FIELDS.items():
        if name not in doc:
            raise TraceError(f"{where}: field {name!r}: missing")
        if kind in (int, float):
            _number(doc, name, where)
        elif not isinstance(doc[name], kind):
            raise TraceError(f"{where}: field {name!r}: expected {kind.__name__}")
    if not 0.0 <= doc["changed_fraction"] <= 1.0:
        raise TraceError(f"{where}: field 'changed_fraction': must be within [0, 1]")
    if not doc["key"]:
        raise TraceError(f"{where}: field 'key': must not be empty")
    image = doc.get("image", "")
    if not isinstance(image, str):
        raise TraceError(f"{where}: field 'image': expected str")
    image_bytes = int(_number(doc, "image_bytes", where)) if "image_bytes" in doc else 0
    if image_bytes and not image:
        raise TraceError(f"{where}: field 'image_bytes': given without 'image'")
    return Build(
        t=float(doc["t"]),
        workspace=doc["workspace"],
        key=doc["key"],
        restore_keys=tuple(doc["restore_keys"]),
        bytes=int(doc["bytes"]),
        files=int(doc["files"]),
        changed_fraction=float(doc["changed_fraction"]),
        duration_s=float(doc["duration_s"]),
        tenant=doc["tenant"],
        priority=int(doc.get("priority", 0)),
        image=image,
        image_bytes=image_bytes,
    )


def _number(doc: dict, name: str, where: str) -> float:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TraceError(f"{where}: field {name!r}: expected a number, got {value!r}")
    if value < 0:
        raise TraceError(f"{where}: field {name!r}: must not be negative, got {value}")
    return float(value)


def load_fleet(path: Path) -> Fleet:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path}: cannot read the fleet spec: {exc}") from None
    return parse_fleet(doc, str(path))


def parse_fleet(doc: dict, where: str = "fleet") -> Fleet:
    known = set(Fleet.__dataclass_fields__)
    unknown = sorted(set(doc) - known)
    if unknown:
        raise TraceError(f"{where}: field {unknown[0]!r}: unknown (known: {', '.join(sorted(known))})")
    for name in (
        "nodes",
        "slots",
        "disk_bytes",
        "fetch_bps",
        "extract_bps",
        "materialize_bps",
        "install_bps",
        "pull_bps",
    ):
        if name in doc:
            value = _number(doc, name, where)
            if value == 0:
                raise TraceError(f"{where}: field {name!r}: must be positive")
    kwargs = dict(doc)
    if "zones" in kwargs:
        if not isinstance(kwargs["zones"], list) or not kwargs["zones"]:
            raise TraceError(f"{where}: field 'zones': a non-empty list of zone names")
        kwargs["zones"] = tuple(kwargs["zones"])
    for name in ("nodes", "slots"):
        if name in kwargs:
            kwargs[name] = int(kwargs[name])
    return Fleet(**kwargs)


def write_trace(records, path: Path) -> None:
    with path.open("w") as f:
        for r in records:
            doc = dict(r.__dict__)
            if isinstance(r, Build):
                doc["restore_keys"] = list(r.restore_keys)
                if not r.image:  # optional: traces without images stay as they were
                    del doc["image"], doc["image_bytes"]
            else:
                doc = {k: v for k, v in doc.items() if v not in ("", None)}
            f.write(json.dumps(doc) + "\n")


@dataclass(frozen=True)
class TraceSpec:
    """Knobs of the synthetic trace generator."""

    hours: float = 24.0
    builds_per_day: int = 16000
    workspaces: int = 150
    tenants: int = 8
    zipf_s: float = 1.0
    lockfile_change_p: float = 0.08
    """Chance that a build's workspace moves to a new key (a lockfile change) before it."""
    upgrade_p: float = 0.1
    """Share of lockfile changes that are large upgrades (20–40 % of bytes) rather than small (1–5 %)."""
    bursts_per_hour: float = 2.0
    """Merge-queue bursts: 10–20 builds of one popular workspace within a minute."""
    daily_amplitude: float = 0.6
    """Arrival rate swings by this share around its mean over a day (peak in the afternoon)."""
    node_failures: tuple[float, ...] = (6.0, 14.0)
    """Hours at which a node fails."""
    scale_out: tuple[tuple[float, int], ...] = ((9.0, 4),)
    """(hour, nodes) added."""
    median_bytes: float = 400e6
    median_duration_s: float = 240.0
    images: int = 0
    """Distinct OCI images the workspaces' builds run in (each workspace keeps one, the popular images
    shared by many); 0: builds name no image, and the trace is what it was before images existed."""
    median_image_bytes: float = 600e6
    seed: int = 7


def generate(spec: TraceSpec, fleet: Fleet) -> list[Build | FleetEvent]:
    rng = random.Random(spec.seed)
    weights = [1.0 / (i + 1) ** spec.zipf_s for i in range(spec.workspaces)]
    workspaces = []
    for i in range(spec.workspaces):
        size = int(min(3e9, max(30e6, rng.lognormvariate(math.log(spec.median_bytes), 0.8))))
        workspaces.append(
            {
                "name": f"ws-{i:03d}",
                "tenant": f"team-{i % spec.tenants}",
                "bytes": size,
                "files": max(100, size // 20_000),
                "version": 0,
                "duration": max(20.0, rng.lognormvariate(math.log(spec.median_duration_s), 0.6)),
                "changed": 0.0,
            }
        )
    _assign_images(spec, workspaces)
    horizon = spec.hours * 3600
    mean_rate = spec.builds_per_day / 86400.0
    records: list[Build | FleetEvent] = []

    def arrival(t: float, ws: dict, priority: int = 0) -> Build:
        changed = 0.0
        if ws["version"] == 0 or rng.random() < spec.lockfile_change_p:
            if ws["version"] > 0:
                big = rng.random() < spec.upgrade_p
                changed = rng.uniform(0.2, 0.4) if big else rng.uniform(0.01, 0.05)
                ws["bytes"] = int(ws["bytes"] * rng.uniform(0.98, 1.05))
            ws["version"] += 1
            ws["changed"] = changed
        prefix = f"{ws['name']}/deps-"
        return Build(
            t=round(t, 3),
            workspace=ws["name"],
            key=f"{prefix}v{ws['version']}",
            restore_keys=(prefix,),
            bytes=ws["bytes"],
            files=ws["files"],
            changed_fraction=round(ws["changed"], 4),
            duration_s=round(ws["duration"] * rng.uniform(0.8, 1.25), 1),
            tenant=ws["tenant"],
            priority=priority,
            image=ws.get("image", ""),
            image_bytes=ws.get("image_bytes", 0),
        )

    # Arrival times first (a daily cycle by thinning a Poisson process, plus merge-queue bursts on
    # popular workspaces), then workspaces and key versions in time order.
    slots: list[tuple[float, int | None, int]] = []
    peak = mean_rate * (1 + spec.daily_amplitude)
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= horizon:
            break
        rate = mean_rate * (1 + spec.daily_amplitude * math.sin(2 * math.pi * (t / 86400.0 - 0.375)))
        if rng.random() * peak <= rate:
            slots.append((t, None, 0))
    t = 0.0
    while spec.bursts_per_hour > 0:
        t += rng.expovariate(spec.bursts_per_hour / 3600.0)
        if t >= horizon:
            break
        ws_index = rng.choices(range(10), weights[:10])[0]
        slots.extend((t + rng.uniform(0, 60), ws_index, 1) for _ in range(rng.randint(10, 20)))
    slots.sort()
    for t, ws_index, priority in slots:
        ws = workspaces[ws_index] if ws_index is not None else rng.choices(workspaces, weights)[0]
        records.append(arrival(t, ws, priority))
    for hour in spec.node_failures:
        if hour * 3600 < horizon:
            records.append(
                FleetEvent(t=hour * 3600, event="node_fail", node=f"node-{rng.randrange(fleet.nodes):03d}")
            )
    for hour, count in spec.scale_out:
        if hour * 3600 < horizon:
            records.append(
                FleetEvent(t=hour * 3600, event="node_add", zone=rng.choice(fleet.zones), count=count)
            )
    records.sort(key=lambda r: r.t)
    return records


def _assign_images(spec: TraceSpec, workspaces: list[dict]) -> None:
    """Give each workspace one of ``spec.images`` images (Zipf: a few base images serve most workspaces),
    drawn from a generator of their own so that the rest of the trace is the same with or without them."""
    if spec.images <= 0:
        return
    rng = random.Random(spec.seed + 1)
    sizes = [
        int(min(4e9, max(20e6, rng.lognormvariate(math.log(spec.median_image_bytes), 0.7))))
        for _ in range(spec.images)
    ]
    weights = [1.0 / (i + 1) for i in range(spec.images)]
    for ws in workspaces:
        i = rng.choices(range(spec.images), weights)[0]
        ws["image"], ws["image_bytes"] = f"registry.example/ci/image-{i:02d}:1", sizes[i]
