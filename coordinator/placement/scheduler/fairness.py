"""Fairness between tenants: requests age (one priority level per ``aging_s`` waited); within a level, the
tenant with the fewest running builds goes first, and while others wait no tenant holds more than
``tenant_share`` of the slots."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Sequence

from stoker.coordinator.placement.domain import PlacementRequest


def fair_order(
    queue: Sequence[PlacementRequest], tenant_running: collections.Counter[str], now: float, aging_s: float
) -> Iterator[PlacementRequest]:
    """Highest aged priority first; within a level, the tenant with the fewest running builds (read from
    ``tenant_running`` as the caller updates it, plus those served so far)."""

    def level(r: PlacementRequest) -> int:
        return r.priority + int((now - r.enqueued_at) / aging_s)

    by_tenant: dict[str, list[PlacementRequest]] = collections.defaultdict(list)
    for r in sorted(queue, key=lambda r: (-level(r), r.enqueued_at)):
        by_tenant[r.tenant].append(r)
    heads = {t: 0 for t in by_tenant}
    served: collections.Counter[str] = collections.Counter()
    while heads:
        tenant = min(
            heads,
            key=lambda t: (
                -level(by_tenant[t][heads[t]]),
                tenant_running[t] + served[t],
                by_tenant[t][heads[t]].enqueued_at,
            ),
        )
        yield by_tenant[tenant][heads[tenant]]
        served[tenant] += 1
        heads[tenant] += 1
        if heads[tenant] >= len(by_tenant[tenant]):
            del heads[tenant]


class TenantShares:
    """The tenants' running builds and waiting requests during one pass over the queue."""

    def __init__(
        self,
        running: collections.Counter[str],
        queue: Sequence[PlacementRequest],
        total_slots: int,
        share: float,
    ) -> None:
        self.running = running.copy()
        """tenant → builds running, counting those placed in this pass (``fair_order`` reads it)."""
        self._waiting = collections.Counter(r.tenant for r in queue)
        self._total_slots = total_slots
        self._cap = max(1, math.floor(share * total_slots))

    def over_share(self, request: PlacementRequest) -> str | None:
        """Why ``request`` waits for its tenant's share, or None when it may be placed."""
        held = self.running[request.tenant]
        if len(self._waiting) > 1 and held >= self._cap:
            return f"tenant {request.tenant} holds {held} of {self._total_slots} slots while others wait"
        return None

    def placed(self, request: PlacementRequest) -> None:
        """``request`` took a slot: its tenant runs one more build and has one fewer waiting."""
        self._waiting[request.tenant] -= 1
        if self._waiting[request.tenant] <= 0:
            del self._waiting[request.tenant]
        self.running[request.tenant] += 1
