"""The synthetic trace generator behind bench/simulate.py. The trace and fleet formats, and their checks,
are the product's (``stoker.coordinator.planning.trace``), shared with ``stoker plan``."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from stoker.coordinator.planning.trace import (  # noqa: F401  (the formats, re-exported for the harness)
    Build,
    Fleet,
    FleetEvent,
    TraceError,
    load_fleet,
    load_trace,
    parse_fleet,
    parse_record,
    write_trace,
)


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
