"""Where the judge's figures come from: each instance's cumulative request, error and latency counters.

Two providers behind one small port (``sample(spec, instances) -> {key: Counters}``, plus
``guardrails(spec, instances) -> [breach]``):

- :class:`ScrapeMetrics` (the embedded default): GET every instance's ``/metrics`` and read the Prometheus
  text format; no Prometheus needed.
- :class:`PrometheusMetrics`: instant PromQL queries over Prometheus's HTTP API (``/api/v1/query``; Thanos,
  Mimir and VictoriaMetrics answer the same API).

What they read is configurable (a rollout file's ``analysis``): the request counter, an error selector on
it (``code=~"5.."``, ``grpc_code!="OK"``), the latency histogram, and — Prometheus only — whole PromQL
templates with the placeholders ``{{service}} {{version}} {{zone}} {{track}} {{instance}}``, and guardrails
(thresholds on any query). The defaults reproduce the sample service's names.

A template that uses ``{{version}}``, ``{{track}}``, ``{{zone}}`` or ``{{instance}}`` is rendered once per
group of instances (track × zone: ``track`` is ``canary`` for the new version and ``baseline`` for the old,
``instance`` a regex of the group's addresses); identical renderings run once. A series is keyed by its
instance label (the scrape address) when it has one, else by its group (``@canary@zone-a``), which the
machine counts for that track.

Both raise :class:`MetricsUnavailable` when the source cannot be read, and when the request counter has no
series for the canary or for the baseline (a renamed metric, a wrong label): the engine turns that into an
inconclusive look, never a pass. A guardrail can only stop a rollout: a breach fails the canary; a guardrail
query that returns nothing passes nothing; one that cannot be run makes the look inconclusive.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stoker.coordinator.rollouts.judge import Counters
from stoker.coordinator.rollouts.machine import Instance, Spec
from stoker.coordinator.rollouts.rollout_file import parse_selector, placeholders_in

REQUESTS = "stoker_sample_requests_total"
LATENCY = "stoker_sample_request_duration_seconds"
ERRORS = 'code=~"5.."'
_GROUPED = frozenset({"version", "track", "zone", "instance"})


class MetricsUnavailable(Exception):
    pass


@dataclass(frozen=True)
class MetricNames:
    """The names the default queries and the scrape read (a rollout file's ``analysis.metrics``)."""

    requests: str = REQUESTS
    errors: str = ERRORS
    latency: str = LATENCY
    service_label: str = "service"
    instance_label: str = "instance"

    @classmethod
    def from_analysis(cls, analysis: dict[str, Any]) -> MetricNames:
        given = analysis.get("metrics") or {}
        return cls(**{k: v for k, v in given.items() if k in cls.__dataclass_fields__})


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        have = labels.get(label, "")
        if op == "=" and have != value:
            return False
        if op == "!=" and have == value:
            return False
        if op == "=~" and not re.fullmatch(value, have):
            return False
        if op == "!~" and re.fullmatch(value, have):
            return False
    return True


def parse_exposition(text: str, names: MetricNames | None = None) -> Counters | None:
    """Counters from one instance's Prometheus text exposition; None when it has no request counter."""
    names = names or MetricNames()
    matchers = parse_selector(names.errors)
    total = errors = 0
    seen = False
    buckets: dict[float, int] = {}
    request_family = names.requests.removesuffix("_total")
    for family in text_string_to_metric_families(text):
        if family.name in (request_family, names.requests):
            for s in family.samples:
                if s.name == names.requests:
                    seen = True
                    total += int(s.value)
                    if _matches(s.labels, matchers):
                        errors += int(s.value)
        elif family.name == names.latency:
            for s in family.samples:
                if s.name == names.latency + "_bucket":
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0) + int(s.value)
    if not seen:
        return None
    return Counters(total, errors, tuple(sorted(buckets.items())))


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _require_both_tracks(spec: Spec, instances: list[Instance], keys: Iterable[str], what: str) -> None:
    """No series for the canary (or for the baseline) is not data: the look is inconclusive."""
    keys = set(keys)
    for track, group in (
        ("canary", [i for i in instances if i.version == spec.version]),
        ("baseline", [i for i in instances if i.version != spec.version]),
    ):
        if not group:
            continue
        if not any(i.address in keys for i in group) and not any(k.startswith(f"@{track}@") for k in keys):
            version = group[0].version
            raise MetricsUnavailable(f"{what} returned no series for the {track} ({version})")


