"""Coordinator load benchmark (issue 7, item 4): a large simulated fleet and many CI clients against one
real coordinator process on loopback.

    python bench/load.py --json                               # 1,000 agents x 1,000 keys, 200 placements/s
    python bench/load.py --json --agents 50 --keys 100 --seconds 5    # the reduced size CI runs

What runs, all on 127.0.0.1:
- one coordinator, started with ``stoker.demo.local_fleet.start_coordinator`` (a real ``stoker coordinator``
  process with a SQLite state file) on a fixed port so that it can be restarted on the same one;
- ``--agent-procs`` processes, each an asyncio loop holding its share of the simulated agents. Each agent
  is what the real agent looks like on the wire: ``Register``, then a ``Connect`` stream whose first
  message is a full ``InventorySnapshot`` of its ``--keys`` entries (each with a ``--sketch-k``-value content
  sketch, 64 as real agents send, the same for every replica of a key), then heartbeats every interval the
  coordinator asks for, ``InventoryDelta`` messages with consecutive generations (a touched entry, and now
  and then an evicted entry replaced by a new one), a fresh snapshot when the coordinator asks for one,
  and the real agent's reconnect rule (exponential backoff from 0.2 s to 10 s with jitter). Each agent
  has its own channel (its own TCP connection), as real nodes do;
- one process of CI clients (``--clients`` channels) that issues ``PlaceBuild`` at ``--rate`` per second
  (open loop: arrivals follow the clock, not the answers) and ``ReleasePlacement`` right after each.

Phases: register the fleet (until the coordinator lists every agent's every key); ``--seconds`` of
placements with background deltas and heartbeats; ``--saturate-seconds`` of agents sending deltas as fast
as their streams take them (``updates_per_s`` is what the coordinator *counted* on its
``stoker_coordinator_agent_messages_total{kind="delta"}`` metric, divided by the time); a check that every
node's generation on the coordinator equals the agent's; then kill -9 the coordinator, restart it on the
same port with the same state file, and time until ``QueryInventory`` lists every agent's every key again
(``inventory_recovery_s``, measured from the kill). ``memory_mib`` is the coordinator's peak RSS, sampled
from /proc every 0.25 s over the whole run (both coordinator processes); ``memory_placement_phase_mib`` is
its RSS every 30 s of the placement phase, ``memory_growth_kib_per_1k_placements`` the growth over that
phase per thousand placements, and ``scheduler_tracked`` what the scheduler remembers at its end (the
``stoker_coordinator_scheduler_tracked`` gauge: every kind is bounded).

Where things run: in a real deployment the coordinator has its machine and the agents and CI clients run
elsewhere. On one machine the benchmark keeps the load generator from taking the CPU the coordinator and
the measuring clients need: the simulated agents run at ``--agent-nice`` (10) and, with ``--pin agents``
(the default), on the last CPU only; the coordinator and the CI clients run at ``--priority-nice`` (-5,
when permitted) on any CPU. ``--pin split`` binds the coordinator to the first CPU and everything else to
the others instead (on a machine shared with other work it leaves the coordinator cornered on one busy
core); ``--pin off`` lets the kernel put everything anywhere. The JSON's ``cpu_placement`` records what was
done, down to the CPUs each coordinator thread was allowed.

Beside the client's placement latency the JSON breaks down where time goes: the coordinator's own handler
time (``server_placement_p50/p99_ms``) and event-loop lag (``loop_lag_p50/p99_ms``), its garbage
collector's pauses by generation, its threads' CPU, the CI client's own loop lag (a 10 ms timer) and its
collector's pauses, the CPU each side used, and which seconds of the phase had placements over 10 ms.

``--profile DIR`` records the coordinator with py-spy during the placement phase and prints the functions
that dominate (py-spy must be on PATH or given with ``--py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from stoker.common import scopes

ROOT = Path(__file__).resolve().parent.parent

KEY_FMT = "ws-{w:03d}/deps-{v:07d}"
WORKSPACES = 100


# ---------------------------------------------------------------------------------------------------
# the simulated agents (run in child processes)


def agent_name(i: int) -> str:
    return f"sim-{i:05d}"


_SCOPED = False
"""With ``--scoped``: each key lives in its workspace's protected cache scope, as the coordinator stores a ci
token's builds' keys (issue 16), and the CI clients send each build's scope as its token would."""


def raw_key(k: int) -> str:
    """The key as a build names it."""
    return KEY_FMT.format(w=k % WORKSPACES, v=k)


def key_of(k: int) -> str:
    """The key as nodes store it."""
    return scopes.protected(f"ws-{k % WORKSPACES:03d}") + raw_key(k) if _SCOPED else raw_key(k)


_sketches: dict[str, bytes] = {}


def sketch_of(key: str, k: int) -> bytes:
    """The content sketch agents report for ``key``: ``k`` sorted 64-bit values (a real agent sends 64, the
    bottom-k MinHash of the entry's digests), packed as on the wire. The same for every replica of a key, as
    real content is."""
    from stoker.common import sketch

    packed = _sketches.get(key)
    if packed is None:
        rng = random.Random(key)
        packed = _sketches[key] = sketch.pack(sorted(rng.getrandbits(64) for _ in range(k)))
    return packed


