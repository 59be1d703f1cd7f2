"""Cache scopes through a real fleet (issue 16, item 2): a coordinator with TLS and a tokens file, two
agents over mutual TLS sharing one blob store, and three ci tokens: tenant web's default branch
(protected), tenant web's pull requests (untrusted) and tenant payments. Each attack of the issue is tried
and fails, and the legitimate flows still work: main's entries warm a pull request's builds, a pull
request's second build is warm from its own entry."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from stoker.demo import local_fleet
from stoker.v1 import (
    build_pb2,
    build_pb2_grpc,
    common_pb2,
    history_pb2,
    history_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
)
from tests.helpers.pki import make_pki, secure_coordinator, tls_channel, wait_nodes

pytestmark = pytest.mark.integration

SHOW = "cat deps/who 2>/dev/null || echo none; echo hit=$STOKER_CACHE_HIT from=$STOKER_CACHE_RESTORED_KEY"


def make_token(tokens_file: Path, name: str, tenant: str, trust: str, *extra: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "token", "--name", name, "--role", "ci", "--tenant", tenant,
         "--trust", trust, "--tokens-file", str(tokens_file), *extra],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


class Tenancy:
    def __init__(self, tmp_path: Path, port_factory, agent_env=None) -> None:
        """``agent_env``: node name → more of that agent's environment."""
        self.pki = tmp_path / "pki"
        ops = make_pki(self.pki, ("n1", "n2"), (("ops", "operator"),))["ops"]
        self.ops = ops
        tokens_file = self.pki / "tokens.json"
        self.tokens = {
            "main": make_token(tokens_file, "web-main", "web", "protected"),
            "pr": make_token(tokens_file, "web-pr", "web", "untrusted"),
            "payments": make_token(tokens_file, "payments-ci", "payments", "protected"),
            "batch": make_token(tokens_file, "batch-ci", "batch", "protected", "--max-slots", "1"),
            "ops": ops,
        }
        # payments shares its protected entries under "shared/" with web, read-only (issue 16, item 3).
        doc = json.loads(tokens_file.read_text())
        doc["shares"] = [{"tenant": "payments", "prefix": "shared/", "with": ["web"]}]
        tokens_file.write_text(json.dumps(doc))
        agent_port = port_factory()
        self.coordinator = secure_coordinator(
            tmp_path, self.pki, agent_port, settings="[builds]\nmax_queued_per_principal = 2\n"
        )
        self.procs = [self.coordinator]
        for node in ("n1", "n2"):
            env = {
                "STOKER_AGENT_COORDINATOR_TLS_CA": str(self.pki / "ca.pem"),
                "STOKER_AGENT_COORDINATOR_TLS_CERT": str(self.pki / f"{node}.pem"),
                "STOKER_AGENT_COORDINATOR_TLS_KEY": str(self.pki / f"{node}.key"),
                "PATH": os.environ["PATH"],
                **(agent_env(node) if agent_env else {}),
            }
            self.procs.append(
                local_fleet.start_agent(
                    tmp_path, node, f"127.0.0.1:{agent_port}", blobs=tmp_path / "blobs", env=env
                )
            )
        wait_nodes(self.coordinator.address, self.pki, ops, ["n1", "n2"])

    def build(self, who: str, script: str, key: str = "", restore=(), ref: str = "", **spec_fields):
        """Run a build as ``who``; returns (finished, stdout lines)."""
        events = self.events(who, script, key, restore, ref, **spec_fields)
        # The build's own output: the agent's "stoker: ..." lines still share the stream (issue 17, item 5).
        lines = [
            e.log.text
            for e in events
            if e.HasField("log")
            and e.log.stream == build_pb2.LogLine.STREAM_STDOUT
            and not e.log.text.startswith("stoker: ")
        ]
        return events[-1].finished, lines

    def events(self, who: str, script: str, key: str = "", restore=(), ref: str = "", **spec_fields):
        """Run a build as ``who``; returns all its events."""
        spec = common_pb2.BuildSpec(
            workspace="web",
            command=["sh", "-c", script],
            timeout_s=60,
            cache=common_pb2.CacheSpec(
                key=key, restore_keys=list(restore), paths=["deps"] if key else [], ref=ref
            ),
            **spec_fields,
        )
        with tls_channel(self.coordinator.address, self.pki, self.tokens[who]) as ch:
            return list(
                build_pb2_grpc.BuildsStub(ch).SubmitBuild(
                    build_pb2.SubmitBuildRequest(spec=spec), timeout=120
                )
            )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def fleet(tmp_path, port_factory):
    t = Tenancy(tmp_path, port_factory)
    yield t
    t.stop()