class ScrapeMetrics:
    """Scrape every instance's /metrics directly."""

    name = "scrape"

    def __init__(
        self, timeout_s: float = 3.0, path: str = "/metrics", names: MetricNames | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self.path = path
        self.names = names or MetricNames()

    async def sample(self, spec: Spec, instances: Iterable[Instance]) -> dict[str, Counters]:
        targets = [i for i in instances if i.address and not i.leaving]

        async def one(inst: Instance) -> tuple[str, Counters | None, str]:
            try:
                body = await asyncio.to_thread(_get, f"http://{inst.address}{self.path}", self.timeout_s)
                counters = parse_exposition(body.decode(errors="replace"), self.names)
                if counters is None:
                    return inst.address, None, f"{inst.id}: no series named {self.names.requests}"
                return inst.address, counters, ""
            except (OSError, ValueError) as exc:
                return inst.address, None, f"{inst.id}: {exc}"

        results = await asyncio.gather(*(one(i) for i in targets))
        out = {addr: c for addr, c, _ in results if c is not None}
        failures = [why for _, c, why in results if c is None]
        # An instance that is down shows up in the guardrails; only a source that yields nothing is "down".
        if targets and not out:
            raise MetricsUnavailable("no instance's /metrics could be read (" + "; ".join(failures[:3]) + ")")
        _require_both_tracks(spec, targets, out, f"/metrics ({'; '.join(failures[:2])})")
        return out

    async def guardrails(self, spec: Spec, instances: Iterable[Instance]) -> list[str]:
        return []


def _promql_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True)
class _Group:
    track: str
    version: str
    zone: str
    addresses: tuple[str, ...]


