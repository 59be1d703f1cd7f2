"""Cache scopes through a real fleet (issue 16, item 2): a coordinator with TLS and a tokens file, two
agents over mutual TLS sharing one blob store, and three ci tokens: tenant web's default branch
(protected), tenant web's pull requests (untrusted) and tenant payments. Each attack of the issue is tried
and fails, and the legitimate flows still work: main's entries warm a pull request's builds, a pull
request's second build is warm from its own entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from stoker.demo import local_fleet
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2
from tests.helpers.pki import make_pki, secure_coordinator, tls_channel, wait_nodes

pytestmark = pytest.mark.integration

SHOW = "cat deps/who 2>/dev/null || echo none; echo hit=$STOKER_CACHE_HIT from=$STOKER_CACHE_RESTORED_KEY"


def make_token(tokens_file: Path, name: str, tenant: str, trust: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "token", "--name", name, "--role", "ci", "--tenant", tenant,
         "--trust", trust, "--tokens-file", str(tokens_file)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


class Tenancy:
    def __init__(self, tmp_path: Path, port_factory) -> None:
        self.pki = tmp_path / "pki"
        ops = make_pki(self.pki, ("n1", "n2"), (("ops", "operator"),))["ops"]
        tokens_file = self.pki / "tokens.json"
        self.tokens = {
            "main": make_token(tokens_file, "web-main", "web", "protected"),
            "pr": make_token(tokens_file, "web-pr", "web", "untrusted"),
            "payments": make_token(tokens_file, "payments-ci", "payments", "protected"),
        }
        # payments shares its protected entries under "shared/" with web, read-only (issue 16, item 3).
        doc = json.loads(tokens_file.read_text())
        doc["shares"] = [{"tenant": "payments", "prefix": "shared/", "with": ["web"]}]
        tokens_file.write_text(json.dumps(doc))
        agent_port = port_factory()
        self.coordinator = secure_coordinator(tmp_path, self.pki, agent_port)
        self.procs = [self.coordinator]
        for node in ("n1", "n2"):
            env = {
                "STOKER_AGENT_COORDINATOR_TLS_CA": str(self.pki / "ca.pem"),
                "STOKER_AGENT_COORDINATOR_TLS_CERT": str(self.pki / f"{node}.pem"),
                "STOKER_AGENT_COORDINATOR_TLS_KEY": str(self.pki / f"{node}.key"),
                "PATH": os.environ["PATH"],
            }
            self.procs.append(
                local_fleet.start_agent(
                    tmp_path, node, f"127.0.0.1:{agent_port}", blobs=tmp_path / "blobs", env=env
                )
            )
        wait_nodes(self.coordinator.address, self.pki, ops, ["n1", "n2"])

    def build(self, who: str, script: str, key: str = "", restore=(), ref: str = "", **spec_fields):
        """Run a build as ``who``; returns (finished, stdout lines)."""
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
            events = list(
                build_pb2_grpc.BuildsStub(ch).SubmitBuild(
                    build_pb2.SubmitBuildRequest(spec=spec), timeout=120
                )
            )
        # The build's own output: the agent's "stoker: ..." lines still share the stream (issue 17, item 5).
        lines = [
            e.log.text
            for e in events
            if e.HasField("log")
            and e.log.stream == build_pb2.LogLine.STREAM_STDOUT
            and not e.log.text.startswith("stoker: ")
        ]
        return events[-1].finished, lines

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
