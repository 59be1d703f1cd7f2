"""A small HTTP service to roll out: the local target's default instance, the demo's and the tests'.

    python -m stoker.coordinator.rollouts.sample_service --port 8080 --instance i-1 --version v2

Serves ``GET /`` (a short text answer), ``GET /ready`` (200 once ready, 503 otherwise; JSON with the
instance, version and pid) and ``GET /metrics`` (Prometheus text: ``stoker_sample_requests_total{code}`` and
the histogram ``stoker_sample_request_duration_seconds``). Each answer carries ``X-Instance`` and
``X-Version`` headers so a load generator can tell which instance (and version) served it.

Fault switches, from the environment (the rollout spec's ``env`` sets them on the new version):

    STOKER_SAMPLE_ERROR_RATE=0.05     answer this share of requests with 500
    STOKER_SAMPLE_LATENCY_MS=50       add this much latency to every request
    STOKER_SAMPLE_CRASH_AT_START=1    exit with status 3 right after starting
    STOKER_SAMPLE_NEVER_READY=1       /ready always answers 503
    STOKER_SAMPLE_IGNORE_SIGTERM=1    ignore SIGTERM (only SIGKILL stops it)
    STOKER_SAMPLE_STARTUP_S=0.3       become ready this long after starting
    STOKER_SAMPLE_ERRORS_AFTER_S=8    the error rate applies only once the instance has run this long
                                      (a fault that shows late: it passes an early step, fails a later one)

On SIGTERM it stops accepting connections, lets in-flight requests finish, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUESTS_METRIC = "stoker_sample_requests_total"
LATENCY_METRIC = "stoker_sample_request_duration_seconds"


class Faults:
    def __init__(self, environ) -> None:
        self.error_rate = float(environ.get("STOKER_SAMPLE_ERROR_RATE", "0") or 0)
        self.latency_s = float(environ.get("STOKER_SAMPLE_LATENCY_MS", "0") or 0) / 1000.0
        self.crash_at_start = environ.get("STOKER_SAMPLE_CRASH_AT_START", "") in ("1", "true", "yes")
        self.never_ready = environ.get("STOKER_SAMPLE_NEVER_READY", "") in ("1", "true", "yes")
        self.ignore_sigterm = environ.get("STOKER_SAMPLE_IGNORE_SIGTERM", "") in ("1", "true", "yes")
        self.startup_s = float(environ.get("STOKER_SAMPLE_STARTUP_S", "0.2") or 0)
        self.errors_after_s = float(environ.get("STOKER_SAMPLE_ERRORS_AFTER_S", "0") or 0)


class SampleService:
    def __init__(self, instance: str, version: str, faults: Faults) -> None:
        self.instance = instance
        self.version = version
        self.faults = faults
        self.started = time.monotonic()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stoker_sample_requests",
            "Requests served, by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "stoker_sample_request_duration_seconds",
            "Time to answer a request.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        info = Gauge(
            "stoker_sample_info",
            "Which instance and version this is.",
            ["instance", "version"],
            registry=self.registry,
        )
        info.labels(instance, version).set(1)
        for code in ("200", "500"):
            self.requests.labels(code)  # present from the start, at 0
        self.random = random.Random()

    def ready(self) -> bool:
        return not self.faults.never_ready and time.monotonic() - self.started >= self.faults.startup_s

    def make_handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = (
                "HTTP/1.0"  # one request per connection: draining needs no idle-connection care
            )
            server_version = "stoker-sample"

            def log_message(self, format, *args):
                pass

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Instance", service.instance)
                self.send_header("X-Version", service.version)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/ready":
                    ok = service.ready()
                    body = json.dumps(
                        {
                            "ready": ok,
                            "instance": service.instance,
                            "version": service.version,
                            "pid": os.getpid(),
                        }
                    ).encode()
                    self._send(200 if ok else 503, body, "application/json")
                    return
                if path == "/metrics":
                    self._send(200, generate_latest(service.registry), "text/plain; version=0.0.4")
                    return
                start = time.perf_counter()
                if service.faults.latency_s:
                    time.sleep(service.faults.latency_s)
                late = time.monotonic() - service.started < service.faults.errors_after_s
                failed = not late and service.random.random() < service.faults.error_rate
                code = 500 if failed else 200
                body = (
                    f"{'error' if failed else 'hello'} from {service.instance} ({service.version})\n"
                ).encode()
                self._send(code, body)
                service.latency.observe(time.perf_counter() - start)
                service.requests.labels(str(code)).inc()

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--instance", default="sample")
    parser.add_argument("--version", default="v1")
    args = parser.parse_args(argv)
    faults = Faults(os.environ)
    if faults.crash_at_start:
        print(
            f"{args.instance}: crashing at start (STOKER_SAMPLE_CRASH_AT_START)", file=sys.stderr, flush=True
        )
        return 3
    service = SampleService(args.instance, args.version, faults)
    server = ThreadingHTTPServer((args.host, args.port), service.make_handler())
    server.daemon_threads = False
    server.block_on_close = True  # server_close() waits for in-flight requests

    def on_sigterm(signum, frame):
        if faults.ignore_sigterm:
            print(f"{args.instance}: ignoring SIGTERM", file=sys.stderr, flush=True)
            return
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
