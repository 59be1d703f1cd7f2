"""The rollout file: one YAML file per service that says where it runs, the plan, the analysis and who is
told. Loaded strictly: an unknown key, a wrong type, a step share outside (0, 100] or a query template with
an unknown placeholder is refused with the file's line and the field's path.

The file comes from a service's repository, so it is input to check, never code: YAML is read with the
safe loader, anchors and aliases are refused (no "billion laughs"), the size is bounded, and nothing in it
names a file to read or a command to run. The only URLs it holds are its webhooks' (http or https; the
coordinator may restrict them further with ``rollouts.webhook_url_prefixes``); the Prometheus it queries is
the coordinator's own (``rollouts.prometheus_url``), never one the file names.

``SCHEMA`` is a JSON Schema (draft 2020-12) and the loader's own definition of the structure: the loader
walks it (a small interpreter of the keywords it uses), and ``docs/rollout.schema.json`` is the same
dictionary written out for editors (``stoker rollout schema``; a test checks the two are equal).
Rules JSON Schema cannot say (a step has either a share or a pause; shares rise to 100; placeholders) are
checked after it, with the same kind of message.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any

import yaml

from stoker.coordinator.core.errors import InvalidArgument
from stoker.coordinator.rollouts.machine import Spec, Step, validate_spec

MAX_BYTES = 64 * 1024
API_VERSION = "stoker.dev/v1"
PLACEHOLDERS = ("service", "version", "zone", "track", "instance")
EVENTS = ("started", "step", "paused", "verdict", "succeeded", "rolled_back", "failed")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")

_duration: dict[str, Any] = {
    "description": "seconds as a number, or a string such as 90s, 5m, 1h, 500ms",
    "type": ["number", "string"],
    "minimum": 0,
    "pattern": _DURATION.pattern,
}
_metric_name = {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"}
_label_name = {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}
_query = {
    "type": "string",
    "minLength": 1,
    "maxLength": 4000,
    "description": "PromQL; placeholders: " + ", ".join("{{" + p + "}}" for p in PLACEHOLDERS),
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://stoker.dev/schemas/rollout.schema.json",
    "title": "stoker rollout file",
    "description": "How one service is rolled out: the target, the plan, the analysis, the notifications.",
    "type": "object",
    "required": ["apiVersion", "kind", "service"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": "Rollout"},
        "service": {
            "description": "the service (local target: its name; kubernetes: the Deployment family "
            "<service>-<zone>)",
            "type": "string",
            "pattern": "^[A-Za-z0-9._-]{1,50}$",
        },
        "target": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "kind": {"enum": ["local", "kubernetes"], "description": "default local"},
                "namespace": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                "deployment": {
                    "description": "kubernetes: the Deployment family <deployment>-<zone> (default: service)",
                    "type": "string",
                    "pattern": "^[a-z0-9]([-a-z0-9.]{0,48}[a-z0-9])?$",
                },
                "zones": {
                    "description": "zones of a first deployment (a service that runs nothing yet)",
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,63}$"},
                    "maxItems": 20,
                },
                "instances_per_zone": {"type": "integer", "minimum": 1, "maximum": 100},
                "env": {
                    "description": "environment of the new version's instances",
                    "type": "object",
                    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                    "additionalProperties": {"type": "string", "maxLength": 4000},
                },
            },
        },
        "plan": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "bake": {**_duration, "description": "default bake of every step (default: coordinator's)"},
                "min_requests": {"type": "integer", "minimum": 0},
                "post_bake": {**_duration, "description": "watch after the 100 % step"},
                "steps": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 20,
                    "items": {
                        "description": "a share step (share, bake, min_requests, zone_first) or a pause step",
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "share": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                            "bake": _duration,
                            "min_requests": {"type": "integer", "minimum": 0},
                            "zone_first": {"type": "boolean"},
                            "pause": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "timeout": {**_duration, "description": "0 or absent: wait forever"},
                                    "on_timeout": {"enum": ["rollback", "wait", "promote"]},
                                },
                            },
                        },
                    },
                },
            },
        },
        "analysis": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "source": {
                    "enum": ["scrape", "prometheus"],
                    "description": "scrape each instance's /metrics, or query the coordinator's Prometheus",
                },
                "metrics": {
                    "description": "names the default queries and the scrape use",
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "requests": {**_metric_name, "description": "the request counter"},
                        "errors": {
                            "type": "string",
                            "description": 'label matchers on the request counter, e.g. code=~"5.." or '
                            'grpc_code!="OK"',
                            "maxLength": 500,
                        },
                        "latency": {**_metric_name, "description": "the latency histogram (its _bucket)"},
                        "service_label": _label_name,
                        "instance_label": _label_name,
                    },
                },
                "queries": {
                    "description": "PromQL replacing the default queries (source: prometheus); each returns "
                    "cumulative values per instance (by instance_label) or per track",
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"requests": _query, "errors": _query, "latency": _query},
                },
                "guardrails": {
                    "description": "thresholds on any query; a breach stops the rollout, "
                    "nothing here passes it",
                    "type": "array",
                    "maxItems": 20,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "query"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9 ._-]{1,60}$"},
                            "query": _query,
                            "max": {"type": "number"},
                            "min": {"type": "number"},
                        },
                    },
                },
            },
        },
        "notifications": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "webhooks": {
                    "type": "array",
                    "maxItems": 10,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["url"],
                        "properties": {
                            "url": {"type": "string", "pattern": "^https?://[^\\s]+$", "maxLength": 2000},
                            "format": {"enum": ["json", "slack"], "description": "default json"},
                            "events": {
                                "type": "array",
                                "items": {"enum": list(EVENTS)},
                                "description": "default: all",
                            },
                        },
                    },
                },
            },
        },
    },
}


class RolloutFileError(InvalidArgument):
    """A rollout file that does not load; the message names the file, the line and the field."""


@dataclass(frozen=True)
class RolloutFile:
    """A loaded rollout file: everything of a Spec but the version."""

    name: str
    spec: Spec
    """The spec with an empty version (``with_version`` fills it in)."""

    def with_version(self, version: str) -> Spec:
        spec = replace(self.spec, version=version)
        validate_spec(spec)
        return spec


# ------------------------------------------------------------------------------------------ YAML with lines


class _Map(dict):
    line = 0
    key_lines: dict[str, int]


class _Seq(list):
    line = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """The safe loader, recording lines, refusing aliases and duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "anchors and aliases are not allowed in a rollout file", event.start_mark
            )
        node = super().compose_node(parent, index)
        if getattr(node, "anchor", None):
            raise yaml.MarkedYAMLError(
                None, None, "anchors and aliases are not allowed in a rollout file", node.start_mark
            )
        return node


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise RolloutFileError(f"line {line}: keys must be strings, got {key!r}")
        if key in out:
            raise RolloutFileError(f"line {line}: {key}: duplicate key")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


