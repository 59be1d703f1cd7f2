"""Server plumbing both services use: health, reflection, metrics over HTTP."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)

log = logging.getLogger(__name__)

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    """Serve grpc.health.v1 (overall and per service) and reflection for ``service_names``."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = list(service_names)
    reflector = reflection.aio.ReflectionServicer(
        names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, server)
    # grpcio-reflection serves only v1alpha; grpcurl, Postman and grpc-js ask for v1 first. The two are the
    # same messages on the wire under another package name, so the same servicer answers both.
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        reflector.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    return servicer


async def set_serving(
    servicer: health.aio.HealthServicer, service_names: Iterable[str], serving: bool
) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await servicer.set(name, status)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


class ListenError(OSError):
    """A server cannot listen where it was told to (the port is taken, or the address is not this
    machine's): said in one line, at start."""


GRPC_SERVER_OPTIONS = [("grpc.so_reuseport", 0)]
"""gRPC enables SO_REUSEPORT by default: a second server on a busy port then binds it too and the kernel
splits the connections between the two processes. Off, a busy port fails the start."""


def add_port(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Listen on ``address`` (with TLS when ``credentials``); the port, or ListenError."""
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises on a failed bind (older versions returned 0)
        port = 0
    if port == 0:
        raise ListenError(
            f"cannot listen on {address}: the port is in use, or the address is not this machine's"
        )
    return port


def metrics_registry() -> CollectorRegistry:
    """A registry for a server's /metrics: its own metrics plus the process's (CPU, memory, open files),
    Python's and its garbage collector's, as prometheus_client's default registry would have them. The
    ``_created`` series every counter and histogram would get are off: nothing reads them, and they double
    the series a scrape stores."""
    disable_created_metrics()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsServer:
    """Prometheus text exposition of ``registry`` on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, _, port = address.rpartition(":")
        try:
            self._httpd: WSGIServer = make_server(
                host or "127.0.0.1", int(port), make_wsgi_app(registry), handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ListenError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
        self.port = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` reaches this machine only: the host is resolved, and every address it resolves
    to must be a loopback one (``127.attacker.example`` is a name like any other, and an empty host or
    ``0.0.0.0`` means every interface). A host that does not resolve is not loopback. A unix socket is."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    address = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    resolved = {str(info[4][0]) for info in infos}
    return bool(resolved) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in resolved)


def write_ready_file(path: str, doc: dict) -> None:
    """Write ``doc`` as JSON atomically, for a parent process waiting to learn the ports."""
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(target)
