"""What the scheduler estimates: rates learned from what agents report (fetch bandwidth, extraction, build
durations), the time a restore takes, and how much of an entry a node holding an older one must fetch."""

from __future__ import annotations

import collections
import functools

from stoker.common import sketch
from stoker.coordinator.placement.domain import PlacementRequest
from stoker.coordinator.placement.scheduler.recent import trim
from stoker.coordinator.placement.scheduler.settings import SchedulerSettings


class Estimator:
    """Exponentially weighted rates: fetch bandwidth, extraction, build durations (per key, per
    workspace, fleet-wide)."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self._s = settings
        self.fetch_bps = settings.fetch_bps
        self.extract_bps = settings.extract_bps
        self.pull_bps = settings.pull_bps
        self.fleet_build_s = settings.build_s
        self._by_key: collections.OrderedDict[str, float] = collections.OrderedDict()
        """key → learned build seconds, least recently built first (at most ``max_tracked_keys``)."""
        self._by_workspace: collections.OrderedDict[str, float] = collections.OrderedDict()

    def _ewma(self, old: float, new: float) -> float:
        return old + self._s.ewma_alpha * (new - old)

    def observe_restore(self, bytes_fetched: int, bytes_restored: int, seconds: float) -> None:
        if seconds <= 0:
            return
        if bytes_fetched >= 1_000_000:
            self.fetch_bps = self._ewma(self.fetch_bps, bytes_fetched / seconds)
        elif bytes_restored >= 1_000_000:
            self.extract_bps = self._ewma(self.extract_bps, bytes_restored / seconds)

    def observe_pull(self, image_bytes: int, seconds: float) -> None:
        """A node pulled an image of ``image_bytes`` in ``seconds`` (pulls of small images say little)."""
        if seconds > 0 and image_bytes >= 1_000_000:
            self.pull_bps = self._ewma(self.pull_bps, image_bytes / seconds)

    def observe_build(self, key: str, workspace: str, run_s: float) -> None:
        if run_s <= 0:
            return
        self.fleet_build_s = self._ewma(self.fleet_build_s, run_s)
        cap = self._s.max_tracked_keys
        for learned, name in ((self._by_key, key), (self._by_workspace, workspace)):
            if name:
                learned[name] = self._ewma(learned.get(name, run_s), run_s)
                learned.move_to_end(name)
                trim(learned, lambda _: False, cap)

    def tracked(self) -> int:
        """Keys and workspaces whose build times are remembered."""
        return len(self._by_key) + len(self._by_workspace)

    def build_s(self, request: PlacementRequest) -> float:
        if request.key in self._by_key:
            return self._by_key[request.key]
        return self._by_workspace.get(request.workspace, self.fleet_build_s)

    def restore_s(self, fetch_bytes: float, local_bytes: float) -> float:
        """Seconds to fetch and extract ``fetch_bytes`` and materialize ``local_bytes`` held locally."""
        return (
            fetch_bytes / self.fetch_bps
            + fetch_bytes / self.extract_bps
            + local_bytes / self._s.materialize_bps
        )

    def pull_s(self, image_bytes: float) -> float:
        """Seconds to pull and unpack an image of ``image_bytes`` a node does not hold."""
        return image_bytes / self.pull_bps


@functools.lru_cache(maxsize=1024)
def similarity(a: bytes, b: bytes) -> float | None:
    """Estimated share of one entry's content that the other holds too, from bottom-k MinHash sketches
    of their content digests, packed (``stoker.common.sketch``; None when either sketch is missing).

    The sketches estimate the Jaccard index J = |A∩B| / |A∪B|; for entries of about the same size the
    share of A found in B is |A∩B| / |A| = 2J / (1 + J).

    Remembered for the last 1,024 pairs (~30 µs each otherwise): a decision asks about every holder of an
    older entry, and replicas of an entry share one sketch object (``InventoryIndex``), so most of its
    questions are repeats. The cache keeps at most 2,048 sketches alive (~1.1 MB)."""
    if not a or not b:
        return None
    values_a, values_b = set(sketch.unpack(a)), set(sketch.unpack(b))
    k = min(len(values_a), len(values_b))
    union = sorted(values_a | values_b)[:k]
    both = values_a & values_b
    jaccard = sum(1 for h in union if h in both) / len(union)
    return 2 * jaccard / (1 + jaccard)


def fetch_after(
    target_bytes: int, target_sketch: bytes, held_sketch: bytes, default_similarity: float
) -> float:
    """Bytes a node holding an entry with ``held_sketch`` must fetch to restore a target entry of
    ``target_bytes`` with ``target_sketch``: what the sketches say differs, else ``1 - default_similarity``
    of it (0 when the target's size is unknown: the older entry is the best there is)."""
    if not target_bytes:
        return 0.0
    share = similarity(target_sketch, held_sketch)
    return target_bytes * (1.0 - (default_similarity if share is None else share))