# ------------------------------------------------------------------------------------------ the schema walk


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
}


def _type_ok(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("number", "integer"):
        return False
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: dict[str, Any], path: str, line: int) -> None:
    def bad(problem: str) -> RolloutFileError:
        return RolloutFileError(f"line {line}: {path or '(top)'}: {problem}")

    if "const" in schema and value != schema["const"]:
        raise bad(f"must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise bad(f"must be one of {', '.join(map(str, schema['enum']))}, got {value!r}")
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_type_ok(value, n) for n in names):
            raise bad(f"must be {' or '.join(names)}, got {type(value).__name__} {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f"must be a finite number, got {value}")
        if "minimum" in schema and value < schema["minimum"]:
            raise bad(f"must be at least {schema['minimum']}, got {value}")
        low, high = schema.get("exclusiveMinimum"), schema.get("maximum")
        if low is not None and high is not None and not low < value <= high:
            raise bad(f"must be in ({low}, {high}], got {value}")
        if high is not None and value > high:
            raise bad(f"must be at most {high}, got {value}")
        if low is not None and value <= low:
            raise bad(f"must be above {low}, got {value}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise bad(f"{value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            raise bad("must not be empty")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise bad(f"must be at most {schema['maxLength']} characters")
    if isinstance(value, list):
        lines = getattr(value, "item_lines", [line] * len(value))
        if len(value) < schema.get("minItems", 0):
            raise bad(f"needs at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise bad(f"takes at most {schema['maxItems']} items")
        for n, item in enumerate(value):
            _check(item, schema.get("items", {}), f"{path}[{n + 1}]", lines[n])
    if isinstance(value, dict):
        key_lines = getattr(value, "key_lines", {})
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                raise bad(f"{key}: required")
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            at = key_lines.get(key, line)
            names = schema.get("propertyNames")
            if names and not re.search(names["pattern"], key):
                raise RolloutFileError(f"line {at}: {sub}: {key!r} is not a valid name")
            if key in props:
                _check(item, props[key], sub, at)
                continue
            extra = schema.get("additionalProperties", True)
            if extra is False:
                known = ", ".join(sorted(props))
                raise RolloutFileError(f"line {at}: {sub}: unknown key (known here: {known})")
            if isinstance(extra, dict):
                _check(item, extra, sub, at)


# ------------------------------------------------------------------------------------------ loading


def seconds(value: float | str) -> float:
    """A schema-checked duration in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(value)
    assert m is not None  # the schema checked it
    number, unit = float(m.group(1)), m.group(2)
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def placeholders_in(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


def check_template(template: str, where: str) -> None:
    """Raise RolloutFileError (prefixed by ``where``) for an unknown or malformed placeholder."""
    for name in placeholders_in(template):
        if name not in PLACEHOLDERS:
            known = ", ".join("{{" + p + "}}" for p in PLACEHOLDERS)
            raise RolloutFileError(f"{where}: unknown placeholder {{{{{name}}}}} (known: {known})")
    rest = _PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise RolloutFileError(f"{where}: a '{{{{' or '}}}}' that is not a placeholder")


def _line(node: Any, key: str | int, default: int) -> int:
    if isinstance(key, int):
        lines = getattr(node, "item_lines", None)
        return lines[key] if lines and key < len(lines) else default
    return getattr(node, "key_lines", {}).get(key, getattr(node, "line", default))


_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """``code=~"5..", method!="GET"`` → [(label, op, value)]; raises ValueError."""
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _MATCHER.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f'cannot read a label matcher at {text[pos:]!r} (expected label="value")')
        label, op, value = m.group(1), m.group(2), m.group(3).encode().decode("unicode_escape")
        if op in ("=~", "!~"):
            re.compile(value)
        out.append((label, op, value))
        pos = m.end()
    if not out:
        raise ValueError("no label matcher")
    return out


def _semantics(doc: dict[str, Any], name: str) -> None:
    """The rules the schema cannot say."""
    where = name
    plan = doc.get("plan") or _Map()
    steps = plan.get("steps") or []
    shares: list[float] = []
    for n, st in enumerate(steps):
        line = _line(steps, n, plan.line)
        path = f"plan.steps[{n + 1}]"
        if ("pause" in st) == ("share" in st):
            raise RolloutFileError(f"{where}:{line}: {path}: a step has either a share or a pause, not both")
        if "pause" in st:
            extra = sorted(set(st) - {"pause"})
            if extra:
                raise RolloutFileError(f"{where}:{line}: {path}.{extra[0]}: not allowed on a pause step")
            continue
        if shares and st["share"] <= shares[-1]:
            raise RolloutFileError(
                f"{where}:{line}: {path}.share: {st['share']:g} must be above the previous step's "
                f"{shares[-1]:g}"
            )
        shares.append(st["share"])
    if steps and shares[-1:] != [100]:
        raise RolloutFileError(
            f"{where}:{_line(plan, 'steps', 1)}: plan.steps: the last step with a share must be 100"
        )
    if steps and "pause" in steps[-1]:
        raise RolloutFileError(
            f"{where}:{_line(steps, len(steps) - 1, 1)}: plan.steps: cannot end with a pause"
        )
    analysis = doc.get("analysis") or _Map()
    source = analysis.get("source", "")
    for section in ("queries", "guardrails"):
        if section in analysis and source != "prometheus":
            raise RolloutFileError(
                f"{where}:{_line(analysis, section, 1)}: analysis.{section}: needs source: prometheus"
            )
    queries = analysis.get("queries") or _Map()
    for key, template in queries.items():
        check_template(template, f"{where}:{_line(queries, key, 1)}: analysis.queries.{key}")
    guardrails = analysis.get("guardrails") or []
    for n, g in enumerate(guardrails):
        line = _line(guardrails, n, 1)
        check_template(g["query"], f"{where}:{_line(g, 'query', line)}: analysis.guardrails[{n + 1}].query")
        if "max" not in g and "min" not in g:
            raise RolloutFileError(f"{where}:{line}: analysis.guardrails[{n + 1}]: needs max or min")
    metrics = analysis.get("metrics") or _Map()
    if "errors" in metrics:
        try:
            parse_selector(metrics["errors"])
        except (ValueError, re.error) as exc:
            raise RolloutFileError(
                f"{where}:{_line(metrics, 'errors', 1)}: analysis.metrics.errors: {exc}"
            ) from None
    target = doc.get("target") or _Map()
    for key in ("namespace", "deployment"):
        if target.get(key) and target.get("kind", "local") != "kubernetes":
            raise RolloutFileError(
                f"{where}:{_line(target, key, 1)}: target.{key}: only for kind: kubernetes"
            )


def load(text: str, name: str = "rollout.yaml") -> RolloutFile:
    """Load and check a rollout file; raise RolloutFileError naming ``name``, the line and the field."""
    if len(text.encode()) > MAX_BYTES:
        raise RolloutFileError(f"{name}: larger than {MAX_BYTES // 1024} KiB")
    try:
        doc = yaml.load(text, Loader=_Loader)
    except RolloutFileError as exc:
        raise RolloutFileError(f"{name}:{exc}".replace(":line ", ":", 1)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise RolloutFileError(f"{name}:{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise RolloutFileError(f"{name}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise RolloutFileError(f"{name}:1: (top): must be a mapping of keys (apiVersion, kind, service, ...)")
    try:
        _check(doc, SCHEMA, "", getattr(doc, "line", 1))
    except RolloutFileError as exc:
        raise RolloutFileError(f"{name}:{str(exc).removeprefix('line ')}") from None
    _semantics(doc, name)
    return RolloutFile(name, _spec(doc, name))


def _spec(doc: dict[str, Any], name: str) -> Spec:
    target = doc.get("target") or {}
    plan = doc.get("plan") or {}
    steps = []
    for st in plan.get("steps") or []:
        if "pause" in st:
            pause = st["pause"] or {}
            steps.append(
                Step(
                    pause=True,
                    timeout_s=seconds(pause.get("timeout", 0)),
                    on_timeout=pause.get("on_timeout", "rollback"),
                )
            )
        else:
            steps.append(
                Step(
                    share=float(st["share"]),
                    bake_s=seconds(st["bake"]) if "bake" in st else None,
                    min_requests=st.get("min_requests"),
                    zone_first=st.get("zone_first", False),
                )
            )
    analysis = json.loads(json.dumps(doc.get("analysis") or {}))  # plain dicts and lists, no line records
    hooks = []
    for hook in (doc.get("notifications") or {}).get("webhooks") or []:
        hooks.append(
            {
                "url": hook["url"],
                "format": hook.get("format", "json"),
                "events": list(hook.get("events") or EVENTS),
            }
        )
    return Spec(
        service=doc["service"],
        version="",
        target=target.get("kind", "local"),
        namespace=target.get("namespace", ""),
        deployment=target.get("deployment", ""),
        zones=tuple(target.get("zones") or ()),
        instances_per_zone=target.get("instances_per_zone", 0),
        env={k: str(v) for k, v in (target.get("env") or {}).items()},
        bake_s=seconds(plan["bake"]) if "bake" in plan else 0.0,
        min_requests=plan.get("min_requests", 0),
        post_bake_s=seconds(plan["post_bake"]) if "post_bake" in plan else 0.0,
        steps=tuple(steps),
        analysis=analysis,
        webhooks=tuple(hooks),
        source=f"file {name}",
    )


def schema_json() -> str:
    """``SCHEMA`` as published in docs/rollout.schema.json."""
    return json.dumps(SCHEMA, indent=2) + "\n"