class SimAgent:
    """One simulated node: its inventory, its generation, and its stream to the coordinator."""

    def __init__(self, index: int, keys: int, key_space: int, slots: int, sketch_k: int) -> None:
        from stoker.v1 import agent_pb2

        self.index = index
        self.sketch_k = sketch_k
        self.name = agent_name(index)
        self.rng = random.Random(index)
        self.key_space = key_space
        now = time.time()
        self.entries: dict[str, object] = {}
        for k in self.rng.sample(range(key_space), keys):
            self.entries[key_of(k)] = self._entry(key_of(k), now - self.rng.uniform(0, 86400 * 7))
        self.keys = list(self.entries)
        """The entries' keys in a list, for drawing one without building a list per delta."""
        self.generation = self.rng.randrange(1, 1000)
        self.registration = agent_pb2.RegisterRequest(
            node=self.name,
            zone=f"zone-{index % 3}",
            slots=slots,
            disk_capacity_bytes=500 << 30,
            labels={"pool": "sim"},
            agent_version="load-sim",
            cpus=8,
            memory_bytes=32 << 30,
            executor="podman",  # as a deployed node: the coordinator keeps builds off unsandboxed ones
        )
        self.connected = False
        self.connects = 0
        self.register_failures = 0
        self.deltas_sent = 0
        self.snapshots_sent = 0
        self.heartbeats_sent = 0
        self.change_keys = False
        """Whether deltas may evict an entry and add another (off while the parent checks key sets)."""
        self.last_error = ""
        self.unexpected: Counter = Counter()
        """Exceptions other than RPC and OS errors that broke a stream, by type."""
        self.phase = "booting"
        """Where the agent is: booting, register, connect, stream, backoff (reported with the status)."""

    def _entry(self, key: str, created: float):
        from stoker.v1 import common_pb2

        e = common_pb2.CacheEntry(
            key=key,
            bytes=self.rng.randrange(10 << 20, 2 << 30),
            files=self.rng.randrange(100, 50_000),
            sketch=sketch_of(key, self.sketch_k) if self.sketch_k else b"",
        )
        e.created.FromNanoseconds(int(created * 1e9))
        e.last_used.FromNanoseconds(int(max(created, time.time() - self.rng.uniform(0, 3600)) * 1e9))
        return e

    def snapshot(self):
        from stoker.v1 import agent_pb2

        return agent_pb2.InventorySnapshot(generation=self.generation, entries=list(self.entries.values()))

    def heartbeat(self):
        from stoker.v1 import agent_pb2

        used = len(self.entries) * (100 << 20)
        return agent_pb2.Heartbeat(
            free_slots=self.registration.slots,
            disk_used_bytes=used,
            disk_free_bytes=(500 << 30) - used,
            generation=self.generation,
        )

    def next_delta(self):
        """The next change of the store: mostly a touched entry (LRU), sometimes an eviction plus a save."""
        from stoker.v1 import agent_pb2

        self.generation += 1
        delta = agent_pb2.InventoryDelta(generation=self.generation)
        i = self.rng.randrange(len(self.keys))
        if self.change_keys and self.rng.random() < 0.2:
            victim = self.keys[i]
            del self.entries[victim]
            delta.removed.append(victim)
            while True:
                new = key_of(self.rng.randrange(self.key_space))
                if new not in self.entries:
                    break
            self.keys[i] = new
            self.entries[new] = self._entry(new, time.time())
            delta.upserted.append(self.entries[new])
        else:
            e = self.entries[self.keys[i]]
            e.last_used.FromNanoseconds(time.time_ns())
            delta.upserted.append(e)
        return delta