def save(who: str, content: str) -> str:
    return f"mkdir -p deps && echo {content} > deps/who && echo saved-{content}"


def test_a_pull_request_cannot_poison_main_and_main_warms_pull_requests(fleet):
    # main saves the entry of lockfile H1.
    done, _ = fleet.build("main", save("main", "main-H1"), key="web/deps-H1")
    assert done.state == build_pb2.BUILD_STATE_SUCCEEDED and done.cache.saved, done
    # A pull request with the same lockfile is warmed by main's entry: an exact hit, read-only.
    done, lines = fleet.build("pr", SHOW, key="web/deps-H1", ref="pull/7")
    assert lines[-2:] == ["main-H1", "hit=exact from=~web/protected/web/deps-H1"], lines
    # The pull request saves under the key its lockfile change would produce on main (H2)...
    done, _ = fleet.build("pr", save("pr", "planted-by-pr"), key="web/deps-H2", ref="pull/7")
    assert done.state == build_pb2.BUILD_STATE_SUCCEEDED and done.cache.saved, done
    # ...and its own second build of H2 is warm from its own entry.
    done, lines = fleet.build("pr", SHOW, key="web/deps-H2", ref="pull/7")
    assert lines[-2:] == ["planted-by-pr", "hit=exact from=~web/untrusted/pull/7/web/deps-H2"], lines
    # After the merge, main's build of H2 never sees it: by exact key nothing, by prefix main's own H1.
    done, lines = fleet.build("main", SHOW, key="web/deps-H2", restore=["web/deps-"])
    assert lines[-2:] == ["main-H1", "hit=partial from=~web/protected/web/deps-H1"], lines
    # Another pull request does not see pull/7's entries either: its own scope is empty, and main's H2 (saved
    # by the build above, from main's H1) is what it gets.
    done, lines = fleet.build("pr", SHOW, key="web/deps-H2", restore=["web/deps-"], ref="pull/8")
    assert lines[-2:] == ["main-H1", "hit=exact from=~web/protected/web/deps-H2"], lines


def test_another_tenant_reads_nothing_of_web_by_key_or_prefix_and_cannot_name_a_scope(fleet):
    fleet.build("main", save("main", "web-secret"), key="web/deps-H1")
    for restore in (["web/deps-"], ["w"], ["~"]):
        done, lines = fleet.build("payments", SHOW, key="web/deps-H1", restore=restore)
        assert done.state == build_pb2.BUILD_STATE_SUCCEEDED, done
        assert lines[-2:] == ["none", "hit=none from="], (restore, lines)
    spec = common_pb2.BuildSpec(
        workspace="web",
        command=["true"],
        cache=common_pb2.CacheSpec(key="k", paths=["deps"], scope="~web/protected/"),
    )
    with tls_channel(fleet.coordinator.address, fleet.pki, fleet.tokens["payments"]) as ch:
        with pytest.raises(grpc.RpcError) as refused:
            list(
                build_pb2_grpc.BuildsStub(ch).SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=30)
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spec.cache.scope" in refused.value.details() and "web" not in refused.value.details()