@dataclass
class PrometheusMetrics:
    """Read the counters from Prometheus with PromQL (instant queries)."""

    url: str
    timeout_s: float = 3.0
    names: MetricNames = field(default_factory=MetricNames)
    templates: dict[str, str] = field(default_factory=dict)
    """``requests``, ``errors``, ``latency`` PromQL templates replacing the generated ones."""
    guardrail_rules: list[dict[str, Any]] = field(default_factory=list)
    """``{name, query, max?, min?}``: a breach fails the canary."""
    name: str = "prometheus"

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

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
        if data.get("data", {}).get("resultType") not in ("vector", None):
            raise MetricsUnavailable(f"{promql!r} must return an instant vector")
        return data["data"]["result"]

    def template(self, which: str) -> str:
        if which in self.templates:
            return self.templates[which]
        n = self.names
        sel = f'{n.service_label}="{{{{service}}}}"'
        by = n.instance_label
        return {
            "requests": f"sum by ({by}) ({n.requests}{{{sel}}})",
            "errors": f"sum by ({by}) ({n.requests}{{{sel},{n.errors}}})",
            "latency": f"sum by ({by}, le) ({n.latency}_bucket{{{sel}}})",
        }[which]

    def queries(self, service: str) -> tuple[str, str, str]:
        """The three queries for a service (rendered for templates that use only ``{{service}}``)."""
        return tuple(  # type: ignore[return-value]
            self._render(self.template(w), service, None) for w in ("requests", "errors", "latency")
        )

    @staticmethod
    def _render(template: str, service: str, group: _Group | None) -> str:
        values = {"service": service}
        if group is not None:
            values.update(
                version=group.version,
                track=group.track,
                zone=group.zone,
                instance="|".join(re.escape(a) for a in group.addresses),
            )

        def sub(m: re.Match) -> str:
            return _promql_string(values.get(m.group(1), m.group(0)))

        return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", sub, template)

    @staticmethod
    def _groups(spec: Spec, instances: list[Instance]) -> list[_Group]:
        groups: dict[tuple[str, str, str], list[str]] = {}
        for i in instances:
            track = "canary" if i.version == spec.version else "baseline"
            groups.setdefault((track, i.version, i.zone), []).append(i.address)
        return [_Group(t, v, z, tuple(sorted(a))) for (t, v, z), a in sorted(groups.items())]

    def _run(
        self, template: str, spec: Spec, groups: list[_Group]
    ) -> list[tuple[dict[str, str], float, str]]:
        """(labels, value, key) for every series of ``template``, rendered per group where it needs it."""
        used = set(placeholders_in(template))
        renders: dict[str, _Group | None] = {}
        if used & _GROUPED:
            for group in groups:
                renders.setdefault(self._render(template, spec.service, group), group)
        else:
            renders[self._render(template, spec.service, None)] = None
        out = []
        for promql, g in renders.items():
            for series in self._query(promql):
                labels = series.get("metric", {})
                value = float(series["value"][1])
                key = labels.get(self.names.instance_label, "")
                if not key and g is not None and used & {"track", "version", "instance"}:
                    key = f"@{g.track}@{g.zone if used & {'zone', 'instance'} else '*'}"
                if key:
                    out.append((labels, value, key))
        return out

    def _sample(self, spec: Spec, instances: list[Instance]) -> dict[str, Counters]:
        groups = self._groups(spec, instances)
        totals: dict[str, float] = {}
        errors: dict[str, float] = {}
        buckets: dict[str, dict[float, float]] = {}
        for _, value, key in self._run(self.template("requests"), spec, groups):
            totals[key] = totals.get(key, 0.0) + value
        for _, value, key in self._run(self.template("errors"), spec, groups):
            errors[key] = errors.get(key, 0.0) + value
        for labels, value, key in self._run(self.template("latency"), spec, groups):
            le = labels.get("le", "+Inf")
            bound = math.inf if le in ("+Inf", "Inf") else float(le)
            per = buckets.setdefault(key, {})
            per[bound] = per.get(bound, 0.0) + value
        _require_both_tracks(spec, instances, totals, "the requests query")
        return {
            key: Counters(
                int(total),
                int(errors.get(key, 0)),
                tuple(sorted((b, int(v)) for b, v in buckets.get(key, {}).items())),
            )
            for key, total in totals.items()
        }

    async def sample(self, spec: Spec, instances: Iterable[Instance]) -> dict[str, Counters]:
        live = [i for i in instances if i.address and not i.leaving]
        return await asyncio.to_thread(self._sample, spec, live)

    def _guardrails(self, spec: Spec, instances: list[Instance]) -> list[str]:
        canary = [g for g in self._groups(spec, instances) if g.track == "canary"]
        if not canary:
            return []
        breaches = []
        for rule in self.guardrail_rules:
            for labels, value, _ in self._run(rule["query"], spec, canary) or []:
                shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))[:120]
                if "max" in rule and value > rule["max"]:
                    breaches.append(f"{rule['name']}: {value:g} above its max {rule['max']:g} ({shown})")
                elif "min" in rule and value < rule["min"]:
                    breaches.append(f"{rule['name']}: {value:g} below its min {rule['min']:g} ({shown})")
        return breaches

    async def guardrails(self, spec: Spec, instances: Iterable[Instance]) -> list[str]:
        """Breached guardrails of the canary (rendered with track=canary, version=the new one)."""
        live = [i for i in instances if i.address and not i.leaving]
        return await asyncio.to_thread(self._guardrails, spec, live)


def provider_for(
    analysis: dict[str, Any], default_source: str, prometheus_url: str, timeout_s: float
) -> ScrapeMetrics | PrometheusMetrics:
    """The provider a rollout's ``analysis`` asks for (empty: the coordinator's defaults)."""
    names = MetricNames.from_analysis(analysis)
    source = analysis.get("source") or default_source
    if source == "prometheus":
        return PrometheusMetrics(
            prometheus_url,
            timeout_s,
            names=names,
            templates=dict(analysis.get("queries") or {}),
            guardrail_rules=list(analysis.get("guardrails") or []),
        )
    return ScrapeMetrics(timeout_s, names=names)
