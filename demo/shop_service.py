"""A second sample program, unlike stoker's own: "shop", a catalog service instrumented the way gRPC
servers are (the go-grpc-prometheus conventions, under its own prefix), so rollouts are judged on names and
labels stoker does not choose.

It speaks HTTP/1.1 (the local target's HAProxy balances HTTP), mapped from gRPC the way grpc-gateway maps
it: ``GET /`` is the unary RPC ``shop.v1.Catalog/GetItem``; the answer carries ``grpc-status`` and the
HTTP status grpc-gateway would give it (OK → 200, UNAVAILABLE → 503, INTERNAL → 500).

Metrics (``GET /metrics``):

    shop_grpc_server_handled_total{grpc_service, grpc_method, grpc_code}   per gRPC status (OK, Unavailable…)
    shop_grpc_server_handling_seconds_bucket{grpc_service, grpc_method, le}
    shop_grpc_server_queue_depth                                         a gauge, for a guardrail

Its errors are gRPC status codes, not HTTP codes: a rollout file selects them with
``errors: 'grpc_code=~"Unavailable|Internal|Unknown|DeadlineExceeded"'``.

Faults, from the environment (a rollout file's ``target.env``): ``SHOP_FAIL_RATE`` (share answered
UNAVAILABLE), ``SHOP_FAIL_AFTER_S`` (only once the instance has run this long), ``SHOP_LATENCY_MS``,
``SHOP_QUEUE_DEPTH`` (what the gauge reports). ``GET /ready`` says ready after 0.2 s. SIGTERM: stop
accepting, finish in-flight requests, exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512)
SERVICE, METHOD = "shop.v1.Catalog", "GetItem"
ERRORS = 'grpc_code=~"Unavailable|Internal|Unknown|DeadlineExceeded"'


class Shop:
    def __init__(self, instance: str, version: str, environ) -> None:
        self.instance, self.version = instance, version
        self.fail_rate = float(environ.get("SHOP_FAIL_RATE", "0") or 0)
        self.fail_after_s = float(environ.get("SHOP_FAIL_AFTER_S", "0") or 0)
        self.latency_s = float(environ.get("SHOP_LATENCY_MS", "0") or 0) / 1000.0
        self.started = time.monotonic()
        self.random = random.Random()
        self.registry = CollectorRegistry()
        self.handled = Counter(
            "shop_grpc_server_handled",
            "RPCs completed on the server, by gRPC status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.handling = Histogram(
            "shop_grpc_server_handling_seconds",
            "Time to handle an RPC.",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        queue = Gauge("shop_grpc_server_queue_depth", "RPCs waiting for a worker.", registry=self.registry)
        queue.set(float(environ.get("SHOP_QUEUE_DEPTH", "0") or 0))
        for code in ("OK", "Unavailable"):
            self.handled.labels("unary", SERVICE, METHOD, code)

    def handler(self):
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Instance", shop.instance)
                self.send_header("X-Version", shop.version)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/ready":
                    ok = time.monotonic() - shop.started >= 0.2
                    body = json.dumps({"ready": ok, "instance": shop.instance, "pid": os.getpid()}).encode()
                    self._send(200 if ok else 503, body, {"Content-Type": "application/json"})
                    return
                if path == "/metrics":
                    self._send(200, generate_latest(shop.registry), {"Content-Type": "text/plain"})
                    return
                start = time.perf_counter()
                if shop.latency_s:
                    time.sleep(shop.latency_s)
                faulty = time.monotonic() - shop.started >= shop.fail_after_s
                if faulty and shop.random.random() < shop.fail_rate:
                    code, grpc, name = 503, 14, "Unavailable"
                else:
                    code, grpc, name = 200, 0, "OK"
                body = json.dumps({"item": "kettle", "from": shop.instance}).encode()
                self._send(code, body, {"grpc-status": str(grpc), "Content-Type": "application/json"})
                shop.handling.labels("unary", SERVICE, METHOD).observe(time.perf_counter() - start)
                shop.handled.labels("unary", SERVICE, METHOD, name).inc()

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shop: a second sample service for rollouts")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance", default="shop")
    parser.add_argument("--version", default="v1")
    args = parser.parse_args(argv)
    shop = Shop(args.instance, args.version, os.environ)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), shop.handler())
    server.daemon_threads = False
    server.block_on_close = True

    def on_sigterm(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
