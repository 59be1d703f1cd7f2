"""A ci token says who its builds are for (issue 16, item 1): tenant, trust, a priority cap, the zones it
may pin. The tokens file is versioned and read strictly; the coordinator fills a build's tenant and trust
from the token and refuses a spec that says otherwise. The last test runs a real coordinator process."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from stoker.coordinator.core.errors import InvalidArgument, PermissionDenied
from stoker.coordinator.rpc.auth import Identity, bind_spec, hash_token, load_tokens, new_token
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2
from tests.helpers.pki import make_pki, secure_coordinator, tls_channel

PR = Identity(
    "gh-pr",
    "ci",
    tenant="web",
    trust="untrusted",
    max_priority=5,
    zones=("zone-a",),
    labels=(("pool", "pr"),),
    max_slots=3,
)


def test_a_ci_tokens_builds_get_its_tenant_and_trust_and_at_most_its_priority():
    spec = common_pb2.BuildSpec(workspace="web", command=["true"], priority=50)
    bound = bind_spec(spec, PR)
    assert (bound.tenant, bound.trust, bound.priority) == ("web", "untrusted", 5)
    assert dict(bound.constraints.labels) == {"pool": "pr"}  # its node pool, required
    assert spec.tenant == "" and spec.priority == 50  # the caller's message is not changed
    low = bind_spec(common_pb2.BuildSpec(workspace="web", priority=-3), PR)
    assert low.priority == -3
    same = bind_spec(common_pb2.BuildSpec(workspace="web", tenant="web", trust="untrusted"), PR)
    assert (same.tenant, same.trust) == ("web", "untrusted")


@pytest.mark.parametrize(
    "spec, message",
    [
        (common_pb2.BuildSpec(tenant="payments"), "spec.tenant: this token submits for tenant 'web' only"),
        (common_pb2.BuildSpec(trust="protected"), "spec.trust: this token's builds are untrusted"),
        (
            common_pb2.BuildSpec(constraints=common_pb2.Constraints(zone="zone-b")),
            "spec.constraints.zone: this token may pin zone-a only",
        ),
        (
            common_pb2.BuildSpec(constraints=common_pb2.Constraints(labels={"pool": "main"})),
            "spec.constraints.labels[pool]: this token's builds run on pool=pr",
        ),
    ],
)
def test_a_spec_that_claims_more_than_its_token_is_refused_naming_the_field(spec, message):
    with pytest.raises(PermissionDenied) as refused:
        bind_spec(spec, PR)
    assert str(refused.value) == message


def test_operators_and_an_open_coordinator_submit_specs_as_they_are():
    spec = common_pb2.BuildSpec(tenant="anyone", trust="protected", priority=99)
    assert bind_spec(spec, Identity("ops", "operator")) is spec
    assert bind_spec(spec, Identity("", "open")) is spec


def write(tmp_path, doc) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_the_tokens_file_round_trips_what_stoker_token_writes(tmp_path):
    token, line = new_token(
        "gh-pr",
        "ci",
        tenant="web",
        trust="untrusted",
        max_priority=5,
        zones=("zone-a",),
        labels={"pool": "pr"},
        max_slots=3,
    )
    _, ops = new_token("ops", "operator")
    _, legacy = new_token("old-ci", "ci")
    del legacy["tenant"], legacy["trust"]  # a line from before tokens carried them
    tokens = load_tokens(write(tmp_path, {"version": 1, "tokens": [line, ops, legacy]}))
    assert tokens[hash_token(token)] == PR
    assert tokens[ops["sha256"]] == Identity("ops", "operator")
    assert tokens[legacy["sha256"]] == Identity("old-ci", "ci", tenant="old-ci", trust="protected")


def test_shares_reach_the_tenants_named_and_bind_spec_fills_them(tmp_path):
    """Issue 16, item 3: the tokens file's shares (none by default) reach the ci tokens of the tenants
    named, and the coordinator fills them into a build's spec; a ci spec that sets them is refused."""
    _, web = new_token("web-main", "ci", tenant="web")
    _, other = new_token("other-ci", "ci", tenant="other")
    share = {"tenant": "payments", "prefix": "tools/", "with": ["web"]}
    tokens = load_tokens(write(tmp_path, {"version": 1, "tokens": [web, other], "shares": [share]}))
    assert tokens[web["sha256"]].shares == (("payments", "tools/"),)
    assert tokens[other["sha256"]].shares == ()
    spec = bind_spec(common_pb2.BuildSpec(cache=common_pb2.CacheSpec(key="k")), tokens[web["sha256"]])
    assert [(s.scope, s.prefix) for s in spec.cache.shared] == [("~payments/protected/", "tools/")]
    with pytest.raises(PermissionDenied, match="spec.cache.scope"):
        bind_spec(spec, tokens[web["sha256"]])


