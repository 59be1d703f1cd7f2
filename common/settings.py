"""Build frozen, nested settings dataclasses from defaults, an optional file and the environment.

Each service declares its settings as frozen dataclasses with a docstring per field (see
``stoker.agent.config`` and ``stoker.coordinator.config``). :func:`load` fills one in, in this order,
later sources winning:

1. the dataclass defaults;
2. a TOML or JSON file (``--config FILE`` or ``<PREFIX>CONFIG``), whose tables mirror the nesting;
3. environment variables ``<PREFIX><SECTION>_<FIELD>`` (for example ``STOKER_AGENT_CACHE_BUDGET_BYTES``);
4. explicit overrides (command-line flags), as a nested dict.

Unknown keys, in a file or in the environment under the prefix, are an error: a typo must not be
silently ignored. Nothing else in stoker reads ``os.environ`` for settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

T = TypeVar("T")


class SettingsError(ValueError):
    """A settings source holds an unknown key or a value of the wrong type."""


def load(
    cls: type[T],
    *,
    prefix: str,
    environ: Mapping[str, str] | None = None,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Return ``cls`` filled from defaults, ``file``, ``environ`` under ``prefix``, then ``overrides``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file = file or environ.get(f"{prefix}CONFIG")
    if file:
        _merge(values, _read_file(Path(file)))
    _merge(values, _from_environ(cls, prefix, environ))
    if overrides:
        _merge(values, _drop_none(overrides))
    return _build(cls, values, path="")


def in_cluster(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs in a Kubernetes pod (the API server's address is set)."""
    return bool((os.environ if environ is None else environ).get("KUBERNETES_SERVICE_HOST"))


def describe(cls: type, prefix: str) -> list[tuple[str, str, str]]:
    """(environment variable, default, doc) for every leaf field, for ``--help-settings``."""
    rows: list[tuple[str, str, str]] = []
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        name = f"{prefix}{f.name.upper()}"
        if (section := _section(hint)) is not None:
            rows.extend(describe(section, name + "_"))
        else:
            rows.append((name, repr(_default_of(f)), docs.get(f.name, "")))
    return rows


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"settings file {path} is not valid {path.suffix or 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must hold a table at its top level")
    return data


def _from_environ(cls: type, prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """Map ``PREFIX_SECTION_FIELD=value`` onto the nesting of ``cls``; unknown names are errors."""
    leaves = {name: path for name, path in _leaf_paths(cls, prefix)}
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix) or name == f"{prefix}CONFIG":
            continue
        if name not in leaves:
            raise SettingsError(
                f"unknown setting {name} (see `stoker {prefix_to_command(prefix)} --help-settings`)"
            )
        node = values
        *parents, leaf = leaves[name]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = raw
    return values


def prefix_to_command(prefix: str) -> str:
    return prefix.removeprefix("STOKER_").rstrip("_").lower() or "coordinator"


def _leaf_paths(cls: type, prefix: str, parents: tuple[str, ...] = ()):
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        env_name = f"{prefix}{f.name.upper()}"
        if (section := _section(hint)) is not None:
            yield from _leaf_paths(section, env_name + "_", parents + (f.name,))
        else:
            yield env_name, parents + (f.name,)


def _build(cls: type[T], values: Mapping[str, Any], path: str) -> T:
    if not isinstance(values, Mapping):
        raise SettingsError(f"setting {path.rstrip('.') or '(top)'} must be a table")
    hints = _hints(cls)
    fields = dataclasses.fields(cast(Any, cls))  # T is a settings dataclass
    known = {f.name for f in fields}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"unknown setting {path}{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for f in fields:
        hint = hints[f.name]
        if (section := _section(hint)) is not None:
            kwargs[f.name] = _build(section, values.get(f.name, {}), f"{path}{f.name}.")
        elif f.name in values:
            kwargs[f.name] = _coerce(values[f.name], hint, f"{path}{f.name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or value == "":
            if type(None) in args:
                return None
        return _coerce(value, non_none[0], name)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if hint is int:
            if isinstance(value, bool):
                raise ValueError("not an integer")
            return int(str(value).replace("_", ""))
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is tuple or hint is tuple:
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            else:
                items = list(value)
            inner = args[0] if args else str
            return tuple(_coerce(v, inner, name) for v in items)
        if origin is dict or hint is dict:
            if isinstance(value, str):
                pairs = [p for p in value.split(",") if p.strip()]
                value = dict(p.split("=", 1) for p in pairs)
            return {str(k): str(v) for k, v in dict(value).items()}
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name}: {exc}") from exc
    return value


def _merge(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out[key] = _drop_none(value)
        elif value is not None:
            out[key] = value
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section(hint: Any) -> type[Any] | None:
    """The dataclass a field's type names when the field is a nested table of settings, else None."""
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _field_docs(cls: type) -> dict[str, str]:
    """Field docs: the string literal right after each field in the class body."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
