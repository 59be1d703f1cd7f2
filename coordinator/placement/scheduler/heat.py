"""Each node's *heat*: its mean load since it joined over the fleet's mean per node in that time, so that of
equally good nodes the one that has run the least relative to the fleet goes first."""

from __future__ import annotations

from collections.abc import Collection


class LoadHistory:
    """Each node's running builds integrated over time since it was first seen, and the fleet's over the same
    time, so that a node's *heat* (its mean load over the fleet's mean per node while it lived) costs O(1)."""

    MIN_AGE_S = 1800.0
    """Younger nodes count as neither hot nor cold."""

    def __init__(self) -> None:
        self._t: float | None = None
        self._area = 0.0  # running builds × seconds, fleet-wide
        self._node_s = 0.0  # nodes × seconds
        self._running = 0
        self._per: dict[str, list[float]] = {}
        """node → [area, last change, running, first seen, fleet area then, node-seconds then]"""

    def _advance(self, now: float) -> None:
        if self._t is not None and now > self._t:
            self._area += self._running * (now - self._t)
            self._node_s += len(self._per) * (now - self._t)
        self._t = now if self._t is None else max(self._t, now)

    def seen(self, names: Collection[str], now: float) -> None:
        """The nodes that are live now (new ones start their history; gone ones are forgotten)."""
        self._advance(now)
        per = self._per
        for name in names:
            if name not in per:
                per[name] = [0.0, now, 0.0, now, self._area, self._node_s]
        if len(per) != len(names):
            for name in [n for n in per if n not in names]:
                self._running -= int(per.pop(name)[2])

    def change(self, node: str, delta: int, now: float) -> None:
        p = self._per.get(node)
        if p is None:
            return
        self._advance(now)
        p[0] += p[2] * (now - p[1])
        p[1] = now
        if p[2] + delta < 0:
            return  # a build started before the node was first seen: it was never counted
        p[2] += delta
        self._running += delta

    def heat(self, node: str, now: float) -> float:
        p = self._per.get(node)
        if p is None or now - p[3] < self.MIN_AGE_S or self._t is None:
            return 1.0
        own = (p[0] + p[2] * (now - p[1])) / (now - p[3])
        dt = now - self._t
        area = self._area + self._running * dt - p[4]
        node_s = self._node_s + len(self._per) * dt - p[5]
        return own / (area / node_s) if area > 0 and node_s > 0 else 1.0
