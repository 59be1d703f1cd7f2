"""Where the judge's figures come from: each instance's cumulative request, error and latency counters.

Two providers behind one small port (``sample(spec, instances) -> {address: Counters}``):

- :class:`ScrapeMetrics` (the embedded default): GET every instance's ``/metrics`` and read the Prometheus
  text format; no Prometheus needed.
- :class:`PrometheusMetrics`: instant PromQL queries over Prometheus's HTTP API (``/api/v1/query``), keyed by
  the ``instance`` label (the scrape address), filtered by a service label.

Both raise :class:`MetricsUnavailable` when the source cannot be read; the engine turns that into an
inconclusive look (never a pass).
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from stoker.coordinator.rollouts.judge import Counters
from stoker.coordinator.rollouts.machine import Instance, Spec

REQUESTS = "stoker_sample_requests_total"
LATENCY = "stoker_sample_request_duration_seconds"


class MetricsUnavailable(Exception):
    pass


def _is_error(code: str) -> bool:
    return code.startswith("5")


def parse_exposition(text: str, requests: str = REQUESTS, latency: str = LATENCY) -> Counters:
    """Counters from one instance's Prometheus text exposition."""
    total = errors = 0
    buckets: dict[float, int] = {}
    request_family = requests.removesuffix("_total")
    for family in text_string_to_metric_families(text):
        if family.name == request_family:
            for s in family.samples:
                if s.name == requests:
                    total += int(s.value)
                    if _is_error(s.labels.get("code", "")):
                        errors += int(s.value)
        elif family.name == latency:
            for s in family.samples:
                if s.name == latency + "_bucket":
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0) + int(s.value)
    return Counters(total, errors, tuple(sorted(buckets.items())))


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


class ScrapeMetrics:
    """Scrape every instance's /metrics directly."""

    name = "scrape"

    def __init__(self, timeout_s: float = 3.0, path: str = "/metrics") -> None:
        self.timeout_s = timeout_s
        self.path = path

    async def sample(self, spec: Spec, instances: Iterable[Instance]) -> dict[str, Counters]:
        targets = [i for i in instances if i.address and not i.leaving]

        async def one(inst: Instance) -> tuple[str, Counters | None, str]:
            try:
                body = await asyncio.to_thread(_get, f"http://{inst.address}{self.path}", self.timeout_s)
                return inst.address, parse_exposition(body.decode(errors="replace")), ""
            except (OSError, ValueError) as exc:
                return inst.address, None, f"{inst.id}: {exc}"

        results = await asyncio.gather(*(one(i) for i in targets))
        out = {addr: c for addr, c, _ in results if c is not None}
        failures = [why for _, c, why in results if c is None]
        # An instance that is down shows up in the guardrails; only a source that yields nothing is "down".
        if targets and not out:
            raise MetricsUnavailable("no instance's /metrics could be read (" + "; ".join(failures[:3]) + ")")
        return out


class PrometheusMetrics:
    """Read the same counters from Prometheus with PromQL (instant queries, summed per scrape target)."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        timeout_s: float = 3.0,
        *,
        service_label: str = "service",
        requests: str = REQUESTS,
        latency: str = LATENCY,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.service_label = service_label
        self.requests = requests
        self.latency = latency

    def _query(self, promql: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            body = _get(url, self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise MetricsUnavailable(f"Prometheus answered {exc.code} to {promql!r}") from exc
        except OSError as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url}: {exc}") from exc
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise MetricsUnavailable(
                f"Prometheus answered something that is not JSON: {body[:100]!r}"
            ) from exc
        if data.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus query failed: {data.get('error', data)}")
        return data["data"]["result"]

    def queries(self, service: str) -> tuple[str, str, str]:
        sel = f'{self.service_label}="{service}"'
        return (
            f"sum by (instance) ({self.requests}{{{sel}}})",
            f'sum by (instance) ({self.requests}{{{sel},code=~"5.."}})',
            f"sum by (instance, le) ({self.latency}_bucket{{{sel}}})",
        )

    def _sample(self, service: str) -> dict[str, Counters]:
        q_total, q_errors, q_buckets = self.queries(service)
        totals = {r["metric"].get("instance", ""): int(float(r["value"][1])) for r in self._query(q_total)}
        errors = {r["metric"].get("instance", ""): int(float(r["value"][1])) for r in self._query(q_errors)}
        buckets: dict[str, dict[float, int]] = {}
        for r in self._query(q_buckets):
            le = r["metric"].get("le", "+Inf")
            bound = math.inf if le in ("+Inf", "Inf") else float(le)
            buckets.setdefault(r["metric"].get("instance", ""), {})[bound] = int(float(r["value"][1]))
        return {
            inst: Counters(total, errors.get(inst, 0), tuple(sorted(buckets.get(inst, {}).items())))
            for inst, total in totals.items()
        }

    async def sample(self, spec: Spec, instances: Iterable[Instance]) -> dict[str, Counters]:
        return await asyncio.to_thread(self._sample, spec.service)