DIGEST = "a" * 64


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"version": 2, "tokens": []}, "version 2 is not one this coordinator reads"),
        ({"tokens": [], "admins": []}, "unknown field 'admins' at the top level"),
        (
            {"tokens": [{"name": "x", "role": "ci", "sha256": DIGEST, "tennant": "web"}]},
            "tokens[0]: unknown field 'tennant'",
        ),
        ({"tokens": [{"name": "x", "role": "root", "sha256": DIGEST}]}, "needs a name and a role of ci or"),
        (
            {"tokens": [{"name": "x", "role": "ci", "sha256": DIGEST, "trust": "mostly"}]},
            "trust must be protected or untrusted, not 'mostly'",
        ),
        ({"tokens": [{"name": "x", "role": "ci", "sha256": "zz" * 32}]}, "sha256 must be 64 hex digits"),
        (
            {"tokens": [{"name": "x", "role": "operator", "sha256": DIGEST, "tenant": "web"}]},
            "tenant applies to ci tokens only",
        ),
        (
            {"tokens": [{"name": "x", "role": "ci", "sha256": DIGEST, "max_priority": "9"}]},
            "max_priority must be an integer",
        ),
        (
            {"tokens": [], "shares": [{"tenant": "p", "prefix": "t/", "whith": ["w"]}]},
            "shares[0]: unknown field",
        ),
        ({"tokens": [], "shares": [{"tenant": "p", "prefix": "", "with": ["w"]}]}, "sharing a whole scope"),
        ({"tokens": [], "shares": [{"tenant": "p", "prefix": "t/", "with": []}]}, "shares[0].with must list"),
        (
            {"tokens": [{"name": "x", "role": "ci", "sha256": DIGEST, "max_slots": 0}]},
            "max_slots must be a whole number of slots, at least 1",
        ),
        (
            {"tokens": [{"name": "x", "role": "operator", "sha256": DIGEST, "max_slots": 2}]},
            "max_slots applies to ci tokens only",
        ),
    ],
)
def test_a_tokens_file_with_what_the_coordinator_does_not_know_is_refused_naming_it(tmp_path, doc, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_tokens(write(tmp_path, doc))


def test_a_coordinator_fills_the_tenant_from_the_token_and_refuses_another(tmp_path, port_factory):
    """A real coordinator process with TLS and a tokens file to which `stoker token` added the ci token (no
    node: the refusal must come before placement)."""
    pki_dir = tmp_path / "pki"
    make_pki(pki_dir, ("n1",), (("ops", "operator"),))
    tokens_file = pki_dir / "tokens.json"
    token = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "token", "--name", "gh-pr", "--role", "ci",
         "--tenant", "web", "--trust", "untrusted", "--tokens-file", str(tokens_file)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    coordinator = secure_coordinator(tmp_path, pki_dir, port_factory())
    try:
        with tls_channel(coordinator.address, pki_dir, token) as ch:
            builds = build_pb2_grpc.BuildsStub(ch)
            spec = common_pb2.BuildSpec(workspace="web", command=["true"], tenant="payments")
            with pytest.raises(grpc.RpcError) as refused:
                list(builds.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=10))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refused.value.details() == "spec.tenant: this token submits for tenant 'web' only"
            spec.tenant = ""
            with pytest.raises(grpc.RpcError) as no_node:
                list(builds.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=10))
            assert no_node.value.code() == grpc.StatusCode.UNAVAILABLE  # past the token's checks
    finally:
        coordinator.stop()
