"""Read this build node's facts from its Kubernetes Node object (an adapter around the official client).

When the agent runs in a cluster it registers with what its Node says: the zone
(``topology.kubernetes.io/zone``), the instance type (``node.kubernetes.io/instance-type``), allocatable
CPU and memory, taints and labels. Out of a cluster, or when the Node cannot be read, the caller uses its
configuration instead (see :mod:`stoker.agent.config`) and logs one warning with the
:class:`NodeFactsUnavailable` reason: the agent must not crash-loop because of missing RBAC.

The only API call is ``GET /api/v1/nodes/{name}``, which the agent's ServiceAccount may make through the
``stoker-agent`` ClusterRole in ``deploy/base``. :func:`read_node_facts` blocks (HTTP); call it from the
agent's executor, not from the event loop.

Errors from the client library (``ApiException``, urllib3 errors, in-cluster configuration errors) are
mapped here, once, to :class:`NodeFactsUnavailable` and its subclasses, so nothing else in the agent
imports ``kubernetes``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

log = logging.getLogger(__name__)

ZONE_LABEL = "topology.kubernetes.io/zone"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
# Older clusters (and some providers) still set only the beta labels.
_LEGACY_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"
_LEGACY_INSTANCE_TYPE_LABEL = "beta.kubernetes.io/instance-type"

DEFAULT_TIMEOUT_S = 5.0


class NodeFactsUnavailable(Exception):
    """The Node could not be read or understood. ``reason`` says why, in words for an operator."""

    def __init__(self, node_name: str, reason: str, *, status: int | None = None):
        super().__init__(f"cannot read Kubernetes node {node_name!r}: {reason}")
        self.node_name = node_name
        self.reason = reason
        self.status = status
        """The HTTP status the API answered with, when it answered at all."""


class NotInCluster(NodeFactsUnavailable):
    """No in-cluster configuration (no service account token or KUBERNETES_SERVICE_HOST)."""


class NodeForbidden(NodeFactsUnavailable):
    """The API refused the agent's credentials (401) or its RBAC does not allow ``get nodes`` (403)."""


class NodeNotFound(NodeFactsUnavailable):
    """No Node has that name (404): the node name is probably not the Kubernetes node name."""


class NodeFactsMalformed(NodeFactsUnavailable):
    """The Node was read but holds something that cannot be used (an unparseable quantity)."""


class KubernetesApiUnreachable(NodeFactsUnavailable):
    """The API server did not answer, or answered with a server error."""


@dataclass(frozen=True)
class NodeFacts:
    """What the agent registers with, read from its Node."""

    name: str
    zone: str = ""
    """topology.kubernetes.io/zone; empty when the node has no zone label."""
    instance_type: str = ""
    """node.kubernetes.io/instance-type; empty when unlabelled (bare metal, kind)."""
    cpus: int = 0
    """Allocatable CPU in whole cores, rounded down, at least 1. 0 when the Node reports none."""
    memory_bytes: int = 0
    """Allocatable memory in bytes. 0 when the Node reports none."""
    taints: tuple[str, ...] = ()
    """Taints as ``key=value:Effect`` (``key:Effect`` when the taint has no value), in the Node's order."""
    labels: dict[str, str] = field(default_factory=dict)
    """All of the Node's labels."""


def read_node_facts(node_name: str, *, api_client=None, timeout_s: float = DEFAULT_TIMEOUT_S) -> NodeFacts:
    """Read the Node named ``node_name`` and return its facts.

    ``api_client`` is a ``kubernetes.client.ApiClient``; when None, one is built from the in-cluster
    configuration (the pod's service account) and closed afterwards. Raises :class:`NodeFactsUnavailable`
    (a subclass that says which failure) with a reason an operator can act on.
    """
    if not node_name:
        raise NodeNotFound(
            node_name,
            "no node name given (set STOKER_AGENT_NODE_NAME from the downward API field spec.nodeName)",
        )
    from kubernetes import client

    owned = api_client is None
    if owned:
        api_client = _in_cluster_client(node_name)
    try:
        node = _get_node(client.CoreV1Api(api_client), node_name, timeout_s)
    finally:
        if owned:
            api_client.close()
    return facts_from_node(node_name, node)