def test_entries_record_who_wrote_them(fleet, tmp_path):
    """Issue 16, item 2: the coordinator sends the build's principal with it; the entry's manifest, key
    pointer and node record name the principal, tenant, trust, build and node; `stoker cache ls` shows
    them."""
    done, _ = fleet.build("pr", save("pr", "pr-H1"), key="web/deps-H1", ref="pull/9")
    assert done.state == build_pb2.BUILD_STATE_SUCCEEDED and done.cache.saved, done
    ls = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "cache", "--dir", str(tmp_path / "ls-store"),
         "--blobs", f"file://{tmp_path / 'blobs'}", "--json", "ls", "--remote", "~web/"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (entry,) = json.loads(ls.stdout)["entries"]
    assert entry["key"] == "~web/untrusted/pull/9/web/deps-H1" and entry["bytes"] == len("pr-H1\n"), entry
    writer = entry["writer"]
    assert {k: writer[k] for k in ("principal", "tenant", "trust")} == {
        "principal": "web-pr",
        "tenant": "web",
        "trust": "untrusted",
    }, entry
    assert writer["build_id"].startswith("b-") and writer["node"] in ("n1", "n2"), entry
    # The manifest itself (what a restore trusts) says the same.
    from stoker.agent.cache import manifest as mf
    from stoker.agent.cache.blobs import encode_key

    pointer = json.loads((tmp_path / "blobs" / "keys" / encode_key(entry["key"])).read_bytes())
    manifest = mf.parse((tmp_path / "blobs" / "manifests" / pointer["manifest"]).read_bytes(), where="t")
    assert manifest.writer is not None and manifest.writer.to_dict() == entry["writer"]
    text = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "cache", "--dir", str(tmp_path / "ls-store"),
         "--blobs", f"file://{tmp_path / 'blobs'}", "ls", "--remote", "~payments/"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert text == ["KEY\tSIZE\tWRITER\tTRUST\tCREATED"], text


def test_a_shared_prefix_is_read_only_and_reaches_nothing_else(fleet):
    """Issue 16, item 3: payments shares "shared/" with web (tokens file "shares"). web's builds read
    payments' entries under it, by exact key and by restore prefix, but never its other keys (a shorter
    prefix included), and what web saves stays in web's scope."""
    fleet.build("payments", save("payments", "payments-tools"), key="shared/tools-1")
    fleet.build("payments", save("payments", "payments-secret"), key="payments/deps-1")
    done, lines = fleet.build("pr", SHOW, key="web/deps-9", restore=["shared/tools-"], ref="pull/3")
    assert lines[-2:] == ["payments-tools", "hit=partial from=~payments/protected/shared/tools-1"], lines
    for restore in (["payments/"], ["s"], ["shared"]):
        done, lines = fleet.build("main", SHOW, key="web/deps-8", restore=restore)
        assert lines[-2:] == ["none", "hit=none from="], (restore, lines)
    done, lines = fleet.build("main", SHOW, key="shared/tools-1")
    assert lines[-2:] == ["payments-tools", "hit=exact from=~payments/protected/shared/tools-1"], lines
    # web writes its own scope only: its save of a shared key does not change what payments restores.
    done, _ = fleet.build("main", save("main", "web-tools"), key="shared/tools-2")
    assert done.cache.saved, done
    done, lines = fleet.build("payments", SHOW, key="payments/x", restore=["shared/tools-"])
    assert lines[-2:] == ["payments-tools", "hit=partial from=~payments/protected/shared/tools-1"], lines


def _running_span(events) -> tuple[float, float]:
    """(placed, finished) times of a build, from its events."""
    placed = next(e for e in events if e.HasField("placed")).time.ToNanoseconds() / 1e9
    return placed, events[-1].time.ToNanoseconds() / 1e9


