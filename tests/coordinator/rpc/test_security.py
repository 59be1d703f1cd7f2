"""TLS, mutual TLS for agents, bearer tokens with roles, and the refusal to run exposed without them.

A test CA, a server certificate for 127.0.0.1 and client certificates for agents come from
tests/helpers/pki.py; the coordinator and agents run as real processes over real gRPC.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from stoker.demo import local_fleet
from stoker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    build_pb2,
    build_pb2_grpc,
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
)
from tests.helpers.pki import make_pki, secure_coordinator, tls_channel, wait_nodes

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    tokens = make_pki(d, ("n1", "n2"), (("ci-a", "ci"), ("ci-b", "ci"), ("ops", "operator")), rogue=True)
    return d, tokens


def secure_fleet(tmp_path, pki_dir, port_factory):
    agent_port = port_factory()
    return secure_coordinator(tmp_path, pki_dir, agent_port), f"127.0.0.1:{agent_port}"


def agent_env(pki_dir: Path, cert: str) -> dict[str, str]:
    return {
        "STOKER_AGENT_COORDINATOR_TLS_CA": str(pki_dir / "ca.pem"),
        "STOKER_AGENT_COORDINATOR_TLS_CERT": str(pki_dir / f"{cert}.pem"),
        "STOKER_AGENT_COORDINATOR_TLS_KEY": str(pki_dir / f"{cert}.key"),
        "PATH": os.environ["PATH"],
    }


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_mutual_tls_agents_and_token_roles(tmp_path, pki, port_factory):
    pki_dir, tokens = pki
    coordinator, agent_address = secure_fleet(tmp_path, pki_dir, port_factory)
    procs = [coordinator]
    try:
        procs.append(
            local_fleet.start_agent(
                tmp_path, "n1", agent_address, blobs=tmp_path / "blobs", env=agent_env(pki_dir, "n1")
            )
        )
        wait_nodes(coordinator.address, pki_dir, tokens["ops"], ["n1"])
        spec = common_pb2.BuildSpec(workspace="w", command=["sh", "-c", "echo secure"])

        # ci-a runs a build over TLS with its token.
        ci_a = build_pb2_grpc.BuildsStub(tls_channel(coordinator.address, pki_dir, tokens["ci-a"]))
        events = list(ci_a.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=60))
        assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
        build_id = events[-1].build_id
        assert ci_a.GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5).owner == "ci-a"

        # Another ci token may not read it; an operator may; ci may not query the inventory.
        ci_b = build_pb2_grpc.BuildsStub(tls_channel(coordinator.address, pki_dir, tokens["ci-b"]))
        assert (
            code_of(lambda: ci_b.GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        ops = build_pb2_grpc.BuildsStub(tls_channel(coordinator.address, pki_dir, tokens["ops"]))
        assert ops.GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5).id == build_id
        ci_inventory = inventory_pb2_grpc.InventoryStub(
            tls_channel(coordinator.address, pki_dir, tokens["ci-a"])
        )
        assert (
            code_of(lambda: ci_inventory.QueryInventory(inventory_pb2.QueryInventoryRequest(), timeout=5))
            == grpc.StatusCode.PERMISSION_DENIED
        )

        # No token, a wrong token, and a token on the agent port: UNAUTHENTICATED / PERMISSION_DENIED.
        anonymous = build_pb2_grpc.BuildsStub(tls_channel(coordinator.address, pki_dir))
        assert (
            code_of(lambda: anonymous.GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        forged = build_pb2_grpc.BuildsStub(tls_channel(coordinator.address, pki_dir, "stk_not-a-real-token"))
        assert (
            code_of(lambda: forged.GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        # A CI token may not register as an agent; an agent certificate may not submit builds.
        gateway_as_ci = agent_pb2_grpc.AgentGatewayStub(
            tls_channel(coordinator.address, pki_dir, tokens["ci-a"])
        )
        assert (
            code_of(lambda: gateway_as_ci.Register(agent_pb2.RegisterRequest(node="n9", slots=1), timeout=5))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        builds_as_agent = build_pb2_grpc.BuildsStub(tls_channel(agent_address, pki_dir, client="n2"))
        assert (
            code_of(
                lambda: list(builds_as_agent.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=5))
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )

        # An agent certificate may only register as its own node.
        gateway_n2 = agent_pb2_grpc.AgentGatewayStub(tls_channel(agent_address, pki_dir, client="n2"))
        assert (
            code_of(lambda: gateway_n2.Register(agent_pb2.RegisterRequest(node="n1", slots=1), timeout=5))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert gateway_n2.Register(agent_pb2.RegisterRequest(node="n2", slots=1), timeout=5).session_id

        # Without a client certificate, or with one from another CA, the agent port refuses the handshake.
        no_cert = agent_pb2_grpc.AgentGatewayStub(tls_channel(agent_address, pki_dir))
        assert (
            code_of(lambda: no_cert.Register(agent_pb2.RegisterRequest(node="n1", slots=1), timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
        rogue = agent_pb2_grpc.AgentGatewayStub(tls_channel(agent_address, pki_dir, client="rogue"))
        assert (
            code_of(lambda: rogue.Register(agent_pb2.RegisterRequest(node="n1", slots=1), timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
        # Plain text against a TLS port fails too.
        plain = build_pb2_grpc.BuildsStub(grpc.insecure_channel(coordinator.address))
        assert (
            code_of(lambda: plain.GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
        log = coordinator.log_path.read_text()
        assert "refused /stoker.v1.Builds/GetBuild" in log and "unknown token" in log

        # The CLI reads the CA and the token from the environment.
        env = {
            **os.environ,
            "STOKER_COORDINATOR": coordinator.address,
            "STOKER_CA": str(pki_dir / "ca.pem"),
            "STOKER_TOKEN": tokens["ci-a"],
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "stoker.cli.main",
                "build",
                "--workspace",
                "w",
                "--",
                "sh",
                "-c",
                "echo via-cli; exit 3",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 3 and "via-cli" in done.stdout, done.stderr
    finally:
        for p in reversed(procs):
            p.kill()


def test_agent_with_a_certificate_for_another_node_cannot_connect(tmp_path, pki, port_factory):
    pki_dir, tokens = pki
    coordinator, agent_address = secure_fleet(tmp_path, pki_dir, port_factory)
    agent = None
    try:
        # The agent calls itself n1 but holds n2's certificate.
        agent = local_fleet.start_agent(
            tmp_path, "n1", agent_address, blobs=tmp_path / "blobs", env=agent_env(pki_dir, "n2")
        )
        time.sleep(2)
        reply = inventory_pb2_grpc.InventoryStub(
            tls_channel(coordinator.address, pki_dir, tokens["ops"])
        ).QueryInventory(inventory_pb2.QueryInventoryRequest(summary_only=True), timeout=5)
        assert not reply.nodes
        assert "PERMISSION_DENIED" in agent.log_path.read_text()
    finally:
        if agent:
            agent.kill()
        coordinator.kill()


def test_exposed_coordinator_refuses_to_start_without_credentials(tmp_path, port_factory):
    port = port_factory()
    with pytest.raises(local_fleet.FleetError) as err:
        local_fleet.start_coordinator(tmp_path, listen=f"0.0.0.0:{port}", timeout=20)
    assert "refusing to listen on 0.0.0.0" in str(err.value)
    proc = local_fleet.start_coordinator(
        tmp_path,
        name="insecure",
        listen=f"0.0.0.0:{port}",
        extra=["--config", str(_allow_insecure(tmp_path))],
    )
    try:
        assert "INSECURE" in proc.log_path.read_text()
    finally:
        proc.kill()
    proc = local_fleet.start_coordinator(tmp_path, name="loopback")
    try:
        assert "open coordinator: no TLS and no authentication" in proc.log_path.read_text()
    finally:
        proc.kill()


def _allow_insecure(tmp_path: Path) -> Path:
    path = tmp_path / "insecure.toml"
    path.write_text("[security]\nallow_insecure = true\n")
    return path
