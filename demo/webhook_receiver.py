"""A small real HTTP receiver on loopback for webhook notifications (the tests and bench/rollout_faults.py
use it): records every POST (headers and JSON body); can answer 503 to the first N posts, or to all of them
(a receiver that is down)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, *, fail_first: int = 0, always_fail: bool = False) -> None:
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.posts: list[tuple[dict[str, str], dict]] = []
        """Every POST that was answered 2xx: (headers, body)."""
        self.attempts: list[tuple[dict[str, str], dict]] = []
        """Every POST, answered or refused."""
        self._lock = threading.RLock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.attempts.append((headers, body))
                    refuse = receiver.always_fail or len(receiver.attempts) <= receiver.fail_first
                    if not refuse:
                        receiver.posts.append((headers, body))
                self.send_response(503 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        with self._lock:
            return [h.get("x-stoker-event", "") for h, _ in self.posts]

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self):
                    return
            time.sleep(0.05)
        raise AssertionError(
            f"the receiver never saw that; it saw {self.events()} ({len(self.attempts)} tries)"
        )
