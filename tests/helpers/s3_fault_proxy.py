"""A fault-injecting HTTP proxy for S3 on loopback: errors, connection resets, slow and corrupted responses.

It sits between a client (boto3) and a real S3 server (SeaweedFS ``weed mini``) and reads each request's
head to decide what to do with it; everything it lets through is piped byte for byte (a ``Connection: close``
header is added so that one TCP connection carries one request and every request passes the rules).
Rules are matched in order; each has a method, a regular expression on the path and how many more requests
it applies to (``times=None``: all of them). Every request is logged with its time and what was done to it.
"""

from __future__ import annotations

import re
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Rule:
    action: str
    """"error" (answer ``status`` with an S3 error body), "reset" (RST before any answer), "reset_mid_body"
    (relay the head and ``after_bytes`` of the body, then RST), "stall_mid_body" (relay the head and
    ``after_bytes`` of the body, wait ``seconds``, then relay the rest), "delay" (wait ``seconds``, then
    relay), "corrupt" (flip one byte of the body at ``after_bytes``), "throttle" (relay at
    ``bytes_per_s``)."""
    method: str = "GET"
    path: str = r".*"
    times: int | None = None
    status: int = 503
    seconds: float = 0.0
    after_bytes: int = 1024
    bytes_per_s: float = 1e6
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            (self.times is None or self.hits < self.times)
            and method == self.method
            and re.search(self.path, path) is not None
        )


@dataclass
class Seen:
    time: float
    method: str
    path: str
    action: str


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: socketserver.ThreadingTCPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_rules(self, *rules: Rule) -> None:
        with self.lock:
            self.rules = list(rules)

    def requests(self, method: str = "GET", path: str = r".*", action: str | None = None) -> list[Seen]:
        with self.lock:
            return [
                s
                for s in self.seen
                if s.method == method and re.search(path, s.path) and (action is None or s.action == action)
            ]

    def _choose(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    self.seen.append(Seen(time.monotonic(), method, path, rule.action))
                    return rule
            self.seen.append(Seen(time.monotonic(), method, path, "pass"))
            return None

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- one connection ------------------------------------------------------------------------------
    def _handle(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
        raw_head, rest = head.split(b"\r\n\r\n", 1)
        lines = raw_head.split(b"\r\n")
        method, path, _ = lines[0].decode("latin-1").split(" ", 2)
        rule = self._choose(method, path)
        if rule is not None and rule.action == "error":
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>'
                f"{'SlowDown' if rule.status == 503 else 'InternalError'}</Code><Message>injected by the "
                f"test proxy</Message></Error>"
            ).encode()
            client.sendall(
                f"HTTP/1.1 {rule.status} Injected\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            _drain_and_close(client)
            return
        if rule is not None and rule.action == "reset":
            _reset(client)
            return
        if rule is not None and rule.action == "delay":
            time.sleep(rule.seconds)
        headers = [h for h in lines[1:] if not h.lower().startswith(b"connection:")]
        forwarded = b"\r\n".join([lines[0], *headers, b"Connection: close"]) + b"\r\n\r\n" + rest
        try:
            upstream = socket.create_connection(self.upstream, timeout=60)
        except OSError:
            _reset(client)
            return
        with upstream:
            upstream.sendall(forwarded)
            pump = threading.Thread(target=_pipe, args=(client, upstream), daemon=True)
            pump.start()
            self._relay_response(upstream, client, rule)

    def _relay_response(self, upstream: socket.socket, client: socket.socket, rule: Rule | None) -> None:
        body_sent = 0
        header_done = False
        buf = b""
        try:
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                if not header_done:
                    buf += chunk
                    if b"\r\n\r\n" not in buf:
                        continue
                    head, chunk = buf.split(b"\r\n\r\n", 1)
                    if head.startswith(b"HTTP/1.1 100"):  # an interim answer to Expect: 100-continue
                        client.sendall(head + b"\r\n\r\n")
                        buf = chunk
                        if b"\r\n\r\n" not in buf:
                            continue
                        head, chunk = buf.split(b"\r\n\r\n", 1)
                    client.sendall(head + b"\r\n\r\n")
                    header_done = True
                if (
                    rule is not None
                    and rule.action == "reset_mid_body"
                    and body_sent + len(chunk) >= rule.after_bytes
                ):
                    client.sendall(chunk[: max(0, rule.after_bytes - body_sent)])
                    _reset(client)
                    return
                if (
                    rule is not None
                    and rule.action == "stall_mid_body"
                    and not getattr(rule, "_stalled", False)
                    and body_sent + len(chunk) >= rule.after_bytes
                ):
                    cut = max(0, rule.after_bytes - body_sent)
                    client.sendall(chunk[:cut])
                    time.sleep(rule.seconds)
                    rule._stalled = True
                    chunk = chunk[cut:]
                    body_sent += cut
                if (
                    rule is not None
                    and rule.action == "corrupt"
                    and body_sent <= rule.after_bytes < body_sent + len(chunk)
                ):
                    i = rule.after_bytes - body_sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                if rule is not None and rule.action == "throttle":
                    for j in range(0, len(chunk), 8192):
                        client.sendall(chunk[j : j + 8192])
                        time.sleep(min(len(chunk) - j, 8192) / rule.bytes_per_s)
                else:
                    client.sendall(chunk)
                body_sent += len(chunk)
        except OSError:
            pass
        finally:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer sees a connection reset, not an orderly end. (``shutdown(SHUT_RD)``
    first wakes the thread that may be blocked reading the same socket, which would keep it open.)"""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    finally:
        sock.close()


def _drain_and_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()
