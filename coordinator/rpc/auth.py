"""Who is calling, and may they: TLS credentials, bearer tokens with roles, and the check on every RPC.

Identities:

* **agents** prove who they are with a client certificate (mutual TLS on the agent port); the
  certificate's common name is the node name they may register and stream as;
* **CI systems and operators** send ``authorization: Bearer <token>``; the tokens file gives each
  token a name and a role.

Roles: ``ci`` may submit, place, and read or cancel its own builds; ``operator`` may also read every
build, query the inventory, export the build history (capacity planning) and run rollouts; ``agent``
may only register and hold a stream.
Health checks and reflection stay open (Kubernetes probes cannot send credentials).

An *open* coordinator (no tokens, no TLS) lets every caller do everything. It is only allowed on
loopback unless explicitly told otherwise, and says so when it starts.

The tokens file is JSON, version 1 (docs/security.md, "The tokens file")::

    {"version": 1, "tokens": [{"name": "github-main", "role": "ci", "sha256": "<hex>",
                               "tenant": "web", "trust": "protected", "max_priority": 10,
                               "zones": ["zone-a"]}, ...]}

Only SHA-256 digests of tokens are stored (``stoker token`` prints a new token and its line). A ci token
says who its builds are for: ``tenant`` (default: the token's name) and ``trust`` (``protected``, the
default, or ``untrusted`` for pull requests); ``max_priority`` caps a build's priority, ``zones`` the
zones it may pin and ``labels`` the node labels every build requires (its node pool). The coordinator
fills a build's tenant and trust from them (``bind_spec``). Unknown fields, roles or versions are
refused, naming the entry, so that a typo never loosens a token.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from stoker.common import scopes
from stoker.coordinator.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from stoker.coordinator.rpc.status import status_for
from stoker.v1 import common_pb2

log = logging.getLogger(__name__)

_BUILDS = "/stoker.v1.Builds/"
_CI_METHODS = {
    _BUILDS + m
    for m in (
        "SubmitBuild",
        "WatchBuild",
        "GetBuild",
        "CancelBuild",
        "PlaceBuild",
        "ReleasePlacement",
        "ListBuilds",
    )
}
_OPERATOR_METHODS = _CI_METHODS | {
    *("/stoker.v1.Inventory/" + m for m in ("QueryInventory", "Prewarm", "ForgetNode")),
    "/stoker.v1.History/ExportHistory",
}
_OPERATOR_PREFIXES = ("/stoker.v1.Rollouts/",)
_AGENT_METHODS = {"/stoker.v1.AgentGateway/Register", "/stoker.v1.AgentGateway/Connect"}
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


TRUST_LEVELS = ("protected", "untrusted")
TOKENS_FILE_VERSION = 1
_CI_FIELDS = ("tenant", "trust", "max_priority", "max_slots", "zones", "labels")
_TOKEN_FIELDS = frozenset({"name", "role", "sha256", *_CI_FIELDS})


@dataclass(frozen=True)
class Identity:
    name: str
    role: str  # "ci", "operator", "agent", or "open" (no authentication configured)
    tenant: str = ""
    """Whom a ci token's builds are for (its builds' tenant)."""
    trust: str = ""
    """A ci token's trust level: ``protected`` or ``untrusted``."""
    max_priority: int | None = None
    """The highest priority a ci token's builds run at (None: no cap)."""
    zones: tuple[str, ...] = ()
    """The zones a ci token's builds may pin (empty: any)."""
    labels: tuple[tuple[str, str], ...] = ()
    """Node labels every build of a ci token requires (its node pool: pull requests on their own nodes)."""
    shares: tuple[tuple[str, str], ...] = ()
    """(tenant, prefix) of each prefix another tenant shares with this ci token's tenant, read-only (the
    tokens file's ``shares``)."""
    max_slots: int | None = None
    """A ci token's share of the fleet: the most slots its builds and leases hold at once (None: no cap);
    past it they wait in the queue, so one team's burst cannot take every node."""

    @property
    def sees_everything(self) -> bool:
        return self.role in ("operator", "open")


OPEN = Identity("", "open")
current: contextvars.ContextVar[Identity] = contextvars.ContextVar("stoker_identity", default=OPEN)
"""The identity of the RPC being served (set by the interceptor, read by servicers)."""


