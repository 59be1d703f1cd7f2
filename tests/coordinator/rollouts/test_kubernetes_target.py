"""The Kubernetes target with the official ``kubernetes`` client, against a small fake API server.

No Kubernetes API server can run on these machines, so this test starts, in a thread, a real HTTP server that
speaks the subset of the Kubernetes API the target uses — list/get/create/replace Deployments
(``/apis/apps/v1/namespaces/{ns}/deployments``) and list Pods (``/api/v1/namespaces/{ns}/pods``), label
selectors, ``generation``/``observedGeneration``, ``resourceVersion``, 404/409 errors as ``Status`` objects —
and stands in for the Deployment controller and kubelets instantly: every read derives the pods and the
Deployment status from the current spec (images containing ``crashloop`` restart and never get ready). So this
checks what the adapter sends and how it reads what it gets back, over real HTTP through the real client; it
does not check a real controller's timing. The rollout engine drives it with an in-memory metrics port.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import kubernetes
import pytest
from prometheus_client import CollectorRegistry

from stoker.coordinator.core.clock import SystemClock
from stoker.coordinator.core.errors import FailedPrecondition
from stoker.coordinator.core.metrics import CoordinatorMetrics
from stoker.coordinator.rollouts.engine import RolloutEngine
from stoker.coordinator.rollouts.judge import Counters
from stoker.coordinator.rollouts.machine import Phase, Spec
from stoker.coordinator.rollouts.settings import RolloutSettings
from stoker.coordinator.rollouts.store import MemoryRolloutStore
from stoker.coordinator.rollouts.targets.kubernetes import PREVIOUS, VERSION, KubernetesTarget

pytestmark = pytest.mark.integration


class FakeKubernetes:
    def __init__(self) -> None:
        self.deployments: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.rv = 100
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- the fake controller: status and pods from the spec, at read time
    def _status(self, d: dict) -> dict:
        n = d["spec"].get("replicas", 1)
        healthy = "crashloop" not in d["spec"]["template"]["spec"]["containers"][0].get("image", "")
        d = copy.deepcopy(d)
        d["status"] = {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n if healthy else 0,
            "availableReplicas": n if healthy else 0,
        }
        return d

    def _pods(self, ns: str) -> list[dict]:
        pods = []
        for (dns, name), d in self.deployments.items():
            if dns != ns:
                continue
            t = d["spec"]["template"]
            healthy = "crashloop" not in t["spec"]["containers"][0].get("image", "")
            h = hashlib.sha256(json.dumps(t, sort_keys=True).encode()).hexdigest()[:6]
            for i in range(d["spec"].get("replicas", 1)):
                pods.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": f"{name}-{h}-{i}",
                            "namespace": ns,
                            "labels": t["metadata"].get("labels", {}),
                            "annotations": t["metadata"].get("annotations", {}),
                        },
                        "status": {
                            "phase": "Running",
                            "podIP": f"10.0.{len(pods) // 250}.{len(pods) % 250 + 1}",
                            "conditions": [{"type": "Ready", "status": "True" if healthy else "False"}],
                            "containerStatuses": [{"name": "app", "restartCount": 0 if healthy else 3}],
                        },
                    }
                )
        return pods

    @staticmethod
    def _matches(obj: dict, selector: str) -> bool:
        labels = obj["metadata"].get("labels", {}) or {}
        for term in filter(None, selector.split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        return True

    def _handler(self):
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": reason,
                        "message": message,
                        "code": code,
                    },
                )

            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                fake.requests.append((method, url.path))
                with fake.lock:
                    if parts[:2] == ["api", "v1"] and parts[4:] == ["pods"] and method == "GET":
                        pods = [p for p in fake._pods(parts[3]) if fake._matches(p, selector)]
                        return self._send(
                            200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods}
                        )
                    if (
                        parts[:3] != ["apis", "apps", "v1"]
                        or parts[5:6] != []
                        and parts[5] != "deployments"
                        or len(parts) < 6
                    ):
                        return self._status(404, "NotFound", f"no route {url.path}")
                    ns = parts[4]
                    name = parts[6] if len(parts) > 6 else None
                    key = (ns, name)
                    if method == "GET" and name is None:
                        items = [
                            fake._status(d)
                            for (dns, _), d in sorted(fake.deployments.items())
                            if dns == ns and fake._matches(d, selector)
                        ]
                        return self._send(
                            200,
                            {
                                "kind": "DeploymentList",
                                "apiVersion": "apps/v1",
                                "metadata": {},
                                "items": items,
                            },
                        )
                    if method == "GET":
                        if key not in fake.deployments:
                            return self._status(404, "NotFound", f'deployments.apps "{name}" not found')
                        return self._send(200, fake._status(fake.deployments[key]))
                    if method == "POST":
                        body = self._body()
                        key = (ns, body["metadata"]["name"])
                        if key in fake.deployments:
                            return self._status(409, "AlreadyExists", "already exists")
                        fake.rv += 1
                        body["metadata"].update(generation=1, resourceVersion=str(fake.rv), namespace=ns)
                        fake.deployments[key] = body
                        return self._send(201, fake._status(body))
                    if method == "PUT":
                        body = self._body()
                        old = fake.deployments.get(key)
                        if old is None:
                            return self._status(404, "NotFound", "not found")
                        rv = body["metadata"].get("resourceVersion")
                        if rv and rv != old["metadata"]["resourceVersion"]:
                            return self._status(409, "Conflict", "the object has been modified")
                        fake.rv += 1
                        gen = old["metadata"]["generation"] + (body["spec"] != old["spec"])
                        body.pop("status", None)
                        body["metadata"].update(generation=gen, resourceVersion=str(fake.rv))
                        fake.deployments[key] = body
                        return self._send(200, fake._status(body))
                    return self._status(405, "MethodNotAllowed", method)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PUT(self):
                self._route("PUT")

        return H

    def add_service(self, ns: str, service: str, zones, replicas: int, version: str) -> None:
        for zone in zones:
            labels = {"stoker.dev/service": service, "stoker.dev/zone": zone}
            self.rv += 1
            self.deployments[(ns, f"{service}-{zone}")] = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": f"{service}-{zone}",
                    "namespace": ns,
                    "labels": labels,
                    "generation": 1,
                    "resourceVersion": str(self.rv),
                },
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels, "annotations": {VERSION: version}},
                        "spec": {
                            "containers": [
                                {
                                    "name": "app",
                                    "image": f"registry.local/{service}:{version}",
                                    "env": [{"name": "KEEP", "value": "1"}],
                                }
                            ]
                        },
                    },
                },
            }

    def replicas(self, ns: str, name: str) -> tuple[str, int]:
        d = self.deployments.get((ns, name))
        return (
            (d["spec"]["template"]["metadata"]["annotations"][VERSION], d["spec"]["replicas"])
            if d
            else ("", 0)
        )


@pytest.fixture
def fake():
    f = FakeKubernetes()
    f.thread.start()
    yield f
    f.httpd.shutdown()


class CountingMetrics:
    """In-memory metrics port: each sample adds 50 requests per pod; versions listed in ``errors`` answer that
    share with errors (only once the old version is gone, when ``after_surge``)."""

    name = "memory"

    def __init__(self, errors: dict[str, float] | None = None, after_surge: bool = False) -> None:
        self.totals: dict[str, list[int]] = {}
        self.errors = errors or {}
        self.after_surge = after_surge

    async def guardrails(self, spec, instances):
        return []  # this port has no guardrail queries

    async def sample(self, spec, instances):
        versions = {i.version for i in instances}
        out = {}
        for inst in instances:
            t = self.totals.setdefault(inst.address, [0, 0])
            t[0] += 50
            rate = self.errors.get(inst.version, 0.0)
            if rate and (not self.after_surge or len(versions) == 1):
                t[1] += int(50 * rate)
            out[inst.address] = Counters(t[0], t[1], ((0.005, t[0]), (float("inf"), t[0])))
        return out


def run_rollouts(fake, metrics, *specs, prom: CollectorRegistry | None = None, active: dict | None = None):
    """Run ``specs`` one after another to their ends. With ``prom``, the engine exports its metrics there,
    and ``active`` gets, per phase a watched update showed, the rollouts_active gauge read at that moment."""
    settings = RolloutSettings(
        bake_s=1.0,
        post_bake_s=1.0,
        judge_interval_s=0.3,
        min_requests=100,
        tick_s=0.05,
        progress_deadline_s=3.0,
        inconclusive_limit=2,
    )
    api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=fake.url))

    async def go():
        engine = RolloutEngine(
            settings,
            MemoryRolloutStore(),
            {"kubernetes": lambda: KubernetesTarget(api)},
            metrics,
            SystemClock(),
            telemetry=CoordinatorMetrics(prom) if prom is not None else None,
        )
        results = []
        for spec in specs:
            r = await engine.start(spec)
            async for update in engine.watch(r.id):
                r = update
                if prom is not None and active is not None and not r.terminal:
                    phase = {"phase": r.phase.value}
                    active[r.phase.value] = prom.get_sample_value("stoker_coordinator_rollouts_active", phase)
            results.append(r)
        await engine.close()
        return results

    return asyncio.run(asyncio.wait_for(go(), 60))


def spec(version: str, **kw) -> Spec:
    return Spec(
        service="web",
        version=version,
        target="kubernetes",
        namespace="shop",
        canary_percent=5.0,
        bake_s=1.0,
        min_requests=100,
        post_bake_s=1.0,
        **kw,
    )


def test_canary_then_surge_then_success_through_the_client(fake):
    fake.add_service("shop", "web", ["zone-a", "zone-b"], 4, "v1")
    prom, active = CollectorRegistry(), {}
    (r,) = run_rollouts(fake, CountingMetrics(), spec("v2", env={"FEATURE": "on"}), prom=prom, active=active)
    assert r.phase is Phase.SUCCEEDED, r.message
    # the metrics the rollouts dashboard reads: one rollout in each phase while it was there, none after
    assert active.get("baking") == 1 and set(active.values()) == {1}, active
    assert prom.get_sample_value("stoker_coordinator_rollouts_active", {"phase": "baking"}) == 0
    assert prom.get_sample_value("stoker_coordinator_rollouts_ended_total", {"phase": "succeeded"}) == 1
    assert prom.get_sample_value("stoker_coordinator_rollouts_ended_total", {"phase": "rolled_back"}) == 0
    assert prom.get_sample_value("stoker_coordinator_rollout_verdicts_total", {"result": "pass"}) == len(
        r.verdicts
    )
    assert fake.replicas("shop", "web-zone-a") == ("v2", 4) and fake.replicas("shop", "web-zone-b") == (
        "v2",
        4,
    )
    assert fake.replicas("shop", "web-zone-a-canary") == ("v2", 0)
    stable = fake.deployments[("shop", "web-zone-a")]
    container = stable["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/web:v2"
    assert {"name": "FEATURE", "value": "on"} in container["env"] and {
        "name": "KEEP",
        "value": "1",
    } in container["env"]
    assert stable["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert ("POST", "/apis/apps/v1/namespaces/shop/deployments") in fake.requests
    assert r.verdicts[0].result == "pass" and r.verdicts[0].canary_requests >= 100


def test_bad_canary_is_rolled_back_and_the_stable_template_never_changed(fake):
    fake.add_service("shop", "web", ["zone-a", "zone-b"], 4, "v1")
    before = copy.deepcopy(fake.deployments[("shop", "web-zone-a")]["spec"]["template"])
    prom = CollectorRegistry()
    (r,) = run_rollouts(fake, CountingMetrics({"v2": 0.2}), spec("v2"), prom=prom)
    assert r.phase is Phase.ROLLED_BACK and r.verdicts[-1].result == "fail"
    # what the RolloutRolledBack alert and the verdicts panel read
    assert prom.get_sample_value("stoker_coordinator_rollouts_ended_total", {"phase": "rolled_back"}) == 1
    assert prom.get_sample_value("stoker_coordinator_rollout_verdicts_total", {"result": "fail"}) == 1
    assert prom.get_sample_value("stoker_coordinator_rollout_verdicts_total", {"result": "pass"}) == 0
    assert fake.deployments[("shop", "web-zone-a")]["spec"]["template"] == before
    assert (
        fake.replicas("shop", "web-zone-a") == ("v1", 4)
        and fake.replicas("shop", "web-zone-a-canary")[1] == 0
    )


def test_crash_looping_image_fails_the_canary(fake):
    fake.add_service("shop", "web", ["zone-a"], 3, "v1")
    (r,) = run_rollouts(fake, CountingMetrics(), spec("registry.local/web:crashloop"))
    assert r.phase is Phase.ROLLED_BACK and "crash loop" in r.verdicts[-1].reason
    assert fake.replicas("shop", "web-zone-a") == ("v1", 3)


def test_rollback_after_the_surge_restores_the_previous_pod_template(fake):
    fake.add_service("shop", "web", ["zone-a", "zone-b"], 2, "v1")
    before = copy.deepcopy(fake.deployments[("shop", "web-zone-b")]["spec"]["template"])
    (r,) = run_rollouts(fake, CountingMetrics({"v2": 0.5}, after_surge=True), spec("v2"))
    assert r.phase is Phase.ROLLED_BACK, r.message
    assert any("post_bake" in h for h in r.history) and "error rate" in r.verdicts[-1].reason
    after = fake.deployments[("shop", "web-zone-b")]
    assert after["spec"]["template"] == before  # exactly the previous template, env and all
    assert json.loads(after["metadata"]["annotations"][PREVIOUS])["metadata"]["annotations"][VERSION] == "v2"


def test_a_service_without_deployments_is_refused(fake):
    api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=fake.url))
    with pytest.raises(FailedPrecondition, match="no Deployment"):
        asyncio.run(KubernetesTarget(api).prepare(spec("v2")))


def test_a_multi_step_rollout_file_drives_the_deployments_step_by_step(fake):
    """A rollout file naming the kubernetes target, its namespace and its Deployment family (web-<zone> for
    the service storefront): 25 % → 50 % (zone first) → 100 %,
    each step a canary Deployment scaled to the step's count, readiness from the pods (fake API server)."""
    from stoker.coordinator.rollouts import rollout_file

    fake.add_service("shop", "web", ["zone-a", "zone-b"], 4, "v1")
    text = """apiVersion: stoker.dev/v1
kind: Rollout
service: storefront
target: {kind: kubernetes, namespace: shop, deployment: web}
plan:
  bake: 1s
  min_requests: 100
  post_bake: 1s
  steps:
    - share: 25
    - {share: 50, zone_first: true}
    - share: 100
"""
    (r,) = run_rollouts(fake, CountingMetrics(), rollout_file.load(text, "web.yaml").with_version("v2"))
    assert r.phase is Phase.SUCCEEDED, r.message
    assert r.plan[:2] == [
        "step 1/3: 25 % (zone-a 1/4, zone-b 1/4); bake 1 s and >= 100 requests",
        "step 2/3: 50 % (zone-a 2/4, zone-b 2/4), first zone first; bake 1 s and >= 100 requests",
    ]
    assert [v.result for v in r.verdicts] == ["pass", "pass", "pass"]
    assert fake.replicas("shop", "web-zone-a") == ("v2", 4) and fake.replicas("shop", "web-zone-b") == (
        "v2",
        4,
    )
    history = "\n".join(r.history)
    assert (
        "50 % of v2 in zone zone-a first" in history and "first zone ready; the other zones follow" in history
    )
