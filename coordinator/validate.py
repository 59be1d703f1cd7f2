"""Checks on requests from the wire. Each failure is an InvalidArgument naming the field."""

from __future__ import annotations

import posixpath
import unicodedata

from stoker.coordinator.errors import InvalidArgument
from stoker.v1 import agent_pb2, common_pb2

MAX_KEY_BYTES = 512
MAX_KEYS = 32
MAX_ARGV = 4096
MAX_ENV = 1024


def cache_key(value: str, field: str, *, allow_empty: bool = False) -> None:
    if not value:
        if allow_empty:
            return
        raise InvalidArgument(f"{field}: must not be empty")
    if len(value.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"{field}: longer than {MAX_KEY_BYTES} bytes")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise InvalidArgument(f"{field}: contains a control or invisible character (U+{ord(ch):04X})")


def relative_path(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field}: must not be empty")
    if "\x00" in value:
        raise InvalidArgument(f"{field}: contains a NUL byte")
    if value.startswith("/") or value.startswith("\\"):
        raise InvalidArgument(f"{field}: {value!r} is absolute; it must be relative to the workspace")
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../") or ".." in value.split("/"):
        raise InvalidArgument(f"{field}: {value!r} escapes the workspace")
    if normal == ".":
        raise InvalidArgument(f"{field}: {value!r} is the workspace itself; name a directory inside it")


def build_spec(spec: common_pb2.BuildSpec, *, need_command: bool, max_files_bytes: int,
               max_timeout_s: float) -> None:
    if not spec.workspace.strip():
        raise InvalidArgument("spec.workspace: must not be empty")
    cache_key(spec.workspace, "spec.workspace")
    if need_command and not spec.command:
        raise InvalidArgument("spec.command: must not be empty")
    if len(spec.command) > MAX_ARGV:
        raise InvalidArgument(f"spec.command: more than {MAX_ARGV} arguments")
    if spec.command and not spec.command[0]:
        raise InvalidArgument("spec.command[0]: must not be empty")
    if spec.timeout_s < 0:
        raise InvalidArgument(f"spec.timeout_s: must not be negative, got {spec.timeout_s}")
    if spec.timeout_s > max_timeout_s:
        raise InvalidArgument(f"spec.timeout_s: {spec.timeout_s} exceeds the limit of {max_timeout_s} s")
    if len(spec.env) > MAX_ENV:
        raise InvalidArgument(f"spec.env: more than {MAX_ENV} variables")
    for name in spec.env:
        if not name or "=" in name or "\x00" in name:
            raise InvalidArgument(f"spec.env: invalid variable name {name!r}")
    cache = spec.cache
    cache_key(cache.key, "spec.cache.key", allow_empty=True)
    if len(cache.restore_keys) > MAX_KEYS:
        raise InvalidArgument(f"spec.cache.restore_keys: more than {MAX_KEYS} prefixes")
    for i, prefix in enumerate(cache.restore_keys):
        cache_key(prefix, f"spec.cache.restore_keys[{i}]")
    if (cache.key or cache.restore_keys) and not cache.paths:
        raise InvalidArgument("spec.cache.paths: a cache key needs at least one path to cache")
    for i, path in enumerate(cache.paths):
        relative_path(path, f"spec.cache.paths[{i}]")
    total = 0
    for name, data in spec.files.items():
        relative_path(name, f"spec.files[{name!r}]")
        total += len(data)
    if total > max_files_bytes:
        raise InvalidArgument(f"spec.files: {total} bytes in total, more than {max_files_bytes}")
    cache_key(spec.tenant, "spec.tenant", allow_empty=True)
    for k, v in spec.constraints.labels.items():
        cache_key(k, "spec.constraints.labels key")


def registration(req: agent_pb2.RegisterRequest) -> None:
    if not req.node.strip():
        raise InvalidArgument("node: must not be empty")
    cache_key(req.node, "node")
    if req.slots <= 0:
        raise InvalidArgument(f"slots: must be positive, got {req.slots}")
    if req.disk_capacity_bytes < 0:
        raise InvalidArgument("disk_capacity_bytes: must not be negative")