def test_a_tokens_share_of_slots_holds_its_burst_while_other_tenants_run(fleet):
    """batch-ci's token has --max-slots 1; the fleet has two nodes of one slot each. Two builds of web's
    main token run side by side (the control: the fleet could run both at once); batch's two wait for one
    another, the second saying why, while a payments build submitted meanwhile takes the free node."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        control = [pool.submit(fleet.events, "main", "sleep 1.5") for _ in range(2)]
        a, b = (_running_span(f.result()) for f in control)
        assert a[0] < b[1] and b[0] < a[1], (a, b)  # they overlapped
        burst = [pool.submit(fleet.events, "batch", "sleep 1.5") for _ in range(2)]
        time.sleep(0.5)
        other = pool.submit(fleet.events, "payments", "echo ran")
        other_events = other.result()
        runs = [f.result() for f in burst]
    assert all(r[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED for r in runs), runs
    first, second = sorted(_running_span(r) for r in runs)
    assert second[0] >= first[1] - 0.05, (first, second)  # one after the other
    reasons = [e.queued.reason for r in runs for e in r if e.HasField("queued")]
    assert "its token's share of the fleet is in use (1 of 1 slots)" in reasons, reasons
    assert other_events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
    assert _running_span(other_events)[1] < second[1], "payments waited behind batch's share"


def test_a_token_may_have_only_so_many_builds_waiting_and_the_cli_waits_for_room(fleet):
    """builds.max_queued_per_principal = 2 in this fleet: batch-ci (one slot) runs one build and has two
    waiting; a third is RESOURCE_EXHAUSTED for batch only (payments still runs), and `stoker build` retries
    it with the same request_id until room comes (issue 16: no unbounded queue per tenant)."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(fleet.events, "batch", "sleep 3")
        time.sleep(0.5)
        waiting = [pool.submit(fleet.events, "batch", "true") for _ in range(2)]
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as refused:
            fleet.events("batch", "true")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 builds and placements waiting" in refused.value.details()
        assert fleet.events("payments", "true")[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
        env = dict(
            os.environ,
            STOKER_TOKEN=fleet.tokens["batch"],
            STOKER_CA=str(fleet.pki / "ca.pem"),
            STOKER_COORDINATOR=fleet.coordinator.address,
        )
        cli = subprocess.run(
            [sys.executable, "-m", "stoker.cli.main", "build", "--workspace", "web", "--", "echo", "got-in"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0 and cli.stdout.strip() == "got-in", (cli.stdout, cli.stderr)
        assert "builds and placements waiting" in cli.stderr and "retrying" in cli.stderr, cli.stderr
        assert first.result()[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
        assert all(w.result()[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED for w in waiting)


def test_a_ci_token_lists_its_own_builds_only(fleet):
    """Issue 17, item 9 under issue 16's tokens: ListBuilds shows a ci caller its own builds, refuses
    another owner without naming anyone else, and an operator sees everyone's."""
    mine = fleet.events("payments", "true")[-1].build_id
    theirs = fleet.events("main", "true")[-1].build_id

    def listed(who: str, **request) -> list[str]:
        with tls_channel(fleet.coordinator.address, fleet.pki, fleet.tokens[who]) as ch:
            reply = build_pb2_grpc.BuildsStub(ch).ListBuilds(
                build_pb2.ListBuildsRequest(**request), timeout=10
            )
        return [b.id for b in reply.builds]

    assert listed("payments") == [mine]
    with pytest.raises(grpc.RpcError) as refused:
        listed("payments", owner="web-main")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "web-main" not in refused.value.details()
    assert theirs not in listed("payments", workspace="web")
    assert listed("ops")[:2] == [theirs, mine]
    # Prewarming is an operator's verb: a ci token cannot move entries onto nodes.
    with tls_channel(fleet.coordinator.address, fleet.pki, fleet.tokens["payments"]) as ch:
        with pytest.raises(grpc.RpcError) as refused:
            inventory_pb2_grpc.InventoryStub(ch).Prewarm(inventory_pb2.PrewarmRequest(key="k"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_only_an_operator_exports_the_history_and_it_carries_no_command_or_environment(fleet):
    """The build history is operator data (issue 19): a ci token, whatever its tenant, is refused it."""
    done, _ = fleet.build(
        "main", save("main", "m") + " && echo $DEPLOY_KEY", key="web/deps-H1", env={"DEPLOY_KEY": "hunter2"}
    )
    assert done.state == build_pb2.BUILD_STATE_SUCCEEDED, done
    request = history_pb2.ExportHistoryRequest(since_s=3600)
    for who in ("main", "payments", "pr"):
        with tls_channel(fleet.coordinator.address, fleet.pki, fleet.tokens[who]) as ch:
            with pytest.raises(grpc.RpcError) as refused:
                history_pb2_grpc.HistoryStub(ch).ExportHistory(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, who
    with tls_channel(fleet.coordinator.address, fleet.pki, fleet.ops) as ch:
        history = history_pb2_grpc.HistoryStub(ch).ExportHistory(request, timeout=30)
    assert [b.key for b in history.builds] == ["~web/protected/web/deps-H1"]
    assert {(e.node, e.event) for e in history.node_events} == {("n1", "joined"), ("n2", "joined")}
    raw = history.SerializeToString()
    assert b"hunter2" not in raw and b"DEPLOY_KEY" not in raw and b"deps/who" not in raw
