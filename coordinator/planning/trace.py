"""Build traces and fleet specs for the scheduling simulator: the formats and their checks.

Trace: JSON lines, one record per line, in time order. A build arrival::

    {"t": 12.5, "workspace": "ws-3", "key": "ws-3/deps-v2", "restore_keys": ["ws-3/deps-"],
     "bytes": 420000000, "files": 20000, "changed_fraction": 0.04, "duration_s": 180,
     "tenant": "team-1", "priority": 0, "image": "registry.example/ci/node:20", "image_bytes": 380000000}

``t`` is seconds from the start; ``key`` the exact cache key; ``restore_keys`` the prefixes tried when the
exact key is missing; ``bytes``/``files`` the size of the entry; ``changed_fraction`` the share of its
bytes that differ from the previous key of the same workspace (0 for the first); ``duration_s`` how long
the build runs once its cache is in place. ``image`` and ``image_bytes`` are optional: the OCI image the
build runs in and its size; a node that does not hold it pulls it first (at the fleet's ``pull_bps``) and
keeps it, least recently used out first beyond ``image_budget_bytes``. ``priority`` is optional (0).
``observed`` is optional: in a trace exported from a fleet's history (``stoker history export``), what the
fleet really did with the build (``{"warmth": "partial", "bytes_fetched": 5200000, "node": "node-001",
"ready_s": 2.4}``); the simulator ignores it. Any other field is an error. Fleet events share the file::

    {"t": 3600, "event": "node_fail", "node": "node-7"}
    {"t": 7200, "event": "node_add", "zone": "zone-b", "count": 2}
    {"t": 9000, "event": "node_add", "zone": "zone-a", "node": "build-17"}

A ``node_add`` of one node may name it (a trace exported from a fleet's history names the nodes that joined,
and its ``node_fail`` events name them too); unnamed nodes are ``node-NNN``.

A real CI history converts to this format with one record per job (the key from its lockfile hash);
``stoker history export`` writes the coordinator's own history in it (``planning/history.py``).

Fleet spec: one JSON object (``node_names``/``node_zones``, optional, name the first nodes and their zones)::

    {"nodes": 40, "zones": ["zone-a", "zone-b", "zone-c"], "slots": 4, "disk_bytes": 20e9,
     "fetch_bps": 100e6, "extract_bps": 250e6, "materialize_bps": 2e9, "install_bps": 20e6,
     "pull_bps": 50e6, "image_budget_bytes": 20e9,
     "prices": {"node_hour": 0.5, "get_request": 4e-7, "put_request": 5e-6, "gb_transfer": 0.0}}

``install_bps`` is how fast a build fills in what its cache lacked (downloading from a package registry).
"""

from __future__ import annotations

import json
import math
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
    observed: dict | None = field(default=None, compare=False, repr=False)
    """What the fleet really did with the build, in a trace exported from its history (``warmth``,
    ``bytes_fetched``, ``node``, ``ready_s``); the simulator ignores it, comparisons read it."""


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
    node_names: tuple[str, ...] = ()
    """Names (and below, zones) of the first nodes, as the fleet's history knows them (``stoker history
    fleet``): a replay of the fleet as it was then breaks ties between nodes as the coordinator did. Nodes
    past them are ``node-NNN`` in the zones in turn."""
    node_zones: tuple[str, ...] = ()
    keep_duplicate_saves: bool = True
    """Whether a node whose build saved a key that another node's build saved first keeps the entry. stoker's
    agent does not: the key's content is in the blob store already, in packs the other node uploaded, which
    this node lacks ("saved to the blob store but not kept locally: frames missing"), so exported fleet specs
    say false. True is the simulator's model before that was measured (bench/simulate.py's figures)."""
    scheduler_rates: dict = field(default_factory=dict)
    """The rates the simulated coordinator's scheduler starts its estimates from (``fetch_bps``,
    ``extract_bps``, ``materialize_bps``, ``pull_bps``; as a real coordinator's were, in a fleet spec
    exported from it); a rate not given: the fleet's own."""
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
_SCHEDULER_RATES = ("fetch_bps", "extract_bps", "materialize_bps", "pull_bps")
_OPTIONAL_BUILD_FIELDS = {"priority", "image", "image_bytes", "observed"}


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
    unknown = sorted(set(doc) - set(_BUILD_FIELDS) - _OPTIONAL_BUILD_FIELDS)
    if unknown:
        raise TraceError(
            f"{where}: field {unknown[0]!r}: unknown (a build record has {', '.join(_BUILD_FIELDS)}, "
            f"and optionally {', '.join(sorted(_OPTIONAL_BUILD_FIELDS))})"
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
    priority = doc.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TraceError(f"{where}: field 'priority': expected an integer, got {priority!r}")
    if not all(isinstance(k, str) for k in doc["restore_keys"]):
        raise TraceError(f"{where}: field 'restore_keys': expected a list of strings")
    observed = doc.get("observed")
    if observed is not None and not isinstance(observed, dict):
        raise TraceError(f"{where}: field 'observed': expected an object")
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
        priority=priority,
        image=image,
        image_bytes=image_bytes,
        observed=observed,
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
    for name in ("node_names", "node_zones"):
        if name in kwargs:
            if not isinstance(kwargs[name], list) or not all(isinstance(v, str) and v for v in kwargs[name]):
                raise TraceError(f"{where}: field {name!r}: a list of non-empty names")
            kwargs[name] = tuple(kwargs[name])
    rates = kwargs.get("scheduler_rates", {})
    if not isinstance(rates, dict):
        raise TraceError(f"{where}: field 'scheduler_rates': an object of rates")
    for name in rates:
        if name not in _SCHEDULER_RATES:
            raise TraceError(
                f"{where}: field 'scheduler_rates.{name}': unknown (known: {', '.join(_SCHEDULER_RATES)})"
            )
        if _number(rates, name, f"{where}: scheduler_rates") == 0:
            raise TraceError(f"{where}: field 'scheduler_rates.{name}': must be positive")
    if len(kwargs.get("node_zones", ())) > len(kwargs.get("node_names", ())):
        raise TraceError(f"{where}: field 'node_zones': more zones than node_names")
    for name in ("nodes", "slots"):
        if name in kwargs:
            kwargs[name] = int(kwargs[name])
    if not isinstance(kwargs.get("keep_duplicate_saves", True), bool):
        raise TraceError(f"{where}: field 'keep_duplicate_saves': true or false")
    return Fleet(**kwargs)


def record_doc(r: Build | FleetEvent) -> dict:
    """One record as its trace line's JSON object."""
    doc = dict(r.__dict__)
    if isinstance(r, Build):
        doc["restore_keys"] = list(r.restore_keys)
        if not r.image:  # optional: traces without images stay as they were
            del doc["image"], doc["image_bytes"]
        if r.observed is None:
            del doc["observed"]
    else:
        doc = {k: v for k, v in doc.items() if v not in ("", None)}
    return doc


def write_trace(records, path: Path) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(record_doc(r)) + "\n")
