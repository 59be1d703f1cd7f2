"""Cache scopes: where a build's cache keys live, derived by the coordinator from the caller's token and
applied the same way by the coordinator (placement) and the agent (restore, save).

A scope is a prefix put before every key: the *physical* key of ``web/node_modules-3f2a`` in the scope
``~web/protected/`` is ``~web/protected/web/node_modules-3f2a``, in the node's store and in the blob store
(``keys/~web/protected/...``, so a bucket policy can keep scopes apart too). A build writes only its own
scope; it reads its own scope, then its ``read_scopes`` in order: the exact key in each, then the restore
prefixes in each; then the prefixes other tenants share with its tenant (read-only, only keys under the
shared prefix). An empty scope leaves keys as they are (a coordinator without tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MARK = "~"
"""Every scope starts with it, so a scope never reads like a plain key."""


def protected(tenant: str) -> str:
    """The scope trusted CI of ``tenant`` writes (a default branch): the one its untrusted builds read."""
    return f"{MARK}{tenant}/protected/"


def untrusted(tenant: str, ref: str) -> str:
    """The scope an untrusted build of ``tenant`` writes: one per ref (a pull request), as GitHub Actions
    scopes a pull request's caches; without a ref, one for all of the tenant's untrusted builds."""
    return f"{MARK}{tenant}/untrusted/{ref}/" if ref else f"{MARK}{tenant}/untrusted/"


def tenant_of(key: str) -> str:
    """The tenant whose scope a stored key lies in; "" for a key without a scope."""
    if not key.startswith(MARK):
        return ""
    tenant, sep, _ = key[len(MARK) :].partition("/")
    return tenant if sep else ""


@dataclass(frozen=True)
class PhysicalKeys:
    """What a build's cache spec means in stored keys."""

    key: str
    """The key the build writes ("" for none)."""
    exact: tuple[str, ...]
    """Keys that count as an exact hit, in the order they are tried: ``key``, then the build's key in each
    scope it may read."""
    prefixes: tuple[str, ...]
    """Restore prefixes, in order: each of the build's prefixes in its own scope, then in each read scope."""


def physical(
    key: str,
    restore_keys: Sequence[str],
    scope: str,
    read_scopes: Sequence[str],
    shared: Sequence[tuple[str, str]] = (),
) -> PhysicalKeys:
    """``shared``: (scope, prefix) of each prefix another tenant shares with the build's tenant: the key and
    each restore key that lie under ``prefix`` are also tried in ``scope``, after the build's own scopes. A
    restore key shorter than the shared prefix is not (it would reach the sharing tenant's other keys)."""
    scopes = (scope, *read_scopes)
    return PhysicalKeys(
        key=scope + key if key else "",
        exact=tuple(s + key for s in scopes) + tuple(s + key for s, p in shared if key.startswith(p))
        if key
        else (),
        prefixes=tuple(s + p for s in scopes for p in restore_keys)
        + tuple(s + r for s, p in shared for r in restore_keys if r.startswith(p)),
    )
