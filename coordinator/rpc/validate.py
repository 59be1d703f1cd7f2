"""Checks on requests from the wire. Each failure is an InvalidArgument naming the field.

What passes here must also pass the agent's own checks (``agent/cache/manifest.py`` for cache paths, the
runner for argv, environment and input files): a request the coordinator accepts must not fail later on a
node for a reason the coordinator could have seen. Messages quote offending values shortened
(:func:`_show`), so a hostile megabyte-long value cannot blow up the status trailer that carries them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

from stoker.coordinator.core.errors import InvalidArgument
from stoker.v1 import agent_pb2, common_pb2

MAX_KEY_BYTES = 512
MAX_KEYS = 32
MAX_ARGV = 4096
MAX_ENV = 1024
MAX_PATH_BYTES = 512
"""Longest cache path or input-file name, in UTF-8 bytes."""
MAX_NAME_BYTES = 255
"""Longest single path component (Linux NAME_MAX)."""
MAX_FILES = 4096
"""Most inline input files one build may carry."""
MAX_ARG_BYTES = 128 * 1024 - 1
"""Longest single argv string or environment entry execve accepts (Linux MAX_ARG_STRLEN, less the NUL)."""
MAX_EXEC_BYTES = 1024 * 1024
"""Most bytes of argv and environment together (well under Linux's limit of a quarter of the stack)."""

_INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
# Look-alikes of the separators that survive NFKC unchanged (NFKC already maps fullwidth forms to ASCII).
_SEPARATOR_LOOKALIKES = frozenset("\u2044\u2215\u29f8\u2571\u27cb\u2216\u29f5\u29f9\u27cd")
_SHOW = 60


def _show(value: str) -> str:
    """``repr(value)``, cut to a readable length."""
    if len(value) <= _SHOW:
        return repr(value)
    return f"{value[:_SHOW]!r}… ({len(value.encode(errors='surrogatepass'))} bytes)"


def _check_chars(value: str, field: str) -> None:
    """Printable, in NFC, and no look-alike of ``/``, ``\\`` or ``.`` (bidi overrides, zero-width
    characters, fullwidth solidus, an NFD spelling of a name that has an NFC one: all refused)."""
    for ch in value:
        if unicodedata.category(ch) in _INVISIBLE:
            raise InvalidArgument(f"{field}: contains a control or invisible character (U+{ord(ch):04X})")
    if not value.isascii():
        if not unicodedata.is_normalized("NFC", value):
            raise InvalidArgument(f"{field}: {_show(value)} is not in Unicode normal form NFC")
        for ch in value:
            if ord(ch) >= 0x80 and (
                ch in _SEPARATOR_LOOKALIKES or any(c in "/\\." for c in unicodedata.normalize("NFKC", ch))
            ):
                raise InvalidArgument(
                    f"{field}: contains U+{ord(ch):04X}, a look-alike of a path separator or dot"
                )


def cache_key(value: str, field: str, *, allow_empty: bool = False) -> None:
    if not value:
        if allow_empty:
            return
        raise InvalidArgument(f"{field}: must not be empty")
    if len(value.encode(errors="surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"{field}: longer than {MAX_KEY_BYTES} bytes")
    _check_chars(value, field)


def relative_path(value: str, field: str, *, allow_trailing_slash: bool = False) -> str:
    """Check a path relative to the workspace; returns it without its trailing slash (if allowed)."""
    if not value:
        raise InvalidArgument(f"{field}: must not be empty")
    if "\x00" in value:
        raise InvalidArgument(f"{field}: contains a NUL byte")
    if len(value.encode(errors="surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{field}: longer than {MAX_PATH_BYTES} bytes")
    if value.startswith(("/", "\\")):
        raise InvalidArgument(f"{field}: {_show(value)} is absolute; it must be relative to the workspace")
    if "\\" in value:
        raise InvalidArgument(f"{field}: {_show(value)} contains a backslash; separate directories with /")
    _check_chars(value, field)
    parts = value.split("/")
    if ".." in parts:
        raise InvalidArgument(f"{field}: {_show(value)} escapes the workspace")
    if allow_trailing_slash and len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if parts == ["."]:
        raise InvalidArgument(f"{field}: {_show(value)} is the workspace itself; name a directory inside it")
    for part in parts:
        if part in ("", "."):
            raise InvalidArgument(
                f"{field}: {_show(value)} has an empty or '.' component; write it plainly "
                "(a/b, not a//b or ./a/b)"
            )
        if len(part.encode()) > MAX_NAME_BYTES:
            raise InvalidArgument(
                f"{field}: a component of {_show(value)} is longer than {MAX_NAME_BYTES} bytes"
            )
    return "/".join(parts)


def _finite(value: float, field: str) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field}: must be a finite number, got {value}")


@dataclass(frozen=True)
class LimitMaxima:
    """The most a build may ask for in ``spec.limits`` (the coordinator's settings ``builds.max_*``)."""

    cpus: float = 64.0
    memory_bytes: int = 256 * 1024**3
    pids: int = 65536
    output_bytes: int = 1024**3
    disk_bytes: int = 1024**4


MAX_IMAGE_BYTES = 512
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
"""An OCI reference: registry host[:port], path components, then :tag and/or @algorithm:digest."""


def build_spec(
    spec: common_pb2.BuildSpec,
    *,
    need_command: bool,
    max_files_bytes: int,
    max_timeout_s: float,
    maxima: LimitMaxima = LimitMaxima(),
) -> None:
    """Raise InvalidArgument naming the first bad field of ``spec`` (the checks run in the spec's order)."""
    if not spec.workspace.strip():
        raise InvalidArgument("spec.workspace: must not be empty")
    cache_key(spec.workspace, "spec.workspace")
    exec_bytes = _command(spec.command, need_command=need_command)
    _timeout(spec.timeout_s, max_timeout_s)
    exec_bytes += _env(spec.env)
    if exec_bytes > MAX_EXEC_BYTES:
        raise InvalidArgument(f"spec.command: with spec.env, {exec_bytes} bytes, more than {MAX_EXEC_BYTES}")
    _cache(spec.cache)
    cache_scopes(spec.cache)
    _files(spec.files, max_files_bytes)
    cache_key(spec.tenant, "spec.tenant", allow_empty=True)
    cache_key(spec.constraints.zone, "spec.constraints.zone", allow_empty=True)
    _labels(spec.constraints.labels, "spec.constraints.labels")
    _image(spec.image)
    limits(spec.limits, maxima)
    if spec.trust not in ("", "protected", "untrusted"):
        raise InvalidArgument(f"spec.trust: must be protected or untrusted, not {spec.trust[:40]!r}")


MAX_REQUEST_ID_BYTES = 256


def request_id(value: str) -> None:
    """An idempotency key: empty, or up to 256 bytes of printable characters."""
    if len(value.encode()) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgument(f"request_id: longer than {MAX_REQUEST_ID_BYTES} bytes")
    if not value.isprintable():
        raise InvalidArgument("request_id: must hold printable characters only")


def cache_scopes(cache: common_pb2.CacheSpec) -> None:
    """The scope fields hold key characters, and every key and prefix in every scope still fits a key's
    length (checked again once the coordinator has set the scopes from the caller's token)."""
    cache_key(cache.scope, "spec.cache.scope", allow_empty=True)
    for i, s in enumerate(cache.read_scopes):
        cache_key(s, f"spec.cache.read_scopes[{i}]")
    cache_key(cache.ref, "spec.cache.ref", allow_empty=True)
    for i, sh in enumerate(cache.shared):
        cache_key(sh.scope, f"spec.cache.shared[{i}].scope")
        cache_key(sh.prefix, f"spec.cache.shared[{i}].prefix")
    longest = max(
        len(s.encode()) for s in (cache.scope, *cache.read_scopes, *(sh.scope for sh in cache.shared))
    )
    for field, value in [("spec.cache.key", cache.key)] + [
        (f"spec.cache.restore_keys[{i}]", p) for i, p in enumerate(cache.restore_keys)
    ]:
        if value and len(value.encode()) + longest > MAX_KEY_BYTES:
            raise InvalidArgument(
                f"{field}: in its cache scope ({longest} bytes), longer than {MAX_KEY_BYTES} bytes"
            )


def _image(image: str) -> None:
    if not image:
        return
    if len(image.encode()) > MAX_IMAGE_BYTES:
        raise InvalidArgument(f"spec.image: longer than {MAX_IMAGE_BYTES} bytes")
    if not _IMAGE.fullmatch(image) or "//" in image or image.endswith((":", "/", "@")):
        raise InvalidArgument(f"spec.image: {image[:80]!r} is not an OCI image reference")


def limits(given: common_pb2.BuildLimits, maxima: LimitMaxima, where: str = "spec.limits") -> None:
    """Each limit is unset (0, empty) or within (0, its maximum]; network is empty, default or none."""
    _finite(given.cpus, f"{where}.cpus")
    for name, value, most in (
        ("cpus", given.cpus, maxima.cpus),
        ("memory_bytes", given.memory_bytes, maxima.memory_bytes),
        ("pids", given.pids, maxima.pids),
        ("output_bytes", given.output_bytes, maxima.output_bytes),
        ("disk_bytes", given.disk_bytes, maxima.disk_bytes),
    ):
        if value < 0:
            raise InvalidArgument(f"{where}.{name}: must not be negative, got {value}")
        if value > most:
            raise InvalidArgument(f"{where}.{name}: {value:g} exceeds the maximum of {most:g}")
    if given.network not in ("", "default", "none"):
        raise InvalidArgument(f"{where}.network: must be default or none, not {given.network[:40]!r}")


def _command(command, *, need_command: bool) -> int:
    """Check the argv; returns the bytes it takes in the exec area."""
    if need_command and not command:
        raise InvalidArgument("spec.command: must not be empty")
    if len(command) > MAX_ARGV:
        raise InvalidArgument(f"spec.command: more than {MAX_ARGV} arguments")
    if command and not command[0]:
        raise InvalidArgument("spec.command[0]: must not be empty")
    exec_bytes = 0
    for i, arg in enumerate(command):
        if "\x00" in arg:
            raise InvalidArgument(f"spec.command[{i}]: contains a NUL byte")
        size = len(arg.encode())
        if size > MAX_ARG_BYTES:
            raise InvalidArgument(f"spec.command[{i}]: {size} bytes, more than {MAX_ARG_BYTES}")
        exec_bytes += size + 1
    return exec_bytes


def _timeout(timeout_s: float, max_timeout_s: float) -> None:
    _finite(timeout_s, "spec.timeout_s")
    if timeout_s < 0:
        raise InvalidArgument(f"spec.timeout_s: must not be negative, got {timeout_s}")
    if timeout_s > max_timeout_s:
        raise InvalidArgument(f"spec.timeout_s: {timeout_s} exceeds the limit of {max_timeout_s} s")


def _env(env) -> int:
    """Check the environment; returns the bytes it takes in the exec area."""
    if len(env) > MAX_ENV:
        raise InvalidArgument(f"spec.env: more than {MAX_ENV} variables")
    exec_bytes = 0
    for name, value in env.items():
        if not name or "=" in name or any(unicodedata.category(ch) in _INVISIBLE for ch in name):
            raise InvalidArgument(f"spec.env: invalid variable name {_show(name)}")
        if "\x00" in value:
            raise InvalidArgument(f"spec.env[{_show(name)}]: the value contains a NUL byte")
        size = len(name.encode()) + 1 + len(value.encode())
        if size > MAX_ARG_BYTES:
            raise InvalidArgument(f"spec.env[{_show(name)}]: {size} bytes, more than {MAX_ARG_BYTES}")
        exec_bytes += size + 1
    return exec_bytes


def _cache(cache: common_pb2.CacheSpec) -> None:
    cache_key(cache.key, "spec.cache.key", allow_empty=True)
    if len(cache.restore_keys) > MAX_KEYS:
        raise InvalidArgument(f"spec.cache.restore_keys: more than {MAX_KEYS} prefixes")
    for i, prefix in enumerate(cache.restore_keys):
        cache_key(prefix, f"spec.cache.restore_keys[{i}]")
    if (cache.key or cache.restore_keys) and not cache.paths:
        raise InvalidArgument("spec.cache.paths: a cache key needs at least one path to cache")
    if len(cache.paths) > MAX_KEYS:
        raise InvalidArgument(f"spec.cache.paths: more than {MAX_KEYS} paths")
    roots: list[str] = []
    for i, path in enumerate(cache.paths):
        root = relative_path(path, f"spec.cache.paths[{i}]", allow_trailing_slash=True)
        for j, other in enumerate(roots):
            if root == other or root.startswith(other + "/") or other.startswith(root + "/"):
                raise InvalidArgument(
                    f"spec.cache.paths[{i}]: {_show(path)} overlaps spec.cache.paths[{j}] "
                    f"{_show(cache.paths[j])}"
                )
        roots.append(root)


def _files(files, max_files_bytes: int) -> None:
    if len(files) > MAX_FILES:
        raise InvalidArgument(f"spec.files: more than {MAX_FILES} files")
    total = 0
    names = set(files)
    for name, data in files.items():
        field = f"spec.files[{_show(name)}]"
        relative_path(name, field)
        parent = name.rpartition("/")[0]
        while parent:
            if parent in names:
                raise InvalidArgument(f"{field}: its directory {_show(parent)} is also an input file")
            parent = parent.rpartition("/")[0]
        total += len(data)
    if total > max_files_bytes:
        raise InvalidArgument(f"spec.files: {total} bytes in total, more than {max_files_bytes}")


def _labels(labels, field: str) -> None:
    if len(labels) > MAX_ENV:
        raise InvalidArgument(f"{field}: more than {MAX_ENV} labels")
    for k, v in labels.items():
        cache_key(k, f"{field} key")
        cache_key(v, f"{field}[{_show(k)}]", allow_empty=True)


def registration(req: agent_pb2.RegisterRequest) -> None:
    if not req.node.strip():
        raise InvalidArgument("node: must not be empty")
    cache_key(req.node, "node")
    cache_key(req.zone, "zone", allow_empty=True)
    if req.slots <= 0:
        raise InvalidArgument(f"slots: must be positive, got {req.slots}")
    if req.disk_capacity_bytes < 0:
        raise InvalidArgument("disk_capacity_bytes: must not be negative")
    _labels(req.labels, "labels")
    _finite(req.maxima.cpus, "maxima.cpus")
    for name in ("cpus", "memory_bytes", "pids", "output_bytes", "disk_bytes"):
        if getattr(req.maxima, name) < 0:
            raise InvalidArgument(f"maxima.{name}: must not be negative")
