"""``stoker lease restore`` / ``stoker lease save``: a runner on a placed node uses the node's cache.

In placement-only mode (``stoker place``) the CI system runs the job itself on the node the lease names. The
job's runner asks the node's agent, on its unix socket (no network port), to restore the lease's cache into
its workspace before the job and to save it after: the agent does it with the scopes the coordinator bound
to the token that placed the build, and tells the coordinator what it did. The lease's secret
(``Placement.lease_secret``, the ``lease_secret`` field of ``stoker place --json``) authorizes the call; it is
read from ``STOKER_LEASE_SECRET`` (never a flag: a command line is visible to every process on the node).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

import grpc
from google.protobuf import json_format

from stoker.cli.output import EXIT_STOKER_ERROR
from stoker.v1 import common_pb2, local_cache_pb2, local_cache_pb2_grpc

DEFAULT_SOCKET = "/var/lib/stoker/run/cache.sock"
"""The agent's default cache.local_socket."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lease", help="placement only: restore and save a placed job's cache on its node")
    verbs = p.add_subparsers(dest="verb", required=True)
    for verb, func, helptext in (
        ("restore", restore, "restore the lease's cache into the workspace (before the job)"),
        ("save", save, "save the workspace's cache under the lease's key (after the job succeeded)"),
    ):
        v = verbs.add_parser(verb, help=helptext)
        v.add_argument("--lease", required=True, help="the lease id from stoker place")
        v.add_argument(
            "--workspace",
            required=True,
            help="the job's directory (beneath the agent's local_workspace_root)",
        )
        v.add_argument(
            "--socket",
            default=os.environ.get("STOKER_CACHE_SOCKET", DEFAULT_SOCKET),
            help=f"the agent's local socket (default $STOKER_CACHE_SOCKET, else {DEFAULT_SOCKET})",
        )
        v.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
        v.set_defaults(func=func)


def _call(args, method: str, verb: str):
    """The agent's answer, or None after one line on stderr saying what went wrong."""
    secret = os.environ.get("STOKER_LEASE_SECRET", "")
    if not secret:
        print(
            f"stoker lease {verb}: set STOKER_LEASE_SECRET to the lease's secret (lease_secret in the output "
            "of stoker place --json)",
            file=sys.stderr,
        )
        return None
    socket_path = args.socket
    try:
        is_socket = stat.S_ISSOCK(os.stat(socket_path).st_mode)
    except OSError:
        is_socket = False
    no_agent = (
        f"stoker lease {verb}: no stoker agent serves {socket_path} (is the agent running on this node, with "
        "its socket directory mounted here? --socket or STOKER_CACHE_SOCKET name another path)"
    )
    if not is_socket:
        print(no_agent, file=sys.stderr)
        return None
    request = local_cache_pb2.LocalCacheRequest(
        lease_id=args.lease, lease_secret=secret, workspace=os.path.abspath(args.workspace)
    )
    with grpc.insecure_channel(f"unix:{socket_path}") as ch:
        stub = local_cache_pb2_grpc.LocalCacheStub(ch)
        try:
            return getattr(stub, method)(request, timeout=3600)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                print(no_agent, file=sys.stderr)
            else:
                print(f"stoker lease {verb}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return None


def restore(args) -> int:
    reply = _call(args, "Restore", "restore")
    if reply is None:
        return EXIT_STOKER_ERROR
    if args.json:
        print(json_format.MessageToJson(reply, indent=None, preserving_proto_field_name=True))
        return 0
    for note in reply.notes:
        print(f"stoker: {note}", file=sys.stderr)
    figures = reply.cache
    warmth = common_pb2.Warmth.Name(figures.warmth).removeprefix("WARMTH_").lower()
    if figures.restored_key:
        print(
            f"restored {figures.restored_key} ({warmth}: {figures.files_restored} files, "
            f"{figures.bytes_restored} bytes, {figures.bytes_fetched} fetched) in {reply.seconds:.2f} s; "
            f"STOKER_CACHE_HIT={reply.cache_hit}"
        )
    else:
        print(f"nothing to restore; STOKER_CACHE_HIT={reply.cache_hit}")
    return 0


def save(args) -> int:
    reply = _call(args, "Save", "save")
    if reply is None:
        return EXIT_STOKER_ERROR
    if args.json:
        print(json_format.MessageToJson(reply, indent=None, preserving_proto_field_name=True))
    elif reply.saved:
        print(f"saved {reply.key} ({reply.bytes_uploaded} bytes uploaded) in {reply.seconds:.2f} s")
    else:
        print(f"not saved: {reply.message}")
    return 0