def allowed(role: str, method: str) -> bool:
    if role == "open":
        return True
    if role == "agent":
        return method in _AGENT_METHODS
    if role == "ci":
        return method in _CI_METHODS
    if role == "operator":
        return method in _OPERATOR_METHODS or method.startswith(_OPERATOR_PREFIXES)
    return False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(
    name: str,
    role: str,
    *,
    tenant: str = "",
    trust: str = "protected",
    max_priority: int | None = None,
    zones: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    max_slots: int | None = None,
) -> tuple[str, dict]:
    """A fresh random token and the line for the tokens file that accepts it."""
    if role not in ("ci", "operator"):
        raise InvalidArgument(f"role: {role!r} is not ci or operator (agents use certificates)")
    token = "stk_" + secrets.token_urlsafe(32)
    line: dict = {"name": name, "role": role, "sha256": hash_token(token)}
    if role == "ci":
        line.update(tenant=tenant or name, trust=trust)
        if max_priority is not None:
            line["max_priority"] = max_priority
        if max_slots is not None:
            line["max_slots"] = max_slots
        if zones:
            line["zones"] = list(zones)
        if labels:
            line["labels"] = dict(labels)
    _identity(line, "the new token")  # the same checks as the coordinator's
    return token, line


def load_tokens(path: str) -> dict[str, Identity]:
    """sha256 hex → identity, from the tokens file."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"security.tokens_file: cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens", []), list):
        raise InvalidArgument(f'security.tokens_file: {path} must hold {{"version": 1, "tokens": [...]}}')
    unknown = sorted(set(doc) - {"version", "tokens", "shares"})
    if unknown:
        raise InvalidArgument(f"security.tokens_file: unknown field {unknown[0]!r} at the top level")
    if doc.get("version", TOKENS_FILE_VERSION) != TOKENS_FILE_VERSION:
        raise InvalidArgument(
            f"security.tokens_file: version {doc.get('version')!r} is not one this coordinator reads "
            f"({TOKENS_FILE_VERSION})"
        )
    out: dict[str, Identity] = {}
    for i, item in enumerate(doc.get("tokens", [])):
        identity = _identity(item, f"security.tokens_file: tokens[{i}]")
        digest = str(item["sha256"]).lower()
        if digest in out:
            raise InvalidArgument(f"security.tokens_file: tokens[{i}] repeats the digest of another token")
        out[digest] = identity
    shares = _shares(doc.get("shares", []))
    return {
        digest: replace(
            identity,
            shares=tuple((owner, prefix) for owner, prefix, readers in shares if identity.tenant in readers),
        )
        if identity.role == "ci"
        else identity
        for digest, identity in out.items()
    }


def _shares(items: object) -> list[tuple[str, str, tuple[str, ...]]]:
    """The tokens file's ``shares``: ``[{"tenant": "platform", "prefix": "tools/", "with": ["web"]}]``
    — tenant ``platform`` lets ``web``'s builds read its protected entries under ``tools/`` (never
    write them). Checked field by field; default none."""
    where = "security.tokens_file: shares"
    if not isinstance(items, list):
        raise InvalidArgument(f"{where} must be a list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where}[{i}] must be an object")
        unknown = sorted(set(item) - {"tenant", "prefix", "with"})
        if unknown:
            raise InvalidArgument(f"{where}[{i}]: unknown field {unknown[0]!r}")
        tenant, prefix, readers = item.get("tenant"), item.get("prefix"), item.get("with")
        if not isinstance(tenant, str) or not tenant or "/" in tenant or tenant.startswith(scopes.MARK):
            raise InvalidArgument(f"{where}[{i}].tenant must name a tenant")
        if not isinstance(prefix, str) or not prefix or prefix.startswith(scopes.MARK):
            raise InvalidArgument(
                f"{where}[{i}].prefix must be a non-empty key prefix (sharing a whole scope is not allowed)"
            )
        if not isinstance(readers, list) or not readers or not all(isinstance(r, str) and r for r in readers):
            raise InvalidArgument(f"{where}[{i}].with must list the tenants it is shared with")
        out.append((tenant, prefix, tuple(readers)))
    return out


def _identity(item: object, where: str) -> Identity:
    """One tokens-file entry, checked field by field."""
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where}: must be an object")
    unknown = sorted(set(item) - _TOKEN_FIELDS)
    if unknown:
        raise InvalidArgument(
            f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_TOKEN_FIELDS))})"
        )
    name, role, digest = item.get("name"), item.get("role"), item.get("sha256", "")
    if not name or not isinstance(name, str) or role not in ("ci", "operator"):
        raise InvalidArgument(f"{where}: needs a name and a role of ci or operator")
    if (
        not isinstance(digest, str)
        or len(digest) != 64
        or any(c not in "0123456789abcdefABCDEF" for c in digest)
    ):
        raise InvalidArgument(f"{where} ({name}): sha256 must be 64 hex digits")
    if role == "operator":
        extra = sorted(set(item) & set(_CI_FIELDS))
        if extra:
            raise InvalidArgument(f"{where} ({name}): {extra[0]} applies to ci tokens only")
        return Identity(name, role)
    tenant, trust = item.get("tenant") or name, item.get("trust", "protected")
    if not isinstance(tenant, str):
        raise InvalidArgument(f"{where} ({name}): tenant must be a string")
    if trust not in TRUST_LEVELS:
        raise InvalidArgument(f"{where} ({name}): trust must be protected or untrusted, not {trust!r}")
    max_priority = item.get("max_priority")
    if max_priority is not None and (isinstance(max_priority, bool) or not isinstance(max_priority, int)):
        raise InvalidArgument(f"{where} ({name}): max_priority must be an integer")
    max_slots = item.get("max_slots")
    if max_slots is not None and (
        isinstance(max_slots, bool) or not isinstance(max_slots, int) or max_slots < 1
    ):
        raise InvalidArgument(f"{where} ({name}): max_slots must be a whole number of slots, at least 1")
    zones = item.get("zones", [])
    if not isinstance(zones, list) or not all(isinstance(z, str) and z for z in zones):
        raise InvalidArgument(f"{where} ({name}): zones must be a list of zone names")
    labels = item.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidArgument(f"{where} ({name}): labels must map label names to values")
    return Identity(
        name,
        role,
        tenant=tenant,
        trust=trust,
        max_priority=max_priority,
        zones=tuple(zones),
        labels=tuple(sorted(labels.items())),
        max_slots=max_slots,
    )


def bind_spec(spec: common_pb2.BuildSpec, identity: Identity) -> common_pb2.BuildSpec:
    """The spec as a ci token may submit it: its tenant and trust are the token's (a spec that says
    otherwise is refused, naming the field), its priority at most the token's cap, a pinned zone one the
    token may pin. Operators and an open coordinator submit specs as they are."""
    if identity.role != "ci":
        return spec
    if spec.tenant and spec.tenant != identity.tenant:
        raise PermissionDenied(f"spec.tenant: this token submits for tenant {identity.tenant!r} only")
    if spec.trust and spec.trust != identity.trust:
        raise PermissionDenied(f"spec.trust: this token's builds are {identity.trust}")
    zone = spec.constraints.zone
    if zone and identity.zones and zone not in identity.zones:
        raise PermissionDenied(f"spec.constraints.zone: this token may pin {', '.join(identity.zones)} only")
    for label, value in identity.labels:
        asked = spec.constraints.labels.get(label)
        if asked is not None and asked != value:
            raise PermissionDenied(
                f"spec.constraints.labels[{label}]: this token's builds run on {label}={value}"
            )
    if spec.cache.scope or spec.cache.read_scopes or spec.cache.shared:
        raise PermissionDenied("spec.cache.scope: the coordinator sets a build's cache scopes from its token")
    out = common_pb2.BuildSpec()
    out.CopyFrom(spec)
    out.tenant, out.trust = identity.tenant, identity.trust
    out.constraints.labels.update(dict(identity.labels))
    # Cache scopes (common/scopes.py): protected builds read and write their tenant's protected scope;
    # untrusted ones write their own (per ref) and read it, then the protected one, never writing it.
    if identity.trust == "protected":
        out.cache.scope = scopes.protected(identity.tenant)
    else:
        out.cache.scope = scopes.untrusted(identity.tenant, spec.cache.ref)
        out.cache.read_scopes.append(scopes.protected(identity.tenant))
    # Prefixes other tenants share with this one: read-only, their protected entries under the prefix.
    for owner, prefix in identity.shares:
        out.cache.shared.add(scope=scopes.protected(owner), prefix=prefix)
    if identity.max_priority is not None and out.priority > identity.max_priority:
        out.priority = identity.max_priority
    return out


class Authenticator:
    def __init__(self, tokens: dict[str, Identity], *, open_access: bool) -> None:
        self._tokens = tokens
        self.open_access = open_access

    def slot_caps(self) -> dict[str, int]:
        """Principal name → the most slots its builds may hold (the smallest cap of its tokens)."""
        caps: dict[str, int] = {}
        for identity in self._tokens.values():
            if identity.max_slots is not None:
                caps[identity.name] = min(identity.max_slots, caps.get(identity.name, identity.max_slots))
        return caps

    def identify(self, method: str, metadata, auth_context: dict) -> Identity:
        header = next((v for k, v in metadata if k == "authorization"), None)
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization header must be 'Bearer <token>'")
            digest = hash_token(token.strip())
            for known, identity in self._tokens.items():
                if hmac.compare_digest(known, digest):
                    return identity
            raise Unauthenticated("unknown token")
        names = auth_context.get("x509_common_name") or []
        if names:
            return Identity(names[0].decode(errors="replace"), "agent")
        if self.open_access:
            return OPEN
        raise Unauthenticated(
            f"{method} needs credentials: a bearer token (STOKER_TOKEN) or, for agents, a client certificate"
        )

    def check(self, method: str, metadata, auth_context: dict) -> Identity:
        identity = self.identify(method, metadata, auth_context)
        if not allowed(identity.role, method):
            raise PermissionDenied(f"{identity.role} {identity.name!r} may not call {method}")
        return identity


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every RPC before its handler runs; refused calls are logged and end with the status the
    table in ``status.py`` gives their error (UNAUTHENTICATED, PERMISSION_DENIED; INVALID_ARGUMENT for a
    request whose bytes are not a message)."""

    def __init__(
        self, authenticator: Authenticator, observe: Callable[[str, str, float], None] | None = None
    ) -> None:
        """``observe(method, status code name, seconds)`` is called as each unary RPC ends."""
        self._auth = authenticator
        self._observe = observe

    async def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        if handler.unary_unary:
            return self._unary_unary(handler, method)
        if handler.unary_stream:
            return self._unary_stream(handler, method)
        if handler.stream_stream:
            return self._stream_stream(handler, method)
        return handler  # stream-unary: stoker has none

    async def _admit(self, method: str, context, request=None) -> None:
        """Check the caller and the request's bytes; on success the identity is in ``current`` for the
        servicer. A refusal aborts the call with its status from the table (auth refusals logged as
        warnings)."""
        try:
            identity = self._auth.check(method, context.invocation_metadata() or (), context.auth_context())
            if isinstance(request, _Undecodable):
                raise InvalidArgument(request.message)
        except (Unauthenticated, PermissionDenied) as exc:
            log.warning("refused %s from %s: %s", method, context.peer(), exc)
            await context.abort(status_for(exc), str(exc))
        except InvalidArgument as exc:
            log.info("refused %s from %s: %s", method, context.peer(), exc)
            await context.abort(status_for(exc), str(exc))
        current.set(identity)

    def _unary_unary(self, handler, method: str):
        inner = handler.unary_unary
        observe = self._observe
        short = method.rsplit("/", 1)[-1]

        async def unary_unary(request, context):
            started = time.perf_counter()
            code = "OK"
            try:
                await self._admit(method, context, request)
                return await inner(request, context)
            except grpc.aio.AbortError:
                code = _code_name(context.code())
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "UNKNOWN"
                raise
            finally:
                if observe is not None:
                    observe(short, code, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
        )

    def _unary_stream(self, handler, method: str):
        inner = handler.unary_stream

        async def unary_stream(request, context):
            await self._admit(method, context, request)
            async for item in inner(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, _tolerant(handler.request_deserializer), handler.response_serializer
        )

    def _stream_stream(self, handler, method: str):
        inner = handler.stream_stream

        async def stream_stream(request_iterator, context):
            await self._admit(method, context)
            async for item in inner(request_iterator, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )


def _code_name(code) -> str:
    """The name of an aborted call's status (``context.code()`` is a StatusCode or its integer)."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    by_value = {c.value[0]: c.name for c in grpc.StatusCode}
    return by_value.get(code, "UNKNOWN")


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message, so the handler can answer
    INVALID_ARGUMENT (gRPC itself would answer UNKNOWN)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(deserializer):
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(f"the request is not a valid message: {type(exc).__name__}")

    return deserialize


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS for a port; with ``client_ca`` the port requires and verifies client certificates."""
    pair = [(Path(key).read_bytes(), Path(cert).read_bytes())]
    if client_ca:
        return grpc.ssl_server_credentials(
            pair, root_certificates=Path(client_ca).read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)