def facts_from_node(node_name: str, node) -> NodeFacts:
    """Turn a ``V1Node`` into :class:`NodeFacts`; :class:`NodeFactsMalformed` for unusable quantities."""
    labels = dict((node.metadata.labels if node.metadata else None) or {})
    allocatable = dict((node.status.allocatable if node.status else None) or {})
    taints = tuple(_taint_text(t) for t in ((node.spec.taints if node.spec else None) or []))
    return NodeFacts(
        name=node_name,
        zone=labels.get(ZONE_LABEL) or labels.get(_LEGACY_ZONE_LABEL, ""),
        instance_type=labels.get(INSTANCE_TYPE_LABEL) or labels.get(_LEGACY_INSTANCE_TYPE_LABEL, ""),
        cpus=_cpu_cores(node_name, allocatable.get("cpu")),
        memory_bytes=_memory_bytes(node_name, allocatable.get("memory")),
        taints=taints,
        labels=labels,
    )


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity ("3500m", "16Gi", "1e3", "129M") as a non-negative Decimal.

    Raises ValueError for anything else, including negative, NaN or infinite values.
    """
    from kubernetes.utils import parse_quantity as _parse

    try:
        value = _parse(str(text).strip())
    except (ValueError, InvalidOperation, ArithmeticError) as exc:
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from exc
    if not value.is_finite() or value < 0:
        raise ValueError(f"{text!r} is not a non-negative finite quantity")
    return value


def _cpu_cores(node_name: str, text: str | None) -> int:
    if text is None:
        return 0
    try:
        cores = parse_quantity(text)
    except ValueError as exc:
        raise NodeFactsMalformed(node_name, f"allocatable cpu {exc}") from exc
    return max(1, int(cores))  # int() of a Decimal truncates: 3.5 cores -> 3


def _memory_bytes(node_name: str, text: str | None) -> int:
    if text is None:
        return 0
    try:
        return int(parse_quantity(text))
    except ValueError as exc:
        raise NodeFactsMalformed(node_name, f"allocatable memory {exc}") from exc


def _taint_text(taint) -> str:
    key = f"{taint.key}={taint.value}" if taint.value else taint.key
    return f"{key}:{taint.effect}"


def _in_cluster_client(node_name: str):
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise NotInCluster(
            node_name, f"no in-cluster Kubernetes configuration ({exc}); not running in a pod?"
        ) from exc
    return client.ApiClient(configuration)


def _get_node(api, node_name: str, timeout_s: float):
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    host = api.api_client.configuration.host
    try:
        return api.read_node(node_name, _request_timeout=timeout_s)
    except ApiException as exc:
        raise _from_api_exception(node_name, exc, host) from exc
    except (Urllib3Error, OSError) as exc:
        raise KubernetesApiUnreachable(
            node_name, f"the Kubernetes API at {host} did not answer: {exc}"
        ) from exc
    except ValueError as exc:  # the client's model rejected the response (a taint without an effect...)
        raise NodeFactsMalformed(node_name, f"the API returned a Node the client cannot read: {exc}") from exc


def _from_api_exception(node_name: str, exc, host: str) -> NodeFactsUnavailable:
    status = exc.status
    detail = _status_message(exc)
    if status == 401:
        return NodeForbidden(
            node_name,
            "the Kubernetes API rejected the agent's credentials (401 Unauthorized): is the ServiceAccount "
            f"token mounted (automountServiceAccountToken)? {detail}",
            status=status,
        )
    if status == 403:
        return NodeForbidden(
            node_name,
            "RBAC: the agent's ServiceAccount may not get nodes (403 Forbidden); bind it to the stoker-agent "
            f"ClusterRole from deploy/base/agent-rbac.yaml. {detail}",
            status=status,
        )
    if status == 404:
        return NodeNotFound(
            node_name,
            "no such Node (404 Not Found): STOKER_AGENT_NODE_NAME must be the Kubernetes node name "
            f"(downward API spec.nodeName). {detail}",
            status=status,
        )
    if status == 0 or status is None or status >= 500 or status == 429:
        return KubernetesApiUnreachable(
            node_name, f"the Kubernetes API at {host} answered {status} {exc.reason}. {detail}", status=status
        )
    return NodeFactsUnavailable(
        node_name, f"the Kubernetes API answered {status} {exc.reason}. {detail}", status=status
    )


def _status_message(exc) -> str:
    """The ``message`` of the API's Status body, when it sent one."""
    import json

    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f"The API said: {message}" if message else ""
