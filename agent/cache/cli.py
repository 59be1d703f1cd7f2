"""``stoker cache save|restore|ls|verify|gc``: the node's cache by hand, for an operator; ``gc --blobs-only``
also off the nodes, as a scheduled job that keeps the blob store in bounds.

Settings come from :func:`stoker.agent.config.load` (``--config FILE`` and ``STOKER_AGENT_CACHE_*``), so the
command sees the same store and blob store as the agent on that node. The store admits one process at a
time: stop the agent (or point ``--dir`` elsewhere) before changing a node's store by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from stoker.agent import config as agent_config
from stoker.agent.cache.api import CacheError, EntryWriter, Progress
from stoker.agent.cache.blob_budgets import TenantBudgets, enforce_tenant_budgets
from stoker.agent.cache.blobs import BlobStore, encode_key, open_blob_store
from stoker.agent.cache.content_cache import ContentCache
from stoker.agent.cache.factory import open_cache
from stoker.agent.cache.maintenance import gc_blobs
from stoker.common.units import size


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stoker cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="agent settings file (TOML or JSON)")
    p.add_argument("--dir", help="override cache.dir")
    p.add_argument("--blobs", help="override cache.blobs (file:///path or s3://bucket/prefix)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="snapshot paths of a workspace as an entry")
    s.add_argument("key")
    s.add_argument("--workspace", "-w", default=".", help="workspace directory (default: .)")
    s.add_argument("--path", "-p", action="append", required=True, help="path inside the workspace (repeat)")
    r = sub.add_parser("restore", help="materialize an entry into a workspace")
    r.add_argument("key")
    r.add_argument("--restore-key", "-r", action="append", default=[], help="fallback key prefix (repeat)")
    r.add_argument("--workspace", "-w", default=".")
    r.add_argument("--path", "-p", action="append", required=True)
    ls = sub.add_parser(
        "ls", help="list entries under PREFIX with who wrote them: the node's store, or the blob store's keys"
    )
    ls.add_argument("prefix", nargs="?", default="", help="only keys starting with this (scopes included)")
    ls.add_argument("--remote", action="store_true", help="list the blob store's keys, not the node's store")
    v = sub.add_parser("verify", help="check every byte of local entries against their digests")
    v.add_argument("keys", nargs="*", help="entries to check (default: all)")
    g = sub.add_parser("gc", help="evict down to the budget; optionally delete unreferenced blobs")
    g.add_argument(
        "--blobs-grace-hours",
        type=float,
        default=None,
        help="also delete packs/manifests no key uses, older than this many hours",
    )
    g.add_argument(
        "--tenant-budget",
        action="append",
        default=[],
        type=_tenant_budget,
        metavar="[TENANT=]SIZE",
        help="cap the bytes a tenant's entries hold in the blob store, e.g. 50G (every tenant) or web=200G "
        "(repeat); past it the tenant's own oldest entries go, its pull requests' first",
    )
    g.add_argument(
        "--blobs-only",
        action="store_true",
        help="work on the blob store alone (no node store is opened): for a scheduled job off the nodes",
    )
    g.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    return p


def _tenant_budget(text: str) -> tuple[str, int]:
    tenant, _, amount = text.rpartition("=")
    return tenant, size(amount)


def _print_progress(p: Progress) -> None:
    print(
        f"\r{p.files_done}/{p.files_total} files  {p.bytes_done / 1e6:.1f}/{p.bytes_total / 1e6:.1f} MB  "
        f"{p.bytes_per_s / 1e6:.0f} MB/s",
        end="",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = agent_config.load(file=args.config).cache
    if args.dir:
        settings = replace(settings, dir=args.dir)
    if args.blobs:
        settings = replace(settings, blobs=args.blobs)
    if args.command == "gc" and args.blobs_only:
        if args.blobs_grace_hours is None:
            print(
                "stoker cache gc --blobs-only: say --blobs-grace-hours H "
                "(how old an unreferenced object must be to go)",
                file=sys.stderr,
            )
            return 2
        try:
            out = _gc_blobs(
                open_blob_store(settings.blobs, settings.s3_endpoint_url, settings.s3_region), args
            )
        except CacheError as exc:
            print(f"stoker cache gc: {exc}", file=sys.stderr)
            return 1
        _print(args, out)
        return 0
    cache = open_cache(settings)
    try:
        cache.open()
        out = _run(cache, args)
    except CacheError as exc:
        print(f"stoker cache {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        close = getattr(cache, "close", None)
        if close:
            close()
    _print(args, out)
    return 0 if not out.get("failed") else 1


def _print(args, out: dict) -> None:
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        _print_text(args.command, out)


def _gc_blobs(blobs: BlobStore, args) -> dict:
    """The blob store's part of ``gc``: tenants' caps first, then every object no key uses any more."""
    now = time.time()
    grace_s = args.blobs_grace_hours * 3600
    per_tenant = dict(args.tenant_budget)
    budgets = TenantBudgets(default=per_tenant.pop("", 0), per_tenant=per_tenant)
    tenants = enforce_tenant_budgets(blobs, budgets, grace_s=grace_s, now=now, dry_run=args.dry_run)
    gone = {f"keys/{encode_key(key)}" for t in tenants for key in t.evicted}
    n, size_deleted = gc_blobs(blobs, grace_s=grace_s, now=now, dry_run=args.dry_run, gone=gone)
    out: dict = {"blobs_deleted": n, "blobs_deleted_bytes": size_deleted}
    if budgets:
        out["tenants"] = [t.to_dict() for t in tenants]
    return out


def _run(cache, args) -> dict:
    progress = _print_progress if sys.stderr.isatty() else None
    if args.command == "save":
        result = cache.save(args.key, Path(args.workspace), args.path, progress)
        return asdict(result)
    if args.command == "restore":
        result = cache.restore(args.key, args.restore_key, Path(args.workspace), args.path, progress)
        return asdict(result)
    if args.command == "ls" and args.remote:
        assert isinstance(cache, ContentCache)
        return {"remote": True, "entries": cache.list_keys(args.prefix)}
    if args.command == "ls":
        generation, entries = cache.inventory()
        used, free = cache.disk_usage()
        return {
            "generation": generation,
            "used_bytes": used,
            "free_bytes": free,
            "entries": [
                {**asdict(e), "writer": e.writer.to_dict() if e.writer else {}}
                for e in entries
                if e.key.startswith(args.prefix)
            ],
        }
    if args.command == "verify":
        assert isinstance(cache, ContentCache)
        keys = args.keys or [e.key for e in cache.inventory()[1]]
        checked, failed = {}, {}
        for key in keys:
            try:
                checked[key] = cache.verify(key)
            except CacheError as exc:
                failed[key] = str(exc)
        return {"checked": checked, "failed": failed}
    if args.command == "gc":
        assert isinstance(cache, ContentCache)
        before = cache.evicted_bytes_total
        if not args.dry_run:
            cache.store.make_room(0, what="gc")
        out: dict = {"evicted_bytes": cache.evicted_bytes_total - before}
        if args.blobs_grace_hours is not None:
            out.update(_gc_blobs(cache.blobs, args))
        elif args.tenant_budget:
            raise CacheError("--tenant-budget applies to the blob store: say --blobs-grace-hours H too")
        return out
    raise AssertionError(args.command)


def _print_text(command: str, out: dict) -> None:
    if command == "ls":
        if not out.get("remote"):
            print(
                f"generation {out['generation']}  used {out['used_bytes'] / 1e6:.1f} MB  "
                f"free {out['free_bytes'] / 1e6:.1f} MB"
            )
        print("KEY\tSIZE\tWRITER\tTRUST\tCREATED")
        for e in out["entries"]:
            writer = EntryWriter.from_dict(e["writer"])
            size = f"{e['bytes'] / 1e6:.1f} MB" if e.get("bytes") is not None else "-"
            print(
                f"{e['key']}\t{size}\t{writer.describe() if writer else '-'}\t"
                f"{(writer.trust if writer else '') or '-'}\t"
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['created']))}"
            )
    elif command == "verify":
        for key, n in out["checked"].items():
            print(f"ok\t{key}\t{n} files")
        for key, err in out["failed"].items():
            print(f"FAILED\t{key}\t{err}")
    else:
        if sys.stderr.isatty():
            print(file=sys.stderr)
        for k, v in out.items():
            if k != "tenants":
                print(f"{k}: {v}")
        if out.get("tenants"):
            print("TENANT\tCAP\tBEFORE\tAFTER\tEVICTED\tOVER CAP, TOO YOUNG")
        for t in out.get("tenants", []):
            print(
                f"{t['tenant']}\t{t['budget_bytes'] / 1e6:.1f} MB\t{t['bytes_before'] / 1e6:.1f} MB\t"
                f"{t['bytes_after'] / 1e6:.1f} MB\t{len(t['evicted'])}\t{t['over_budget_young_entries']}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
