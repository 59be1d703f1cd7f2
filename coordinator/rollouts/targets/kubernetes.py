"""The Kubernetes rollout target, on the official ``kubernetes`` Python client.

A service is a family of Deployments in one namespace, labelled ``stoker.dev/service=<service>``:

- one **stable** Deployment per zone, ``<service>-<zone>`` (label ``stoker.dev/zone``, pods pinned to the
  zone by the manifests' own node affinity), and
- during a canary, one **canary** Deployment per zone, ``<service>-<zone>-canary`` (label
  ``stoker.dev/track=canary``), a copy of the stable one with the new version's pod template.

The version of a pod template is its ``stoker.dev/version`` annotation; the first container's image is the
version when it looks like an image reference (has ``:`` or ``/``), else the stable image's repository with
the version as its tag. ``spec.env`` is merged into the first container's environment.

Converging on a zone's desired state:

- ``{A: n-c, B: c}`` (canary): create or scale the canary Deployment (template B) to ``c``; once its ``c``
  pods are ready, scale the stable Deployment down to ``n-c``.
- ``{B: n}`` (surge) or ``{A: n}`` (rollback): when the stable template is not that version, replace it —
  with the template saved in its ``stoker.dev/previous-template`` annotation when that is the one wanted
  (rollback restores the exact previous pod template), else with a copy carrying the new version — using a
  RollingUpdate strategy with ``maxUnavailable: 0`` so the Deployment controller never drops below its
  replicas; once the stable Deployment reports all ``n`` replicas updated and ready, scale the canary to 0.

Readiness, restarts and addresses come from the pods (``status.conditions`` Ready, ``restartCount``,
``podIP``); rollout progress from Deployment status (``observedGeneration``, ``updatedReplicas``,
``readyReplicas``). Every call is blocking, so each runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any

from stoker.coordinator.core.errors import FailedPrecondition, Unavailable
from stoker.coordinator.rollouts.machine import Instance, Observation, Spec

log = logging.getLogger(__name__)

SERVICE = "stoker.dev/service"
ZONE = "stoker.dev/zone"
TRACK = "stoker.dev/track"
VERSION = "stoker.dev/version"
PREVIOUS = "stoker.dev/previous-template"


def _kube():
    import kubernetes

    return kubernetes


def template_version(template: dict) -> str:
    return ((template.get("metadata") or {}).get("annotations") or {}).get(VERSION, "")


def with_version(template: dict, version: str, env: dict[str, str]) -> dict:
    """A copy of ``template`` running ``version`` (image and annotation) with ``env`` merged in."""
    t = copy.deepcopy(template)
    meta = t.setdefault("metadata", {})
    meta.setdefault("annotations", {})[VERSION] = version
    containers = t.setdefault("spec", {}).setdefault("containers", [{"name": "app"}])
    first = containers[0]
    if ":" in version or "/" in version:
        first["image"] = version
    else:
        image = first.get("image", "")
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        first["image"] = f"{repo}:{version}" if repo else version
    if env:
        current = [e for e in first.get("env", []) if e.get("name") not in env]
        first["env"] = current + [{"name": k, "value": v} for k, v in sorted(env.items())]
    return t


class KubernetesTarget:
    name = "kubernetes"

    def __init__(self, api_client, *, default_namespace: str = "default", metrics_port: int = 8080) -> None:
        k = _kube()
        self.api_client = api_client
        self.apps = k.client.AppsV1Api(api_client)
        self.core = k.client.CoreV1Api(api_client)
        self.default_namespace = default_namespace
        self.metrics_port = metrics_port
        self._env: dict[tuple[str, str], dict[str, str]] = {}

    @classmethod
    def from_settings(cls, settings) -> KubernetesTarget:
        k = _kube()
        try:
            try:
                k.config.load_incluster_config()
                namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read().strip()
            except k.config.ConfigException:
                k.config.load_kube_config(context=settings.kube_context or None)
                namespace = "default"
        except (k.config.ConfigException, OSError, TypeError) as exc:
            raise FailedPrecondition(
                f"the kubernetes target has no cluster configuration (in-cluster service "
                f"account or kubeconfig): {exc}"
            ) from exc
        return cls(
            k.client.ApiClient(), default_namespace=namespace, metrics_port=settings.kube_container_port
        )

    def check(self) -> None:
        pass

    def endpoint(self, spec: Spec) -> str:
        return ""

    async def close(self) -> None:
        pass

    # ------------------------------------------------------------------ API calls (blocking; in threads)

    def _call(self, fn, *args, **kwargs) -> Any:
        k = _kube()
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=10, **kwargs)
            return json.loads(resp.data or b"null")
        except k.client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status in (400, 403, 409, 422):
                raise FailedPrecondition(
                    f"Kubernetes refused {fn.__name__}: {exc.status} {exc.reason}: {(exc.body or '')[:300]}"
                ) from exc
            raise Unavailable(f"Kubernetes API {fn.__name__}: {exc.status} {exc.reason}") from exc
        except Exception as exc:  # urllib3 connection errors and timeouts
            if isinstance(exc, (FailedPrecondition, Unavailable)):
                raise
            raise Unavailable(f"Kubernetes API {fn.__name__}: {type(exc).__name__}: {exc}") from exc

    def _ns(self, spec: Spec) -> str:
        return spec.namespace or self.default_namespace

    def _deployments(self, spec: Spec) -> list[dict]:
        data = self._call(
            self.apps.list_namespaced_deployment, self._ns(spec), label_selector=f"{SERVICE}={spec.family}"
        )
        return list((data or {}).get("items", []))

    def _pods(self, spec: Spec) -> list[dict]:
        data = self._call(
            self.core.list_namespaced_pod, self._ns(spec), label_selector=f"{SERVICE}={spec.family}"
        )
        return list((data or {}).get("items", []))

    # ------------------------------------------------------------------ the port

    async def prepare(self, spec: Spec) -> None:
        self._env[(spec.service, spec.version)] = dict(spec.env)
        deployments = await asyncio.to_thread(self._deployments, spec)
        if not deployments:
            raise FailedPrecondition(
                f"no Deployment labelled {SERVICE}={spec.family} in namespace "
                f"{self._ns(spec)}: deploy the service's per-zone Deployments first"
            )

    def _observe(self, spec: Spec) -> Observation:
        deployments = {d["metadata"]["name"]: d for d in self._deployments(spec)}
        out = []
        for pod in self._pods(spec):
            meta = pod.get("metadata", {})
            labels = meta.get("labels", {}) or {}
            status = pod.get("status", {}) or {}
            if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
                leaving = True
            else:
                leaving = False
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
            )
            restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses", []) or [])
            version = (meta.get("annotations") or {}).get(VERSION, "")
            ip = status.get("podIP", "")
            out.append(
                Instance(
                    id=meta.get("name", ""),
                    zone=labels.get(ZONE, ""),
                    version=version,
                    ready=ready and not leaving,
                    restarts=restarts,
                    leaving=leaving,
                    address=f"{ip}:{self.metrics_port}" if ip else "",
                )
            )
        # A Deployment whose controller has not caught up yet counts as not converged.
        for d in deployments.values():
            st = d.get("status", {}) or {}
            if st.get("observedGeneration", 0) < d["metadata"].get("generation", 0):
                out.append(
                    Instance(
                        id=d["metadata"]["name"] + "/pending",
                        zone=d["metadata"]["labels"].get(ZONE, ""),
                        version=template_version(d["spec"]["template"]),
                        ready=False,
                        leaving=True,
                    )
                )
        return Observation(tuple(out))

    async def observe(self, spec: Spec) -> Observation:
        return await asyncio.to_thread(self._observe, spec)

    async def converge(self, spec: Spec, desired: dict[str, dict[str, int]]) -> None:
        await asyncio.to_thread(self._converge, spec, desired)

    def _converge(self, spec: Spec, desired: dict[str, dict[str, int]]) -> None:
        ns = self._ns(spec)
        deployments = {d["metadata"]["name"]: d for d in self._deployments(spec)}
        for zone, want in sorted(desired.items()):
            want = {v: n for v, n in want.items() if n > 0}
            stable_name = f"{spec.family}-{zone}"
            canary_name = f"{stable_name}-canary"
            stable = deployments.get(stable_name)
            canary = deployments.get(canary_name)
            if stable is None:
                raise FailedPrecondition(f"Deployment {ns}/{stable_name} is missing (zone {zone})")
            stable_version = template_version(stable["spec"]["template"])
            if len(want) >= 2:
                # canary: stable keeps its version; the canary Deployment runs the other one
                others: list[tuple[str | None, int]] = [
                    (v, n) for v, n in want.items() if v != stable_version
                ]
                ((new_version, c),) = others[:1] or [(None, 0)]
                if new_version is None:
                    raise FailedPrecondition(
                        f"zone {zone}: desired {want} does not include the stable version {stable_version}"
                    )
                if canary is None or template_version(canary["spec"]["template"]) != new_version:
                    canary = self._put_canary(
                        ns,
                        stable,
                        canary,
                        canary_name,
                        new_version,
                        c,
                        self._env.get((spec.service, new_version), spec.env),
                    )
                elif canary["spec"].get("replicas") != c:
                    canary["spec"]["replicas"] = c
                    canary = self._call(self.apps.replace_namespaced_deployment, canary_name, ns, canary)
                if self._ready(canary, c, new_version):
                    keep = want.get(stable_version, 0)
                    if stable["spec"].get("replicas") != keep:
                        stable["spec"]["replicas"] = keep
                        self._call(self.apps.replace_namespaced_deployment, stable_name, ns, stable)
                continue
            ((version, n),) = want.items()
            if stable_version != version or stable["spec"].get("replicas") != n:
                template = stable["spec"]["template"]
                annotations = stable["metadata"].setdefault("annotations", {}) or {}
                stable["metadata"]["annotations"] = annotations
                if stable_version != version:
                    previous = json.loads(annotations.get(PREVIOUS, "null") or "null")
                    if previous and template_version(previous) == version:
                        new_template = previous  # rollback: the exact previous pod template
                    else:
                        new_template = with_version(
                            template, version, self._env.get((spec.service, version), {})
                        )
                    annotations[PREVIOUS] = json.dumps(template, sort_keys=True)
                    stable["spec"]["template"] = new_template
                stable["spec"]["replicas"] = n
                stable["spec"]["strategy"] = {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"},
                }
                stable = self._call(self.apps.replace_namespaced_deployment, stable_name, ns, stable)
            if (
                canary is not None
                and self._ready(stable, n, version)
                and canary["spec"].get("replicas", 0) != 0
            ):
                canary["spec"]["replicas"] = 0
                self._call(self.apps.replace_namespaced_deployment, canary_name, ns, canary)

    def _put_canary(
        self,
        ns: str,
        stable: dict,
        canary: dict | None,
        name: str,
        version: str,
        replicas: int,
        env: dict[str, str],
    ) -> dict:
        template = with_version(stable["spec"]["template"], version, env)
        template.setdefault("metadata", {}).setdefault("labels", {})[TRACK] = "canary"
        labels = dict(stable["metadata"].get("labels", {}) or {})
        labels[TRACK] = "canary"
        selector = copy.deepcopy(stable["spec"].get("selector", {"matchLabels": {}}))
        selector.setdefault("matchLabels", {})[TRACK] = "canary"
        body: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": selector,
                "template": template,
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"},
                },
            },
        }
        if canary is None:
            log.info("creating canary Deployment %s/%s with %s x%d", ns, name, version, replicas)
            return self._call(self.apps.create_namespaced_deployment, ns, body)
        body["metadata"]["resourceVersion"] = canary["metadata"].get("resourceVersion")
        return self._call(self.apps.replace_namespaced_deployment, name, ns, body)

    @staticmethod
    def _ready(deployment: dict | None, replicas: int, version: str) -> bool:
        if deployment is None:
            return False
        st = deployment.get("status", {}) or {}
        return (
            template_version(deployment["spec"]["template"]) == version
            and st.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and st.get("updatedReplicas", 0) >= replicas
            and st.get("readyReplicas", 0) >= replicas
            and st.get("replicas", 0) == replicas
        )
