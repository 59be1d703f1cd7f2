"""The dead-time audit (``stoker report dead-time``): for each build, the time from its submission to the
first line its command printed, split into the phases stoker spends it in.

* **queue wait**: submission until the placement of its last attempt (a slot was free and chosen; earlier
  attempts lost with their node count here too);
* **image pull**: the node getting the build's image ready (``Timings.pull_s``);
* **cache restore**: the restore (``Timings.restore_s``);
* **start**: from the command's start until its first line of output;
* **placement**: the rest: the placement decision reaching the node and the node preparing the workspace
  (input files, the sandbox) around the pull and the restore.

A build whose command printed nothing counts until its command started (its start phase is 0). Builds that
never started are left out, and so are placement-only jobs (their runner's command is not seen).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from stoker.coordinator.planning.history import RunRecord
from stoker.coordinator.planning.planner import pct

PHASES = ("queue", "placement", "pull", "restore", "start")
GROUPINGS = ("workspace", "tenant", "node")


@dataclass(frozen=True)
class DeadTime:
    """One build's dead time by phase, in seconds."""

    build: RunRecord
    queue: float
    placement: float
    pull: float
    restore: float
    start: float

    @property
    def total(self) -> float:
        return self.queue + self.placement + self.pull + self.restore + self.start

    def phase(self, name: str) -> float:
        value: float = getattr(self, name)
        return value


def dead_time(run: RunRecord) -> DeadTime | None:
    if not run.ran or run.started_after_s < 0:
        return None
    end = run.first_line_after_s if run.first_line_after_s >= 0 else run.started_after_s
    queue = max(0.0, run.placed_after_s)
    start = max(0.0, end - run.started_after_s)
    pull, restore = max(0.0, run.pull_s), max(0.0, run.restore_s)
    placement = max(0.0, end - queue - pull - restore - start)
    return DeadTime(run, queue, placement, pull, restore, start)


def _group_key(d: DeadTime, by: str) -> str:
    return {"workspace": d.build.workspace, "tenant": d.build.tenant, "node": d.build.node}[by] or "-"


def _summary(items: list[DeadTime]) -> dict:
    totals = [d.total for d in items]
    cold = sum(1 for d in items if d.build.warmth == "cold")
    return {
        "builds": len(items),
        "dead_p50_s": round(pct(totals, 0.5), 3),
        "dead_p95_s": round(pct(totals, 0.95), 3),
        "dead_max_s": round(max(totals, default=0.0), 3),
        "cold_share": round(cold / len(items), 4) if items else 0.0,
        "phases": {
            name: {
                "mean_s": round(sum(d.phase(name) for d in items) / len(items), 3) if items else 0.0,
                "p50_s": round(pct([d.phase(name) for d in items], 0.5), 3),
                "p95_s": round(pct([d.phase(name) for d in items], 0.95), 3),
            }
            for name in PHASES
        },
    }


def advice(summary: dict) -> str:
    """What would cut the group's dead time most: its largest phase, and the remedy for it."""
    phases = summary["phases"]
    worst = max(PHASES, key=lambda name: phases[name]["mean_s"])
    mean = phases[worst]["mean_s"]
    if mean <= 0:
        return "nothing to cut: no dead time measured"
    if worst == "queue":
        return f"more slots or nodes: builds waited {mean:.1f} s on average for a free slot"
    if worst == "restore":
        if summary["cold_share"] >= 0.3:
            return (
                f"a prewarm of its keys or a bigger disk: {summary['cold_share']:.0%} of its builds started "
                f"cold and restores took {mean:.1f} s on average"
            )
        return f"faster restores (fetch bandwidth, smaller entries): restores took {mean:.1f} s on average"
    if worst == "pull":
        return (
            f"keep its image on more nodes (an image prewarm, a bigger image budget): pulls took {mean:.1f} s"
        )
    if worst == "start":
        return f"the command's own start ({mean:.1f} s until its first line): nothing stoker waits for"
    return f"the node's set-up around the build (dispatch, workspace, sandbox): {mean:.1f} s on average"


def report(runs: list[RunRecord], by: str = "workspace", worst: int = 10) -> dict:
    """Distributions over all builds, and per group (worst first, by p95 dead time) with advice."""
    if by not in GROUPINGS:
        raise ValueError(f"by: {by!r} is not one of {', '.join(GROUPINGS)}")
    items = [d for d in (dead_time(r) for r in runs) if d is not None]
    groups: dict[str, list[DeadTime]] = defaultdict(list)
    for d in items:
        groups[_group_key(d, by)].append(d)
    per_group = []
    for name, members in groups.items():
        summary = _summary(members)
        per_group.append({"name": name, **summary, "advice": advice(summary)})
    per_group.sort(key=lambda g: (-g["dead_p95_s"], g["name"]))
    overall = _summary(items)
    return {
        "by": by,
        "builds": len(items),
        "overall": {**overall, "advice": advice(overall) if items else ""},
        "quantiles": {
            name: [round(pct([d.phase(name) for d in items], q / 100), 3) for q in range(101)]
            for name in (*PHASES, "total")
        }
        if items
        else {},
        "groups": per_group[:worst],
        "groups_total": len(per_group),
    }
