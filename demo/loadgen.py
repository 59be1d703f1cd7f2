"""A small HTTP load generator for rollouts (the demo, the tests and bench/rollout_faults.py use it).

Sends ``GET /`` at a fixed rate to one loopback address, bounded in count *and* time, and records for each
request when it was sent, its status (0 for a connection error or timeout), and the ``X-Version`` header of
the instance that answered ("" when the balancer answered itself, for example 503 with no server up).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Result:
    sent: float
    status: int
    version: str
    latency_s: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class LoadSummary:
    requests: int = 0
    failed: int = 0
    by_version: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"requests": self.requests, "failed": self.failed, "by_version": self.by_version}


def _check_loopback(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise ValueError(f"the load generator only sends traffic to loopback, not {address}")
    return "127.0.0.1" if host == "localhost" else host.strip("[]"), int(port)


class LoadGenerator:
    """``rate`` requests per second to ``address`` from a background thread, until stopped or bounded."""

    def __init__(
        self,
        address: str,
        rate: float = 100.0,
        *,
        max_requests: int = 100_000,
        max_duration_s: float = 300.0,
        timeout_s: float = 5.0,
        concurrency: int = 64,
    ) -> None:
        self.host, self.port = _check_loopback(address)
        self.rate = rate
        self.max_requests = max_requests
        self.max_duration_s = max_duration_s
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LoadGenerator:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Result]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 5)
        return self.results

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _one(self, sem: asyncio.Semaphore) -> None:
        sent = time.time()
        start = time.perf_counter()
        status, version = 0, ""
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(b"GET / HTTP/1.0\r\nHost: sample\r\n\r\n")
                    await writer.drain()
                    data = await reader.read()
                finally:
                    writer.close()
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            parts = head[0].split(" ")
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "x-version":
                    version = value.strip()
        except (OSError, TimeoutError, ValueError):
            status = 0
        finally:
            sem.release()
        self.results.append(Result(sent, status, version, time.perf_counter() - start))

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        tasks = set()
        begin = time.monotonic()
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        n = 0
        while (
            not self._stop.is_set()
            and n < self.max_requests
            and time.monotonic() - begin < self.max_duration_s
        ):
            due = begin + n * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            task = asyncio.create_task(self._one(sem))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout_s + 1)


def summarize(results: list[Result], since: float = 0.0, until: float = float("inf")) -> LoadSummary:
    out = LoadSummary()
    for r in results:
        if not since <= r.sent <= until:
            continue
        out.requests += 1
        key = r.version or "(balancer)"
        row = out.by_version.setdefault(key, {"requests": 0, "failed": 0})
        row["requests"] += 1
        if not r.ok:
            out.failed += 1
            row["failed"] += 1
    return out
