"""``stoker``: one console script, a subcommand per role.

stoker demo                      the embedded default: everything on one machine
stoker coordinator               run the coordinator
stoker agent                     run a node agent
stoker build -- CMD...           run a build through the coordinator and stream it
stoker place / release           placement-only leases
stoker lease restore / save      on the placed node: the job's cache, through the node's agent
stoker get / cancel / watch      one build
stoker inventory                 what the fleet holds
stoker history export / fleet    the build history as a simulator trace, the fleet as a spec
stoker plan                      replay a history under other fleets (capacity planning)
stoker report dead-time          submission → first line of each build, by phase, and what would cut it
stoker rollout ...               start, watch, promote, abort, pause, resume rollouts
stoker token                     make a bearer token for CI or an operator
stoker cache ...                 operate the node's cache by hand
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from stoker.cli import client, history, lease, plan, report, rollouts
from stoker.common import logs, settings
from stoker.common.serving import ListenError


def _server_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML or JSON settings file")
    parser.add_argument("--listen", help="gRPC host:port (port 0 picks one)")
    parser.add_argument("--metrics-listen", help="metrics host:port (port 0 picks one)")
    parser.add_argument("--ready-file", help="write the chosen ports here as JSON once serving")
    parser.add_argument(
        "--log-format", choices=["text", "json", "auto"], help="auto: json in a cluster, text at a terminal"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    parser.add_argument("--help-settings", action="store_true", help="list every setting and its variable")


def _log_format(fmt: str, in_cluster: bool) -> str:
    if fmt != "auto":
        return fmt
    return "json" if in_cluster else "text"


def cmd_coordinator(args) -> int:
    from stoker.coordinator import config as cconfig
    from stoker.coordinator import server
    from stoker.coordinator.core.errors import InvalidArgument

    if args.help_settings:
        return _print_settings(cconfig.CoordinatorConfig, cconfig.ENV_PREFIX)
    config = cconfig.load(
        args.config,
        overrides={
            "server": {"listen": args.listen, "metrics_listen": args.metrics_listen},
            "state": {"path": args.state},
            "nodes": {"lease_ttl_s": args.lease_ttl},
            "log": {"format": args.log_format, "level": args.log_level},
        },
    )
    logs.setup(
        config.log.level, _log_format(config.log.format, settings.in_cluster()), component="coordinator"
    )
    try:
        asyncio.run(server.serve(config, args.ready_file))
    except (server.ConfigError, InvalidArgument) as exc:
        print(f"stoker coordinator: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_token(args) -> int:
    """A new bearer token. With --tokens-file, its line is added to that file and only the token is printed;
    without, the token goes to stderr and the line for the tokens file to stdout."""
    import json
    import os
    from pathlib import Path

    from stoker.coordinator.rpc.auth import new_token

    ci_only = (
        args.tenant or args.max_priority is not None or args.max_slots is not None or args.zone or args.label
    )
    if args.role == "operator" and ci_only:
        print(
            "stoker token: --tenant, --max-priority, --max-slots, --zone and --label apply to ci tokens only",
            file=sys.stderr,
        )
        return 2
    if any("=" not in item for item in args.label):
        print("stoker token: --label takes k=v", file=sys.stderr)
        return 2
    token, line = new_token(
        args.name,
        args.role,
        tenant=args.tenant,
        trust=args.trust,
        max_priority=args.max_priority,
        max_slots=args.max_slots,
        zones=tuple(args.zone),
        labels=dict(item.split("=", 1) for item in args.label),
    )
    if not args.tokens_file:
        print(f"token (give it to the CI system as STOKER_TOKEN; it is not stored): {token}", file=sys.stderr)
        print(json.dumps(line))
        return 0
    path = Path(args.tokens_file)
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"version": 1, "tokens": []}
    if any(t.get("name") == args.name for t in doc.get("tokens", [])):
        print(
            f"stoker token: {path} already has a token named {args.name!r}; remove it first to rotate",
            file=sys.stderr,
        )
        return 2
    doc.setdefault("tokens", []).append(line)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    print(token)
    return 0


def cmd_agent(args) -> int:
    from stoker.agent import config as aconfig
    from stoker.agent import main as agent_main
    from stoker.agent.cache.api import CacheError
    from stoker.agent.executors.base import ExecutorUnavailable

    if args.help_settings:
        return _print_settings(aconfig.AgentConfig, aconfig.ENV_PREFIX)
    labels = dict(item.split("=", 1) for item in args.label) if args.label else None
    config = aconfig.load(
        args.config,
        overrides={
            "node": {"name": args.name, "zone": args.zone, "slots": args.slots, "labels": labels},
            "coordinator": {"address": args.coordinator},
            "cache": {"dir": args.cache_dir, "blobs": args.blobs, "budget_bytes": args.budget_bytes},
            "build": {"work_dir": args.work_dir, "executor": args.executor},
            "server": {"listen": args.listen, "metrics_listen": args.metrics_listen},
            "log": {"format": args.log_format, "level": args.log_level},
        },
    )
    logs.setup(config.log.level, _log_format(config.log.format, aconfig.in_cluster()), component="agent")
    logs.bind(node=config.node.name or aconfig.default_node_name())
    try:
        asyncio.run(agent_main.serve(config, args.ready_file, drain_s=args.drain))
    except (CacheError, ExecutorUnavailable) as exc:
        print(f"stoker agent: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_settings(cls, prefix: str) -> int:
    for name, default, doc in settings.describe(cls, prefix):
        print(f"{name}  (default {default})\n    {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stoker", description="Keep a fleet of CI build nodes warm.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_service_commands(sub)
    _add_build_commands(sub)
    lease.add_commands(sub)
    rollouts.add_parser(sub)
    history.add_parser(sub)
    plan.add_parser(sub)
    report.add_parser(sub)
    # `stoker cache …` never reaches argparse (main() hands it to the cache's own parser, whose options
    # argparse would not pass through); the entry is here so that `stoker --help` lists it.
    sub.add_parser(
        "cache", help="operate this node's cache by hand (save, restore, ls, verify, gc)", add_help=False
    )
    return parser


def _add_service_commands(sub: argparse._SubParsersAction) -> None:
    """The long-running parts and their set-up: demo, coordinator, token, agent."""
    p = sub.add_parser("demo", help="run a coordinator, four agents and a series of builds on this machine")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--dir", help="keep everything under this directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="leave the demo directory behind")
    p.set_defaults(func=lambda a: __import__("stoker.demo.run", fromlist=["run"]).run(a))

    p = sub.add_parser("coordinator", help="run the coordinator")
    _server_common(p)
    p.add_argument("--state", help="SQLite state file")
    p.add_argument("--lease-ttl", type=float, help="seconds before a silent node counts as lost")
    p.set_defaults(func=cmd_coordinator)

    p = sub.add_parser(
        "token", help="make a bearer token for CI or an operator (prints the tokens-file line)"
    )
    p.add_argument("--name", required=True, help="who the token is for (for example github-ci)")
    p.add_argument("--role", required=True, choices=["ci", "operator"])
    p.add_argument("--tenant", default="", help="ci: whom its builds are for (default: the token's name)")
    p.add_argument(
        "--trust",
        choices=["protected", "untrusted"],
        default="protected",
        help="ci: protected (trusted CI, e.g. a default branch) or untrusted (pull requests)",
    )
    p.add_argument("--max-priority", type=int, default=None, help="ci: the highest priority its builds get")
    p.add_argument(
        "--max-slots",
        type=int,
        default=None,
        help="ci: its share of the fleet, the most slots its builds hold at once (default: no cap)",
    )
    p.add_argument(
        "--zone", action="append", default=[], help="ci: a zone its builds may pin (repeatable; default: any)"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        help="ci: k=v, a node label every build requires, e.g. its node pool (repeatable)",
    )
    p.add_argument(
        "--tokens-file",
        help="add the token's line to this file (created if missing) and print only the token",
    )
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("agent", help="run a node agent")
    _server_common(p)
    p.add_argument("--name", help="node name")
    p.add_argument(
        "--zone", help="the node's zone (default: its Node's topology.kubernetes.io/zone, or none)"
    )
    p.add_argument("--slots", type=int, help="builds the node runs at once (default 1)")
    p.add_argument("--label", action="append", default=[], help="k=v (repeatable)")
    p.add_argument("--coordinator", help="coordinator host:port")
    p.add_argument("--cache-dir", help="the node's cache store, on its SSD")
    p.add_argument("--blobs", help="file:///path or s3://bucket/prefix")
    p.add_argument("--budget-bytes", type=int, help="most bytes the cache store may use")
    p.add_argument("--work-dir", help="where builds' workspaces are made (same file system as --cache-dir)")
    p.add_argument(
        "--executor",
        choices=["auto", "podman", "process"],
        help="what runs builds: podman (a container each), process (no sandbox: trusted nodes only), or "
        "auto (podman where it can run, else process with a warning; the default)",
    )
    p.add_argument(
        "--drain", type=float, default=60.0, help="on SIGTERM, seconds to let running builds finish"
    )
    p.set_defaults(func=cmd_agent)


def _add_build_commands(sub: argparse._SubParsersAction) -> None:
    """What CI and operators call about builds: build, place, release, get, cancel, watch, builds,
    inventory."""
    p = sub.add_parser("build", help="run a build through the coordinator, streaming its output")
    client.add_spec_arguments(p, command=True)
    p.set_defaults(func=client.run_build)

    p = sub.add_parser("place", help="placement only: hold a slot on the best node for a lease")
    client.add_spec_arguments(p, command=False)
    p.add_argument("--lease", type=float, default=0.0, help="lease seconds (default: the coordinator's)")
    p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a free slot")
    p.set_defaults(func=client.place)

    p = sub.add_parser("release", help="release a placement lease")
    p.add_argument("lease_id")
    p.add_argument("--coordinator")
    p.set_defaults(func=client.release)

    for name, func, helptext in (
        ("get", client.get, "show a build"),
        ("cancel", client.cancel, "cancel a build"),
        ("watch", client.watch, "stream a build's events"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("build_id")
        p.add_argument("--coordinator")
        if name == "cancel":
            p.add_argument("--reason", default="")
        if name == "watch":
            p.add_argument("--after", type=int, default=0, help="only events after this sequence number")
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("builds", help="list builds, newest first (a ci token sees its own)")
    p.add_argument("--coordinator")
    p.add_argument("--workspace", default="")
    p.add_argument(
        "--state", default="", choices=["", *client.BUILD_STATES], help="only builds in this state"
    )
    p.add_argument("--owner", default="", help="only builds this principal submitted (operators)")
    p.add_argument("--node", default="", help="only builds this node ran")
    p.add_argument(
        "--since", type=client.age, default=None, help="only builds created in the last 30m, 12h, 7d"
    )
    p.add_argument("--limit", type=int, default=20, help="at most this many builds (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=client.list_builds)

    p = sub.add_parser("prewarm", help="operators: have nodes fetch a cache entry ahead of need")
    p.add_argument("key", help="the entry's key as stoker inventory shows it")
    p.add_argument("--coordinator")
    p.add_argument("--replicas", type=int, default=1, help="how many nodes should hold it (default 1)")
    p.add_argument("--zone", default="", help="only nodes in this zone")
    p.add_argument(
        "--restore-key", action="append", default=[], help="a prefix to fetch from if the key has no entry"
    )
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait until the asked nodes hold it")
    p.set_defaults(func=client.prewarm)

    p = sub.add_parser("node", help="operators: manage the fleet's nodes")
    verbs = p.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("forget", help="remove a lost node (decommissioned) from the inventory")
    p.add_argument("node")
    p.add_argument("--coordinator")
    p.set_defaults(func=client.forget_node)

    p = sub.add_parser("inventory", help="what the fleet's nodes hold")
    p.add_argument("--coordinator")
    p.add_argument("--prefix", default="")
    p.add_argument("--zone", default="")
    p.add_argument("--node", default="")
    p.add_argument("--summary", action="store_true", help="leave out per-node entry lists")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=client.inventory)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cache"]:
        # The cache commands have options of their own; argparse would not pass them through.
        from stoker.agent.cache import cli as cache_cli

        return cache_cli.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except settings.SettingsError as exc:
        print(f"stoker: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        # Two servers of one machine (a second agent, say) meet on the same defaults: say how to part them.
        print(
            f"stoker {args.command}: {exc} (another stoker {args.command} on this machine? give each its own "
            "--listen and --metrics-listen; port 0 picks a free one)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
