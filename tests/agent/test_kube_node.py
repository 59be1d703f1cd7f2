"""stoker.agent.kube_node against a small real HTTP server that speaks the part of the Kubernetes API used.

No API server can run on this machine, so each test starts ``http.server`` in a thread on 127.0.0.1:0 that
answers ``GET /api/v1/nodes/{name}`` the way kube-apiserver does (a Node object as JSON, or a ``Status``
object with 401, 403 or 404), checks the bearer token, and records every request. The official
``kubernetes`` client is pointed at it through a ``Configuration``; no transport is mocked, so the client's
request building, JSON decoding and model deserialization are all exercised.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from stoker.agent.kube_node import (
    KubernetesApiUnreachable,
    NodeFacts,
    NodeFactsMalformed,
    NodeFactsUnavailable,
    NodeForbidden,
    NodeNotFound,
    NotInCluster,
    read_node_facts,
)

TOKEN = "test-token-for-the-agent"


def node_object(name: str, *, labels=None, allocatable=None, taints=None) -> dict:
    """A Node as kube-apiserver returns it (trimmed to realistic fields)."""
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": "4b0c4c8e-55a1-4d3e-9f52-8f7c9d2d6b11",
            "resourceVersion": "81234",
            "creationTimestamp": "2026-01-05T10:00:00Z",
            "labels": labels if labels is not None else {},
        },
        "spec": {"providerID": f"aws:///eu-west-1a/i-0{name}", **({"taints": taints} if taints else {})},
        "status": {
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "allocatable": allocatable if allocatable is not None else {},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": "2026-01-05T10:05:00Z",
                    "lastTransitionTime": "2026-01-05T10:00:30Z",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.37.0",
                "architecture": "amd64",
                "operatingSystem": "linux",
                "bootID": "b",
                "containerRuntimeVersion": "containerd://2.1.0",
                "kernelVersion": "6.8.0",
                "kubeProxyVersion": "",
                "machineID": "m",
                "osImage": "Ubuntu 24.04",
                "systemUUID": "s",
            },
        },
    }


def status_object(code: int, reason: str, message: str, name: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "kind": "nodes"},
        "code": code,
    }


@dataclass
class FakeApiServer:
    """State of the loopback API server: the Nodes it holds, whether RBAC allows get, what it saw."""

    nodes: dict[str, dict] = field(default_factory=dict)
    forbid: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    port: int = 0

    def configuration(self, token: str = TOKEN) -> client.Configuration:
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{self.port}"
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        cfg.retries = 0
        return cfg

    def api_client(self, token: str = TOKEN) -> client.ApiClient:
        return client.ApiClient(self.configuration(token))


def _handler_for(state: FakeApiServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # keep pytest output quiet
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            auth = self.headers.get("Authorization")
            state.requests.append(("GET", self.path, auth))
            path = self.path.split("?", 1)[0]
            prefix = "/api/v1/nodes/"
            if not path.startswith(prefix) or "/" in path[len(prefix) :]:
                self._send(
                    404,
                    status_object(404, "NotFound", "the server could not find the requested resource", ""),
                )
                return
            name = path[len(prefix) :]
            if auth != f"Bearer {TOKEN}":
                self._send(401, status_object(401, "Unauthorized", "Unauthorized", name))
                return
            if state.forbid:
                message = (
                    f'nodes "{name}" is forbidden: User "system:serviceaccount:stoker:stoker-agent" cannot '
                    'get resource "nodes" in API group "" at the cluster scope'
                )
                self._send(403, status_object(403, "Forbidden", message, name))
                return
            if name not in state.nodes:
                self._send(404, status_object(404, "NotFound", f'nodes "{name}" not found', name))
                return
            self._send(200, state.nodes[name])

    return Handler


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    state = FakeApiServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_found_node_gives_zone_instance_type_resources_taints_and_labels(api_server):
    labels = {
        "kubernetes.io/hostname": "build-1",
        "topology.kubernetes.io/zone": "eu-west-1a",
        "node.kubernetes.io/instance-type": "m7gd.2xlarge",
        "stoker.dev/build-node": "true",
    }
    api_server.nodes["build-1"] = node_object(
        "build-1",
        labels=labels,
        allocatable={"cpu": "3500m", "memory": "15763536Ki", "ephemeral-storage": "452Gi", "pods": "110"},
        taints=[
            {"key": "stoker.dev/build-node", "value": "true", "effect": "NoSchedule"},
            {
                "key": "node.kubernetes.io/unschedulable",
                "effect": "NoSchedule",
                "timeAdded": "2026-01-05T10:00:00Z",
            },
        ],
    )
    with api_server.api_client() as api:
        facts = read_node_facts("build-1", api_client=api)

    assert facts == NodeFacts(
        name="build-1",
        zone="eu-west-1a",
        instance_type="m7gd.2xlarge",
        cpus=3,  # 3.5 cores, rounded down
        memory_bytes=15763536 * 1024,
        taints=("stoker.dev/build-node=true:NoSchedule", "node.kubernetes.io/unschedulable:NoSchedule"),
        labels=labels,
    )
    assert api_server.requests == [("GET", "/api/v1/nodes/build-1", f"Bearer {TOKEN}")]


@pytest.mark.parametrize(
    ("cpu", "memory", "cpus", "memory_bytes"),
    [
        ("250m", "16Gi", 1, 16 * 1024**3),  # a fraction of a core still counts as one
        ("8", "64G", 8, 64 * 1000**3),
        ("2", "1e9", 2, 10**9),
        ("16", "17179869184", 16, 16 * 1024**3),
    ],
)
def test_quantities_are_parsed_the_kubernetes_way(api_server, cpu, memory, cpus, memory_bytes):
    api_server.nodes["n"] = node_object("n", allocatable={"cpu": cpu, "memory": memory})
    with api_server.api_client() as api:
        facts = read_node_facts("n", api_client=api)
    assert (facts.cpus, facts.memory_bytes) == (cpus, memory_bytes)


def test_unlabelled_node_without_allocatable_gives_empty_facts(api_server):
    api_server.nodes["kind-control-plane"] = node_object("kind-control-plane")
    with api_server.api_client() as api:
        facts = read_node_facts("kind-control-plane", api_client=api)
    assert facts == NodeFacts(name="kind-control-plane")


def test_legacy_beta_labels_are_used_when_the_current_ones_are_missing(api_server):
    api_server.nodes["old"] = node_object(
        "old",
        labels={
            "failure-domain.beta.kubernetes.io/zone": "z9",
            "beta.kubernetes.io/instance-type": "n1-standard-8",
        },
    )
    with api_server.api_client() as api:
        facts = read_node_facts("old", api_client=api)
    assert (facts.zone, facts.instance_type) == ("z9", "n1-standard-8")


def test_missing_node_is_not_found_and_names_the_downward_api(api_server):
    with api_server.api_client() as api, pytest.raises(NodeNotFound) as caught:
        read_node_facts("ip-10-0-0-1", api_client=api)
    err = caught.value
    assert err.status == 404
    assert err.node_name == "ip-10-0-0-1"
    assert "spec.nodeName" in err.reason
    assert 'nodes "ip-10-0-0-1" not found' in err.reason  # the API's own message is passed on
    assert isinstance(err, NodeFactsUnavailable)


def test_forbidden_says_rbac(api_server):
    api_server.forbid = True
    api_server.nodes["build-1"] = node_object("build-1")
    with api_server.api_client() as api, pytest.raises(NodeForbidden) as caught:
        read_node_facts("build-1", api_client=api)
    err = caught.value
    assert err.status == 403
    assert err.reason.startswith("RBAC: the agent's ServiceAccount may not get nodes")
    assert "system:serviceaccount:stoker:stoker-agent" in err.reason
    assert "RBAC" in str(err) and "build-1" in str(err)


def test_rejected_token_is_reported_as_unauthorized(api_server):
    api_server.nodes["build-1"] = node_object("build-1")
    with api_server.api_client(token="expired") as api, pytest.raises(NodeForbidden) as caught:
        read_node_facts("build-1", api_client=api)
    assert caught.value.status == 401
    assert "401 Unauthorized" in caught.value.reason


@pytest.mark.parametrize(
    ("allocatable", "field_name"),
    [
        ({"cpu": "lots", "memory": "16Gi"}, "allocatable cpu"),
        ({"cpu": "4", "memory": "16 gigs"}, "allocatable memory"),
        ({"cpu": "4", "memory": "12Zi"}, "allocatable memory"),
        ({"cpu": "-2", "memory": "16Gi"}, "allocatable cpu"),
        ({"cpu": "NaN", "memory": "16Gi"}, "allocatable cpu"),
        ({"cpu": "4", "memory": "Infinity"}, "allocatable memory"),
    ],
)
def test_unparseable_quantities_are_malformed_with_the_field_and_value(api_server, allocatable, field_name):
    api_server.nodes["n"] = node_object("n", allocatable=allocatable)
    with api_server.api_client() as api, pytest.raises(NodeFactsMalformed) as caught:
        read_node_facts("n", api_client=api)
    reason = caught.value.reason
    bad = allocatable["cpu"] if field_name.endswith("cpu") else allocatable["memory"]
    assert reason.startswith(field_name)
    assert repr(bad) in reason


def test_empty_node_name_is_refused_before_any_request(api_server):
    with api_server.api_client() as api, pytest.raises(NodeNotFound) as caught:
        read_node_facts("", api_client=api)
    assert "STOKER_AGENT_NODE_NAME" in caught.value.reason
    assert api_server.requests == []


def test_unreachable_api_server_is_reported_as_unreachable():
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    cfg.retries = 0
    with client.ApiClient(cfg) as api, pytest.raises(KubernetesApiUnreachable) as caught:
        read_node_facts("build-1", api_client=api, timeout_s=2)
    assert f"127.0.0.1:{port}" in caught.value.reason
    assert caught.value.status is None


def test_outside_a_cluster_without_a_client_is_not_in_cluster(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(NotInCluster) as caught:
        read_node_facts("build-1")
    assert "in-cluster" in caught.value.reason