class AgentPool:
    """The agents of one process, and how fast they should send deltas."""

    def __init__(
        self,
        address: str,
        indices: list[int],
        keys: int,
        key_space: int,
        slots: int,
        delta_interval_s: float,
        sketch_k: int,
    ) -> None:
        self.address = address
        self.agents = [SimAgent(i, keys, key_space, slots, sketch_k) for i in indices]
        self.delta_interval_s = delta_interval_s
        self.saturate = asyncio.Event()
        self.stop = asyncio.Event()

    async def run_agent(self, agent: SimAgent) -> None:
        import grpc

        from stoker.v1 import agent_pb2_grpc

        delay = 0.2
        await asyncio.sleep(random.uniform(0, 1.0))  # nodes do not all boot in the same millisecond
        while not self.stop.is_set():
            began = time.monotonic()
            agent.phase = "register"
            try:
                async with grpc.aio.insecure_channel(
                    self.address,
                    options=[
                        ("grpc.keepalive_time_ms", 20_000),
                        ("grpc.keepalive_timeout_ms", 10_000),
                        ("grpc.max_receive_message_length", 64 << 20),
                    ],
                ) as channel:
                    await self._connect_once(agent, agent_pb2_grpc.AgentGatewayStub(channel))
            except grpc.aio.AioRpcError as exc:
                agent.last_error = f"{exc.code().name}: {exc.details()}"
            except (TimeoutError, OSError) as exc:
                agent.last_error = repr(exc)
            except Exception as exc:
                agent.last_error = repr(exc)
                agent.unexpected[type(exc).__name__] += 1
            finally:
                agent.connected = False
            if self.stop.is_set():
                break
            if time.monotonic() - began > 30:
                delay = 0.2
            agent.phase = "backoff"
            try:
                await asyncio.wait_for(self.stop.wait(), min(delay, 10.0) * random.uniform(0.5, 1.0))
            except TimeoutError:
                pass
            delay = min(delay * 2, 10.0)

    async def _connect_once(self, agent: SimAgent, stub) -> None:
        from stoker.v1 import agent_pb2

        try:
            reply = await stub.Register(agent.registration, timeout=30)
        except Exception:
            agent.register_failures += 1
            raise
        agent.phase = "connect"
        call = stub.Connect()
        write_lock = asyncio.Lock()

        async def write(message) -> None:
            async with write_lock:
                await call.write(message)

        await write(agent_pb2.AgentMessage(session_id=reply.session_id, snapshot=agent.snapshot()))
        agent.snapshots_sent += 1
        await write(agent_pb2.AgentMessage(heartbeat=agent.heartbeat()))
        agent.connects += 1
        agent.connected = True
        agent.phase = "stream"
        interval = reply.heartbeat_interval_s or 2.0

        async def heartbeats() -> None:
            while True:
                await asyncio.sleep(interval * random.uniform(0.9, 1.1))
                await write(agent_pb2.AgentMessage(heartbeat=agent.heartbeat()))
                agent.heartbeats_sent += 1

        async def deltas() -> None:
            await asyncio.sleep(random.uniform(0, self.delta_interval_s))
            while True:
                if self.saturate.is_set():
                    await write(agent_pb2.AgentMessage(delta=agent.next_delta()))
                    agent.deltas_sent += 1
                    await asyncio.sleep(0)
                    continue
                await write(agent_pb2.AgentMessage(delta=agent.next_delta()))
                agent.deltas_sent += 1
                await asyncio.sleep(self.delta_interval_s * random.uniform(0.5, 1.5))

        async def commands() -> None:
            async for command in call:
                if command.WhichOneof("command") == "snapshot_request":
                    await write(agent_pb2.AgentMessage(snapshot=agent.snapshot()))
                    agent.snapshots_sent += 1

        tasks = [asyncio.create_task(t) for t in (heartbeats(), deltas(), commands(), self.stop.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        finally:
            for t in tasks:
                t.cancel()
            call.cancel()
            # A broken stream fails several tasks at once, some after being cancelled: collect every
            # exception.
            await asyncio.gather(*tasks, return_exceptions=True)

    def status(self, with_keys: bool) -> dict:
        out = {}
        for a in self.agents:
            out[a.name] = {
                "connected": a.connected,
                "generation": a.generation,
                "connects": a.connects,
                "register_failures": a.register_failures,
                "deltas": a.deltas_sent,
                "snapshots": a.snapshots_sent,
                "heartbeats": a.heartbeats_sent,
                "error": a.last_error,
                "phase": a.phase,
                "unexpected": dict(a.unexpected),
            }
            if with_keys:
                out[a.name]["keys"] = sorted(a.entries)
        return out


def agent_process(
    address: str,
    indices: list[int],
    keys: int,
    key_space: int,
    slots: int,
    delta_interval_s: float,
    commands: mp.Queue,
    results: mp.Queue,
    nice: int = 0,
    sketch_k: int = 0,
    scoped: bool = False,
) -> None:
    """Child process: run the agents of ``indices`` until told to stop; answer the parent's commands."""
    global _SCOPED
    _SCOPED = scoped
    os.setpriority(os.PRIO_PROCESS, 0, nice)  # before grpc starts threads, so that they inherit it

    async def main() -> None:
        pool = AgentPool(address, indices, keys, key_space, slots, delta_interval_s, sketch_k)
        runners = [asyncio.create_task(pool.run_agent(a)) for a in pool.agents]
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, commands.get)
            op = cmd[0]
            if op == "status":
                results.put(("status", pool.status(with_keys=cmd[1])))
            elif op == "saturate":
                pool.saturate.set()
                results.put(("ok", None))
            elif op == "calm":
                pool.saturate.clear()
                results.put(("ok", None))
            elif op in ("freeze_keys", "thaw_keys"):
                for a in pool.agents:
                    a.change_keys = op == "thaw_keys"
                results.put(("ok", None))
            elif op == "stop":
                pool.stop.set()
                await asyncio.wait(runners, timeout=10)
                results.put(("ok", None))
                return

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------
# the CI clients (a child process)


def ci_process(
    address: str,
    rate: float,
    seconds: float,
    clients: int,
    workspaces: int,
    key_space: int,
    results: mp.Queue,
    warmup: float = 0.0,
    go: object = None,
    scoped: bool = False,
    pr_share: float = 0.0,
) -> None:
    """Place builds at ``rate`` for ``warmup`` seconds and report them as ("warm", figures) (none when 0),
    wait for ``go`` (the parent reads the coordinator's counters meanwhile), then place for ``seconds`` and
    report ("ci", figures)."""

    async def main() -> None:
        import grpc

        from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2

        channels = [grpc.aio.insecure_channel(address) for _ in range(clients)]
        stubs = [build_pb2_grpc.BuildsStub(ch) for ch in channels]
        rng = random.Random(7)

        class Figures:
            def __init__(self) -> None:
                self.latencies: list[float] = []
                self.from_schedule: list[float] = []
                self.release: list[float] = []
                self.errors: Counter = Counter()
                self.warmth: Counter = Counter()
                self.started_at: list[float] = []
                """When each answered placement was due, in seconds from the phase's start (beside
                latencies)."""
                self.in_flight = 0
                self.max_in_flight = 0
                self.loop_lag: list[float] = []
                self.gc_pauses: list[float] = []

        async def one(fig: Figures, n: int, start: float, due: float) -> None:
            fig.in_flight += 1
            fig.max_in_flight = max(fig.max_in_flight, fig.in_flight)
            stub = stubs[n % len(stubs)]
            k = rng.randrange(key_space)
            w = k % workspaces
            spec = common_pb2.BuildSpec(
                workspace=f"ws-{w:03d}",
                tenant=f"ws-{w:03d}",
                cache=common_pb2.CacheSpec(
                    key=raw_key(k), restore_keys=[f"ws-{w:03d}/deps-"], paths=["node_modules"]
                ),
            )
            if scoped:
                # As the coordinator binds a ci token's spec: a pull request's build writes its own scope
                # and reads the default branch's (so a node holding main's entry is warm for it).
                tenant = f"ws-{w:03d}"
                if rng.random() < pr_share:
                    spec.cache.scope = scopes.untrusted(tenant, f"pull/{rng.randrange(50)}")
                    spec.cache.read_scopes.append(scopes.protected(tenant))
                else:
                    spec.cache.scope = scopes.protected(tenant)
            try:
                t0 = time.perf_counter()
                placement = await stub.PlaceBuild(
                    build_pb2.PlaceBuildRequest(spec=spec, lease_s=60), timeout=30
                )
                t1 = time.perf_counter()
                fig.latencies.append(t1 - t0)
                fig.from_schedule.append(t1 - due)
                fig.started_at.append(due - start)
                fig.warmth[common_pb2.Warmth.Name(placement.expected_warmth)] += 1
                await stub.ReleasePlacement(
                    build_pb2.ReleasePlacementRequest(lease_id=placement.lease_id), timeout=30
                )
                fig.release.append(time.perf_counter() - t1)
            except grpc.aio.AioRpcError as exc:
                fig.errors[exc.code().name] += 1
            finally:
                fig.in_flight -= 1

        async def phase(length: float) -> dict:
            """Open loop: arrivals follow the clock, not the answers. Also the client's own overhead: how late
            its loop runs a 10 ms timer, and its garbage collector's pauses."""
            fig = Figures()
            gc_started = [0.0]

            def gc_hook(when: str, info: dict) -> None:
                if when == "start":
                    gc_started[0] = time.perf_counter()
                else:
                    fig.gc_pauses.append(time.perf_counter() - gc_started[0])

            async def lag_probe() -> None:
                while True:
                    due = time.perf_counter() + 0.01
                    await asyncio.sleep(0.01)
                    fig.loop_lag.append(max(0.0, time.perf_counter() - due))

            gc.callbacks.append(gc_hook)
            probe = asyncio.create_task(lag_probe())
            cpu_start = time.process_time()
            start = time.perf_counter()
            total = int(rate * length)
            # Only the placements in flight are kept: a list of every task of an hour (720,000, each with its
            # finished coroutine) made the client's own full collections take up to 0.9 s, and the client's
            # stalls counted as placement latency.
            tasks: set[asyncio.Task] = set()
            for n in range(total):
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(fig, n, start, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            probe.cancel()
            gc.callbacks.remove(gc_hook)
            return {
                "latencies": fig.latencies,
                "from_schedule": fig.from_schedule,
                "release": fig.release,
                "errors": dict(fig.errors),
                "warmth": dict(fig.warmth),
                "elapsed_s": elapsed,
                "cpu_s": cpu,
                "sent": total,
                "max_in_flight": fig.max_in_flight,
                "started_at": fig.started_at,
                "loop_lag": fig.loop_lag,
                "gc_pauses": fig.gc_pauses,
            }

        for ch in channels:  # connect every client channel before the clock starts
            await ch.channel_ready()
        # What exists now (grpc, protobuf, the channels) lives to the end: keep the client's collector off it,
        # so that its pauses, which would count as placement latency, are only for what the phases allocate.
        gc.collect()
        gc.freeze()
        if warmup > 0:
            results.put(("warm", await phase(warmup)))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        results.put(("ci", await phase(seconds)))
        for ch in channels:
            await ch.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------
# the parent: orchestrate, measure, report


def cpu_plan(pin: str) -> dict[str, set[int] | None]:
    """The CPUs each part may use (None: any), for ``--pin``.

    In a real deployment the coordinator has its machine and the agents and CI clients run elsewhere. On one
    machine, ``split`` gives the coordinator the first CPU to itself and everything else the rest; ``agents``
    keeps the simulated fleet on the last CPU and lets the coordinator and the CI clients (which run at a
    higher priority) use any CPU, so that other work on a shared machine cannot corner the coordinator on
    one busy core; ``off`` lets the kernel put everything anywhere (the figures before this option)."""
    allowed = sorted(os.sched_getaffinity(0))
    if pin == "off" or len(allowed) < 2:
        return {"coordinator": None, "ci": None, "agents": None}
    if pin == "split":
        return {"coordinator": {allowed[0]}, "ci": set(allowed[1:]), "agents": set(allowed[1:])}
    return {"coordinator": None, "ci": None, "agents": {allowed[-1]}}


@contextlib.contextmanager
def bound_to(cpus: set[int] | None):
    """Processes started inside run on ``cpus`` (a child, and every thread it starts, inherits the mask)."""
    if cpus is None:
        yield
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


def thread_cpus(pid: int) -> list[str]:
    """Each thread's allowed CPUs (``Cpus_allowed_list``), distinct values, to show the pinning held."""
    seen = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    seen.add(line.split(":", 1)[1].strip())
        except OSError:
            pass
    return sorted(seen)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """thread id → (its name, CPU seconds so far) for every thread of ``pid``."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def thread_cpu_between(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Share of a core each kind of thread (by name) used between two ``thread_cpu_seconds`` readings."""
    used: Counter = Counter()
    for tid, (name, cpu) in after.items():
        used[name] += cpu - before.get(tid, (name, 0.0))[1]
    return {name: round(c / seconds, 3) for name, c in used.most_common() if c > 0}


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


class MemorySampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pid = 0
        self.peak = 0.0
        self.samples: list[tuple[float, float]] = []
        """(time.monotonic(), RSS MiB) of every sample, for the memory over the placement phase."""
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            if self.pid:
                rss = rss_mib(self.pid)
                self.peak = max(self.peak, rss)
                self.samples.append((time.monotonic(), rss))
            time.sleep(0.25)

    def between(self, start: float, end: float, every: float) -> list[float]:
        """RSS (MiB) at ``start``, then every ``every`` seconds until ``end`` (the first sample at or after
        each moment)."""
        out, due = [], start
        for at, rss in self.samples:
            if at >= due and at <= end + 0.5:
                out.append(round(rss, 1))
                due += every
        return out

    def stop(self) -> None:
        self._stop_event.set()


def histogram_buckets(metrics_port: int, name: str, labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of one labelled histogram on the coordinator's /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out = []
    for line in body.splitlines():
        if line.startswith(name + "_bucket{") and labels in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def histogram_quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float | None:
    """The q-quantile of what a histogram recorded between two scrapes (linear within a bucket, as PromQL's
    histogram_quantile does); None when it recorded nothing."""
    counts = dict(before)
    deltas = [(le, c - counts.get(le, 0.0)) for le, c in after]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le, cum in deltas:
        if cum >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(cum - below, 1e-12)
        lower, below = le, cum
    return lower


def histogram_top(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """The upper bound of the highest bucket that gained an observation between two scrapes: the longest
    observation was at most this (None when nothing was observed, inf when beyond the last bound)."""
    counts = dict(before)
    top, previous = None, 0.0
    for le, c in after:
        gained = c - counts.get(le, 0.0)
        if gained > previous:
            top = le
        previous = gained
    return top


def gc_pause_totals(metrics_port: int) -> dict[str, tuple[float, float, list[tuple[float, float]]]]:
    """generation → (unreachable objects found, seconds paused, pause buckets) from the coordinator's
    metrics."""
    out = {}
    for g in ("0", "1", "2"):
        label = f'generation="{g}"'
        out[g] = (
            metric_value(metrics_port, "stoker_coordinator_gc_unreachable_objects_total", label),
            metric_value(metrics_port, "stoker_coordinator_gc_pause_seconds_sum", label),
            histogram_buckets(metrics_port, "stoker_coordinator_gc_pause_seconds", label),
        )
    return out


def gc_pauses_between(before: dict, after: dict) -> dict:
    """Per generation: runs, total time, the bucket bound the longest pause stayed under, and how many objects
    in reference cycles the runs freed."""
    out = {}
    for g, (unreachable, total, buckets) in after.items():
        earlier = dict(before[g][2])
        # Runs from the +Inf bucket of the same scrape as the other buckets (the count is a separate request).
        runs = (buckets[-1][1] - earlier.get(buckets[-1][0], 0.0)) if buckets else 0.0
        longest = next((le for le, c in buckets if c - earlier.get(le, 0.0) >= runs), 0.0) if runs else 0.0
        out[f"gen{g}"] = {
            "runs": int(runs),
            "total_ms": round(1000 * (total - before[g][1]), 1),
            "longest_under_ms": round(1000 * longest, 1),
            "unreachable_objects": int(unreachable - before[g][0]),
        }
    return out


def metric_value(metrics_port: int, name: str, labels: str) -> float:
    """One sample of the coordinator's /metrics (``labels`` is a substring of the label set, "" for none)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if (line.startswith(name + "{") and labels in line) or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def by_kind(metrics_port: int, name: str) -> dict[str, int]:
    """kind → value of a metric labelled only by ``kind``, from the coordinator's /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return {
        line.split('kind="', 1)[1].split('"', 1)[0]: int(float(line.rsplit(" ", 1)[1]))
        for line in body.splitlines()
        if line.startswith(name + "{")
    }


class Fleet:
    def __init__(self, address: str, args, ctx) -> None:
        self.results: mp.Queue = ctx.Queue()
        self.commands: list[mp.Queue] = []
        self.procs = []
        shares = [list(range(p, args.agents, args.agent_procs)) for p in range(args.agent_procs)]
        for share in shares:
            q = ctx.Queue()
            proc = ctx.Process(
                target=agent_process,
                args=(
                    address,
                    share,
                    args.keys,
                    args.key_space,
                    args.slots,
                    args.delta_interval,
                    q,
                    self.results,
                    args.agent_nice,
                    args.sketch_k,
                    args.scoped,
                ),
                daemon=True,
            )
            proc.start()
            self.commands.append(q)
            self.procs.append(proc)

    def ask(self, *cmd) -> list:
        for q in self.commands:
            q.put(cmd)
        out = []
        for _ in self.commands:
            _kind, payload = self.results.get(timeout=120)
            out.append(payload)
        return out

    def status(self, with_keys: bool = False) -> dict:
        merged: dict = {}
        for part in self.ask("status", with_keys):
            merged.update(part)
        return merged

    def stop(self) -> None:
        try:
            self.ask("stop")
        except (queue_mod.Empty, OSError):
            pass
        for p in self.procs:
            p.join(15)
            if p.is_alive():
                p.kill()


def summary_nodes(stub, timeout: float = 30):
    """Node states and generations without entry lists (a key prefix nothing has keeps the reply small)."""
    from stoker.v1 import inventory_pb2

    reply = stub.QueryInventory(
        inventory_pb2.QueryInventoryRequest(summary_only=True, key_prefix="\x7f"), timeout=timeout
    )
    return {n.node: n for n in reply.nodes}


def verify_inventory(address: str, expected: dict[str, list[str]], deadline: float) -> tuple[set[str], int]:
    """Poll in rounds until the coordinator lists each node READY with its exact key set.

    Returns (nodes still incomplete at the deadline, queries answered)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from stoker.v1 import inventory_pb2, inventory_pb2_grpc

    pending = set(expected)
    queries = 0
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = inventory_pb2_grpc.InventoryStub(channel)

    def complete(name: str) -> bool | None:
        try:
            reply = stub.QueryInventory(inventory_pb2.QueryInventoryRequest(node=name), timeout=10)
        except grpc.RpcError:
            return None
        n = reply.nodes[0] if reply.nodes else None
        return (
            n is not None
            and n.state == inventory_pb2.NODE_STATE_READY
            and [e.key for e in n.entries] == expected[name]
        )

    with channel, ThreadPoolExecutor(4) as pool:
        while pending and time.monotonic() < deadline:
            names = sorted(pending)
            for name, ok in zip(names, pool.map(complete, names)):
                if ok is not None:
                    queries += 1
                if ok:
                    pending.discard(name)
            if pending:
                time.sleep(0.5)
    return pending, queries


def wait_all_ready(address: str, names: set[str], deadline: float) -> float | None:
    import grpc

    from stoker.v1 import inventory_pb2, inventory_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        stub = inventory_pb2_grpc.InventoryStub(ch)
        while time.monotonic() < deadline:
            try:
                nodes = summary_nodes(stub)
                if all(n in nodes and nodes[n].state == inventory_pb2.NODE_STATE_READY for n in names):
                    return time.monotonic()
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return None


def py_spy_record(py_spy: str, pid: int, seconds: float, out_dir: Path) -> subprocess.Popen:
    out_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "100",
            "--format",
            "raw",
            "-o",
            str(out_dir / "coordinator.collapsed"),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def top_functions(collapsed: Path, n: int = 15) -> dict:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        c = int(count)
        total += c
        frames = stack.split(";")
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c

    def share(c: int) -> float:
        return round(100 * c / max(total, 1), 1)

    return {
        "samples": total,
        "self": [(f, share(c)) for f, c in self_c.most_common(n)],
        "inclusive": [(f, share(c)) for f, c in incl.most_common(n * 2) if share(c) < 99][:n],
    }


def coordinator_flags(args, workdir: Path) -> list[str]:
    """The coordinator's extra flags: a settings file, with ``--gc-full-every``'s schedule for its collector
    when given. Its nodes' claims count as sent (nodes.check_claims false): the simulated agents run no
    builds, so nothing would corroborate their entries, and the placements would all be cold ones against
    an empty inventory, not the fleet-sized warm decisions this benchmark measures."""
    settings: dict = {"nodes": {"check_claims": False}}
    if args.gc_full_every:
        settings["server"] = {"gc_full_every_s": args.gc_full_every}
    config = workdir / "coordinator-settings.json"
    config.write_text(json.dumps(settings))
    return ["--config", str(config)]


def run(args) -> dict:
    import grpc

    from stoker.demo import local_fleet
    from stoker.v1 import inventory_pb2_grpc

    log = (
        (lambda *a: print("[load]", *a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="stoker-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    listen = f"127.0.0.1:{port}"
    state = workdir / "coordinator.db"
    # The coordinator and the CI clients run at --priority-nice (set here: everything started from this
    # process inherits it), the agents at --agent-nice. Raising a priority needs CAP_SYS_NICE; without it the
    # run goes on at the niceness it has, and cpu_placement says so.
    try:
        os.setpriority(os.PRIO_PROCESS, 0, args.priority_nice)
    except PermissionError:
        pass
    sampler = MemorySampler()
    sampler.start()
    ctx = mp.get_context("spawn")
    out: dict = {
        "agents": args.agents,
        "keys_per_agent": args.keys,
        "key_space": args.key_space,
        "sketch_values": args.sketch_k,
        "scoped_keys": args.scoped,
        "pull_request_share": args.pr_share if args.scoped else 0.0,
        "rate": args.rate,
        "seconds": args.seconds,
        "coordinator_gc_full_every_s": args.gc_full_every or 3600.0,
        "clients": args.clients,
        "agent_procs": args.agent_procs,
    }
    out["load_average_at_start"] = round(os.getloadavg()[0], 2)
    plan = cpu_plan(args.pin)
    with bound_to(plan["coordinator"]):
        coordinator = local_fleet.start_coordinator(
            workdir,
            listen=listen,
            state=state,
            lease_ttl_s=args.lease_ttl,
            extra=coordinator_flags(args, workdir),
        )
    sampler.pid = coordinator.popen.pid
    out["cpu_placement"] = {
        "pin": args.pin,
        **{f"{part}_cpus": sorted(cpus) if cpus else "any" for part, cpus in plan.items()},
        "coordinator_threads_allowed": thread_cpus(coordinator.popen.pid),
        "coordinator_nice": os.getpriority(os.PRIO_PROCESS, coordinator.popen.pid),
        "ci_nice": os.getpriority(os.PRIO_PROCESS, 0),
        "agent_nice": args.agent_nice,
    }
    fleet = None
    try:
        address = coordinator.address
        log(f"coordinator pid {coordinator.popen.pid} on {address}; starting {args.agents} agents")
        t_reg = time.monotonic()
        with bound_to(plan["agents"]):
            fleet = Fleet(address, args, ctx)
        names = {agent_name(i) for i in range(args.agents)}
        ready_at = wait_all_ready(address, names, time.monotonic() + args.register_timeout)
        expected = {k: v["keys"] for k, v in fleet.status(with_keys=True).items()}
        missing, _ = verify_inventory(address, expected, time.monotonic() + args.register_timeout)
        out["registration_s"] = round(time.monotonic() - t_reg, 2)
        out["initial_missing"] = sorted(missing)[:20]
        out["initial_missing_count"] = len(missing)
        log(
            f"fleet registered in {out['registration_s']} s (all READY: {ready_at is not None}); "
            f"{len(missing)} nodes incomplete"
        )
        out["memory_after_registration_mib"] = round(rss_mib(coordinator.popen.pid), 1)
        fleet.ask("thaw_keys")  # from here on some deltas evict an entry and add another

        # -- placements with background deltas and heartbeats ---------------------------------------
        metrics_port = coordinator.metrics_port
        log(
            f"placements: {args.rate}/s from {args.clients} clients, {args.warmup} s of warm-up, "
            f"then {args.seconds} s measured"
        )
        go = ctx.Event()
        ci = ctx.Process(
            target=ci_process,
            args=(
                address,
                args.rate,
                args.seconds,
                args.clients,
                WORKSPACES,
                args.key_space,
                fleet.results,
                args.warmup,
                go,
                args.scoped,
                args.pr_share,
            ),
            daemon=True,
        )
        with bound_to(plan["ci"]):
            ci.start()
        if args.warmup > 0:
            # Reported on its own, not mixed into the measured phase: the first placements after the fleet
            # registered find the coordinator's per-prefix memory empty, as after a restart.
            _kind, warm = fleet.results.get(timeout=args.warmup + 300)
            wl = [x * 1000 for x in warm["latencies"]]
            out["warmup_seconds"] = args.warmup
            out["warmup_placement_p50_ms"] = round(pct(wl, 50), 2) if wl else None
            out["warmup_placement_p99_ms"] = round(pct(wl, 99), 2) if wl else None
            out["warmup_placement_max_ms"] = round(max(wl), 2) if wl else None
            out["warmup_placements_over_10ms"] = sum(1 for x in wl if x > 10)
            out["warmup_placements_ok"] = len(wl)
            out["warmup_placement_errors"] = warm["errors"]
            log(
                f"warm-up: placement p50 {out['warmup_placement_p50_ms']} ms p99 "
                f"{out['warmup_placement_p99_ms']} ms"
            )
        d0, c0, t0 = (
            metric_value(metrics_port, "stoker_coordinator_agent_messages_total", 'kind="delta"'),
            cpu_seconds(coordinator.popen.pid),
            time.monotonic(),
        )
        a0 = sum(cpu_seconds(p.pid) for p in fleet.procs)
        threads0 = thread_cpu_seconds(coordinator.popen.pid)
        dec0 = (
            metric_value(metrics_port, "stoker_coordinator_placement_decision_seconds_sum", ""),
            metric_value(metrics_port, "stoker_coordinator_placement_decision_seconds_count", ""),
        )
        rpc0 = histogram_buckets(metrics_port, "stoker_coordinator_rpc_seconds", 'method="PlaceBuild"')
        lag0 = histogram_buckets(metrics_port, "stoker_coordinator_loop_lag_seconds", "")
        gc0 = gc_pause_totals(metrics_port)
        profiler = None
        if args.profile:
            profiler = py_spy_record(
                args.py_spy, coordinator.popen.pid, max(1, args.seconds - 1), Path(args.profile)
            )
        go.set()
        _kind, ci_result = fleet.results.get(timeout=args.seconds + 300)
        ci.join(10)
        d1, c1, t1 = (
            metric_value(metrics_port, "stoker_coordinator_agent_messages_total", 'kind="delta"'),
            cpu_seconds(coordinator.popen.pid),
            time.monotonic(),
        )
        a1 = sum(cpu_seconds(p.pid) for p in fleet.procs)
        out["coordinator_threads_cpu_placement_phase"] = thread_cpu_between(
            threads0, thread_cpu_seconds(coordinator.popen.pid), t1 - t0
        )
        dec1 = (
            metric_value(metrics_port, "stoker_coordinator_placement_decision_seconds_sum", ""),
            metric_value(metrics_port, "stoker_coordinator_placement_decision_seconds_count", ""),
        )
        # Memory over the phase: a coordinator that remembered something per placement (or per key in a
        # key space that never stops changing) would grow here.
        timeline = sampler.between(t0, t1, 30.0)
        out["memory_placement_phase_mib"] = timeline
        if len(timeline) >= 2:
            placed = max(1, len(ci_result["latencies"]))
            growth_kib = (timeline[-1] - timeline[0]) * 1024
            out["memory_growth_kib_per_1k_placements"] = round(growth_kib / placed * 1000, 1)
        out["scheduler_tracked"] = by_kind(metrics_port, "stoker_coordinator_scheduler_tracked")
        out["outbox_commands_at_end"] = metric_value(metrics_port, "stoker_coordinator_outbox_commands", "")
        out["cache_commands"] = by_kind(metrics_port, "stoker_coordinator_cache_commands_total")
        out["scheduler_ms_per_decision"] = round(1000 * (dec1[0] - dec0[0]) / max(1, dec1[1] - dec0[1]), 3)
        # The coordinator's own view: time from its handler starting to its answer (the client's figures also
        # hold the wait on the shared cores and in gRPC's queues).
        rpc1 = histogram_buckets(metrics_port, "stoker_coordinator_rpc_seconds", 'method="PlaceBuild"')
        lag1 = histogram_buckets(metrics_port, "stoker_coordinator_loop_lag_seconds", "")
        gc1 = gc_pause_totals(metrics_port)
        out["coordinator_gc_placement_phase"] = gc_pauses_between(gc0, gc1)
        for q, key in ((0.5, "server_placement_p50_ms"), (0.99, "server_placement_p99_ms")):
            v = histogram_quantile(rpc0, rpc1, q)
            out[key] = None if v is None else round(1000 * v, 2)
        for q, key in ((0.5, "loop_lag_p50_ms"), (0.99, "loop_lag_p99_ms")):
            v = histogram_quantile(lag0, lag1, q)
            out[key] = None if v is None else round(1000 * v, 2)
        for before, after, key in (
            (rpc0, rpc1, "server_placement_max_under_ms"),
            (lag0, lag1, "loop_lag_max_under_ms"),
        ):
            v = histogram_top(before, after)
            out[key] = None if v is None else 1000 * v
        lat = [x * 1000 for x in ci_result["latencies"]]
        client_lag = [x * 1000 for x in ci_result["loop_lag"]]
        out["client_loop_lag_p50_ms"] = round(pct(client_lag, 50), 2) if client_lag else None
        out["client_loop_lag_p99_ms"] = round(pct(client_lag, 99), 2) if client_lag else None
        out["client_loop_lag_max_ms"] = round(max(client_lag), 2) if client_lag else None
        client_gc = ci_result["gc_pauses"]
        out["client_gc"] = {
            "runs": len(client_gc),
            "total_ms": round(1000 * sum(client_gc), 1),
            "longest_ms": round(1000 * max(client_gc, default=0.0), 2),
        }
        # Where the slow placements were: seconds of the phase with placements over 10 ms, and how many.
        slow = Counter(int(at) for at, ms in zip(ci_result["started_at"], lat) if ms > 10)
        out["placements_over_10ms"] = sum(slow.values())
        out["placements_over_10ms_by_second"] = dict(sorted(slow.items()))
        sched = [x * 1000 for x in ci_result["from_schedule"]]
        rel = [x * 1000 for x in ci_result["release"]]
        out.update(
            {
                "placement_p50_ms": round(pct(lat, 50), 2) if lat else None,
                "placement_p99_ms": round(pct(lat, 99), 2) if lat else None,
                "placement_max_ms": round(max(lat), 2) if lat else None,
                "placement_p99_from_schedule_ms": round(pct(sched, 99), 2) if sched else None,
                "release_p99_ms": round(pct(rel, 99), 2) if rel else None,
                "placements_ok": len(lat),
                "placements_sent": ci_result["sent"],
                "placement_errors": ci_result["errors"],
                "placement_warmth": ci_result["warmth"],
                "placements_per_s": round(len(lat) / ci_result["elapsed_s"], 1),
                "background_updates_per_s": round((d1 - d0) / (t1 - t0), 1),
                "coordinator_cpu_placement_phase": round((c1 - c0) / (t1 - t0), 2),
                "agents_cpu_placement_phase": round((a1 - a0) / (t1 - t0), 2),
                "ci_cpu_placement_phase": round(ci_result["cpu_s"] / ci_result["elapsed_s"], 2),
            }
        )
        if profiler is not None:
            _, err = profiler.communicate(timeout=60)
            collapsed = Path(args.profile) / "coordinator.collapsed"
            out["profile"] = (
                top_functions(collapsed) if collapsed.exists() else {"error": err.decode()[-500:]}
            )
        log(
            f"placement p50 {out['placement_p50_ms']} ms p99 {out['placement_p99_ms']} ms; "
            f"{out['placements_ok']}/{out['placements_sent']} ok"
        )

        # -- delta throughput -----------------------------------------------------------------------
        fleet.ask("saturate")
        time.sleep(1.0)
        d0, c0, t0 = (
            metric_value(metrics_port, "stoker_coordinator_agent_messages_total", 'kind="delta"'),
            cpu_seconds(coordinator.popen.pid),
            time.monotonic(),
        )
        a0 = sum(cpu_seconds(p.pid) for p in fleet.procs)
        time.sleep(args.saturate_seconds)
        d1, c1, t1 = (
            metric_value(metrics_port, "stoker_coordinator_agent_messages_total", 'kind="delta"'),
            cpu_seconds(coordinator.popen.pid),
            time.monotonic(),
        )
        a1 = sum(cpu_seconds(p.pid) for p in fleet.procs)
        fleet.ask("calm")
        out["updates_per_s"] = round((d1 - d0) / (t1 - t0), 1)
        out["coordinator_cpu_saturation"] = round((c1 - c0) / (t1 - t0), 2)
        out["agents_cpu_saturation"] = round((a1 - a0) / (t1 - t0), 2)
        log(
            f"deltas: {out['updates_per_s']}/s counted by the coordinator (its CPU "
            f"{out['coordinator_cpu_saturation']})"
        )

        # -- every update arrived: coordinator generations equal the agents' -------------------------
        fleet.ask("freeze_keys")
        time.sleep(max(2.0, args.delta_interval * 1.6))
        agents = fleet.status(with_keys=True)
        with grpc.insecure_channel(address) as ch:
            nodes = summary_nodes(inventory_pb2_grpc.InventoryStub(ch), timeout=60)
        behind = [n for n, a in agents.items() if n not in nodes or nodes[n].generation + 3 < a["generation"]]
        out["nodes_behind_after_saturation"] = len(behind)
        out["memory_before_restart_mib"] = round(rss_mib(coordinator.popen.pid), 1)

        # -- kill -9 and restart on the same port -----------------------------------------------------
        expected = {k: v["keys"] for k, v in agents.items()}
        log("kill -9 the coordinator and restart it on the same port")
        t_kill = time.monotonic()
        coordinator.kill()
        sampler.pid = 0
        with bound_to(plan["coordinator"]):
            coordinator = local_fleet.start_coordinator(
                workdir,
                name="coordinator-2",
                listen=listen,
                state=state,
                lease_ttl_s=args.lease_ttl,
                extra=coordinator_flags(args, workdir),
            )
        sampler.pid = coordinator.popen.pid
        out["coordinator_restart_s"] = round(time.monotonic() - t_kill, 2)
        if args.profile:
            profiler = py_spy_record(
                args.py_spy,
                coordinator.popen.pid,
                min(args.recovery_timeout, 60),
                Path(args.profile) / "recovery",
            )
        incomplete, queries = verify_inventory(address, expected, t_kill + args.recovery_timeout)
        recovered = time.monotonic()
        out["inventory_recovery_s"] = round(recovered - t_kill, 2) if not incomplete else None
        out["recovery_incomplete_nodes"] = len(incomplete)
        out["recovery_queries"] = queries
        out["memory_after_restart_mib"] = round(rss_mib(coordinator.popen.pid), 1)
        log(
            f"inventory complete {out['inventory_recovery_s']} s after the kill; {len(incomplete)} incomplete"
        )
        if args.profile:
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            profiler.wait(30)
            collapsed = Path(args.profile) / "recovery" / "coordinator.collapsed"
            out["profile_recovery"] = (
                top_functions(collapsed) if collapsed.exists() else {"error": "no samples"}
            )

        final = fleet.status()
        out["agents_by_phase_at_end"] = dict(Counter(a["phase"] for a in final.values()))
        out["agent_unexpected_errors"] = dict(
            sum((Counter(a["unexpected"]) for a in final.values()), Counter())
        )
        stuck = sorted(n for n in incomplete if n in final)[:5]
        out["incomplete_examples"] = {
            n: {k: final[n][k] for k in ("phase", "connects", "error")} for n in stuck
        }
        never = [n for n, a in final.items() if a["connects"] == 0]
        out["lost_registrations"] = len(set(missing) | set(incomplete) | set(never))
        out["agent_reconnects"] = sum(a["connects"] for a in final.values())
        out["agent_register_failures"] = sum(a["register_failures"] for a in final.values())
        out["agent_snapshots_sent"] = sum(a["snapshots"] for a in final.values())
        out["agent_deltas_sent"] = sum(a["deltas"] for a in final.values())
    finally:
        if fleet is not None:
            fleet.stop()
        coordinator.kill()
        sampler.stop()
        out["memory_mib"] = round(sampler.peak, 1)
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    out["load_average_at_end"] = round(os.getloadavg()[0], 2)
    out["machine"] = (
        f"{os.cpu_count()} CPU, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--keys", type=int, default=1000, help="entries each agent holds")
    p.add_argument(
        "--key-space",
        type=int,
        default=0,
        help="distinct keys in the fleet (default: agents*keys/10, so each key has ~10 replicas)",
    )
    p.add_argument(
        "--sketch-k",
        type=int,
        default=64,
        help="values in each entry's content sketch, as agents report (64, the agent's SKETCH_K; 0: none)",
    )
    p.add_argument(
        "--scoped",
        action="store_true",
        help="keys in cache scopes, as a ci token's builds store them (issue 16): nodes hold the protected "
        "scope's entries, and --pr-share of the builds are pull requests reading it from their own scope",
    )
    p.add_argument("--pr-share", type=float, default=0.3, help="with --scoped: share of pull-request builds")
    p.add_argument("--rate", type=float, default=200.0, help="placements per second")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the measured placement phase")
    p.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of placements before the measured phase (reported on their own as warmup_*)",
    )
    p.add_argument("--clients", type=int, default=50, help="concurrent CI client channels")
    p.add_argument("--agent-procs", type=int, default=2, help="processes the simulated agents share")
    p.add_argument(
        "--pin",
        choices=("agents", "split", "off"),
        default="agents",
        help="agents: the simulated fleet on the last CPU, the rest anywhere; split: the coordinator on the "
        "first CPU, everything else on the others; off: anywhere",
    )
    p.add_argument(
        "--agent-nice",
        type=int,
        default=10,
        help="niceness of the simulated agents' processes",
    )
    p.add_argument(
        "--priority-nice",
        type=int,
        default=-5,
        help=(
            "niceness of the coordinator and the CI clients (below 0 needs CAP_SYS_NICE; kept as is without)"
        ),
    )
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--delta-interval", type=float, default=2.0, help="seconds between an agent's deltas")
    p.add_argument("--saturate-seconds", type=float, default=10.0)
    p.add_argument("--lease-ttl", type=float, default=60.0)
    p.add_argument(
        "--gc-full-every",
        type=float,
        default=0.0,
        help="seconds between the coordinator's full garbage collections (default: its own, an hour)",
    )
    p.add_argument("--register-timeout", type=float, default=300.0)
    p.add_argument("--recovery-timeout", type=float, default=120.0)
    p.add_argument("--profile", help="record the coordinator with py-spy during placements; stacks go here")
    p.add_argument(
        "--py-spy",
        default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
        help="py-spy to record with (default: on PATH, else beside this Python, as in a venv)",
    )
    p.add_argument("--workdir")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.key_space <= 0:
        args.key_space = max(args.keys * 2, args.agents * args.keys // 10)
    if args.key_space < args.keys * 2:
        p.error("--key-space must be at least twice --keys")
    # Stopped with SIGTERM (kill, a timeout), it still stops its agent processes and the coordinator.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    ok = result.get("lost_registrations") == 0 and result.get("inventory_recovery_s") is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
