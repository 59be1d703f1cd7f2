"""Per-tenant budgets in the blob store (issue 16, item 3): a cap on the bytes each tenant's entries hold
there, enforced by ``stoker cache gc``. A tenant past its cap loses its own entries, never another
tenant's: its untrusted entries (pull requests) first, least recently saved first, as GitHub Actions
evicts a repository's caches past its 10 GB; then its protected entries (its default branch's), but only as
far as those alone exceed the cap, so a pull request's saves never push out the entries main warms it from.

A tenant's bytes are its manifests and the frames they reference, each frame counted once per tenant (two
of its entries sharing a package pay for it once; an entry of another tenant sharing the frame does not
change this tenant's figure). Evicting an entry deletes its key pointer; the frames and manifest it alone
used are deleted by the same GC's sweep of unreferenced objects (``maintenance.gc_blobs``). Entries saved
within the grace period are never evicted (a build just saved them and the next one is about to read
them): a tenant whose remaining entries are all that young stays over its cap until the next run, and the
result says so. Keys without a scope (a coordinator without tokens) belong to no tenant and have no cap.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError
from stoker.agent.cache.blobs import BlobStore, decode_key
from stoker.common import scopes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantBudgets:
    """The cap per tenant: ``per_tenant`` where it names the tenant, else ``default`` (0: no cap)."""

    default: int = 0
    per_tenant: Mapping[str, int] = field(default_factory=dict)

    def of(self, tenant: str) -> int:
        return self.per_tenant.get(tenant, self.default)

    def __bool__(self) -> bool:
        return bool(self.default or any(self.per_tenant.values()))


@dataclass
class TenantUsage:
    """One tenant's bytes in the blob store, before and after its cap was applied."""

    tenant: str
    budget: int
    bytes_before: int
    bytes_after: int
    entries: int
    evicted: list[str] = field(default_factory=list)
    """Keys whose pointers were deleted (would be, in a dry run), in the order they went."""
    kept_young: int = 0
    """Entries left although the tenant is still over its cap: saved within the grace period."""

    def to_dict(self) -> dict:
        return {
            "tenant": self.tenant,
            "budget_bytes": self.budget,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "entries": self.entries,
            "evicted": self.evicted,
            "over_budget_young_entries": self.kept_young,
        }


@dataclass
class _Entry:
    key: str
    pointer: str
    """The pointer object's name (``keys/<encoded key>``)."""
    saved: float
    untrusted: bool
    manifest: str
    manifest_bytes: int
    frames: frozenset[tuple[str, int, int]]
    """(pack, offset, length) of every frame the manifest references."""


def enforce_tenant_budgets(
    blobs: BlobStore, budgets: TenantBudgets, *, grace_s: float, now: float, dry_run: bool = False
) -> list[TenantUsage]:
    """Delete the key pointers of each capped tenant's entries past its cap (module docstring) and return
    every capped tenant's usage, largest first. Unreadable pointers or manifests are skipped with a
    warning (``gc_blobs`` reports them too)."""
    if not budgets:
        return []
    manifest_sizes = {o.name.removeprefix("manifests/"): o.size for o in blobs.list("manifests/")}
    by_tenant: dict[str, list[_Entry]] = {}
    for obj in blobs.list("keys/"):
        key = decode_key(obj.name.removeprefix("keys/"))
        tenant = scopes.tenant_of(key)
        if not tenant or not budgets.of(tenant):
            continue
        try:
            name = str(json.loads(blobs.get(obj.name))["manifest"])
            manifest = mf.parse(blobs.get(f"manifests/{name}"), where=obj.name)
        except (CacheError, ValueError, KeyError, TypeError) as exc:
            log.warning("tenant budgets: skipping %s: %s", obj.name, exc)
            continue
        by_tenant.setdefault(tenant, []).append(
            _Entry(
                key=key,
                pointer=obj.name,
                saved=obj.modified,
                untrusted=key.startswith(scopes.untrusted(tenant, "")),
                manifest=name,
                manifest_bytes=manifest_sizes.get(name, 0),
                frames=frozenset((f.pack, f.offset, f.length) for f in manifest.frames),
            )
        )
    usages = [
        _apply_cap(blobs, tenant, entries, budgets.of(tenant), grace_s=grace_s, now=now, dry_run=dry_run)
        for tenant, entries in by_tenant.items()
    ]
    return sorted(usages, key=lambda u: -u.bytes_before)


def _apply_cap(
    blobs: BlobStore,
    tenant: str,
    entries: list[_Entry],
    budget: int,
    *,
    grace_s: float,
    now: float,
    dry_run: bool,
) -> TenantUsage:
    every = _Bytes(entries)
    protected = _Bytes([e for e in entries if not e.untrusted])
    usage = TenantUsage(tenant, budget, bytes_before=every.used, bytes_after=every.used, entries=len(entries))
    # Pull requests' entries go first, the least recently saved first. The tenant's protected entries go
    # only as far as they alone exceed the cap: a pull request's saves never evict its default branch's.
    untrusted_first = sorted((e for e in entries if e.untrusted), key=lambda e: (e.saved, e.key))
    protected_next = sorted((e for e in entries if not e.untrusted), key=lambda e: (e.saved, e.key))
    for group, over in ((untrusted_first, every), (protected_next, protected)):
        for e in group:
            if over.used <= budget:
                break
            if now - e.saved < grace_s:
                usage.kept_young += 1
                continue
            if not dry_run:
                blobs.delete(e.pointer)
            usage.evicted.append(e.key)
            every.drop(e)
            if not e.untrusted:
                protected.drop(e)
    usage.bytes_after = every.used
    if usage.evicted:
        log.info(
            "tenant %s held %d bytes in the blob store (cap %d): evicted %d of its entries, %d bytes left",
            tenant,
            usage.bytes_before,
            budget,
            len(usage.evicted),
            usage.bytes_after,
        )
    return usage


class _Bytes:
    """The bytes a set of entries holds, each frame and manifest counted once, as entries are dropped."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._frames: Counter[tuple[str, int, int]] = Counter()
        self._manifests: Counter[str] = Counter()
        sizes: dict[str, int] = {}
        for e in entries:
            self._frames.update(e.frames)
            self._manifests[e.manifest] += 1
            sizes[e.manifest] = e.manifest_bytes
        self.used = sum(length for _, _, length in self._frames) + sum(sizes.values())

    def drop(self, e: _Entry) -> None:
        for frame in e.frames:
            self._frames[frame] -= 1
            if self._frames[frame] == 0:
                self.used -= frame[2]
        self._manifests[e.manifest] -= 1
        if self._manifests[e.manifest] == 0:
            self.used -= e.manifest_bytes
