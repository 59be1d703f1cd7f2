"""Node claims are checked (issue 16, item 5), through a real fleet: a coordinator with mutual TLS for agents
(nodes.max_slots 2), one real agent (n1) and a hostile node ("liar") that is a real gRPC client speaking the
agent protocol with a valid node certificate. The liar registers with 8 slots and claims every key of the
workspace, small and new; the attack of the issue ("a node's snapshot is applied as sent: a node that
claims every key and 8 slots attracts every build") fails: it is warm for nothing, gets two slots, is
flagged in the inventory and the metrics, and its reports about a build assigned to n1 change nothing.
The legitimate flow still works: the key n1 saved makes n1 warm for the next build of it."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stoker.demo import local_fleet
from stoker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    build_pb2,
    build_pb2_grpc,
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
)
from tests.coordinator.test_tenancy import make_token
from tests.helpers.pki import make_pki, secure_coordinator, tls_channel, wait_nodes

pytestmark = [pytest.mark.integration, pytest.mark.hostile]

SCOPE = "~web/protected/"
CLAIMED = [f"web/deps-H{i}" for i in range(1, 9)]
"""What the liar claims: the key n1 saves (H1) and seven that nobody ever saved."""


class Liar:
    """A node that claims what it never held: Register with 8 slots, then a Connect stream whose snapshot
    lists ``keys`` (500 MB each, so that a cold start elsewhere looks long; created now), heartbeats every
    half second, and whatever else the test sends. Commands it receives are collected, never acted on."""

    def __init__(self, address: str, pki: Path, keys: list[str]) -> None:
        self.channel = tls_channel(address, pki, client="liar")
        stub = agent_pb2_grpc.AgentGatewayStub(self.channel)
        reply = stub.Register(
            agent_pb2.RegisterRequest(node="liar", slots=8, executor="process", agent_version="liar"),
            timeout=10,
        )
        self.outbox: queue.Queue = queue.Queue()
        self.commands: list[agent_pb2.CoordinatorCommand] = []
        self.generation = 0
        self.send(agent_pb2.AgentMessage(session_id=reply.session_id, snapshot=self.snapshot(keys)))
        self.stream = stub.Connect(iter(self.outbox.get, None))
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._read), threading.Thread(target=self._beat)]
        for t in self.threads:
            t.start()

    def snapshot(self, keys: list[str]) -> agent_pb2.InventorySnapshot:
        now = Timestamp()
        now.GetCurrentTime()
        self.generation += 1
        entries = [
            common_pb2.CacheEntry(key=k, bytes=500_000_000, files=1, created=now, last_used=now) for k in keys
        ]
        return agent_pb2.InventorySnapshot(generation=self.generation, entries=entries)

    def send(self, message: agent_pb2.AgentMessage) -> None:
        self.outbox.put(message)

    def _read(self) -> None:
        try:
            for command in self.stream:
                self.commands.append(command)
        except Exception:  # the stream ends with the test
            pass

    def _beat(self) -> None:
        while not self.stopped.wait(0.5):
            self.send(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(free_slots=8)))

    def stop(self) -> None:
        self.stopped.set()
        self.outbox.put(None)
        self.stream.cancel()
        for t in self.threads:
            t.join(5)
        self.channel.close()


class Fleet:
    def __init__(self, tmp_path: Path, port_factory) -> None:
        self.pki = tmp_path / "pki"
        self.ops = make_pki(self.pki, ("n1", "liar"), (("ops", "operator"),))["ops"]
        self.ci = make_token(self.pki / "tokens.json", "web-main", "web", "protected")
        agent_port = port_factory()
        self.agent_address = f"127.0.0.1:{agent_port}"
        self.coordinator = secure_coordinator(tmp_path, self.pki, agent_port, "[nodes]\nmax_slots = 2\n")
        env = {
            "STOKER_AGENT_COORDINATOR_TLS_CA": str(self.pki / "ca.pem"),
            "STOKER_AGENT_COORDINATOR_TLS_CERT": str(self.pki / "n1.pem"),
            "STOKER_AGENT_COORDINATOR_TLS_KEY": str(self.pki / "n1.key"),
        }
        self.procs = [
            self.coordinator,
            local_fleet.start_agent(tmp_path, "n1", self.agent_address, blobs=tmp_path / "blobs", env=env),
        ]
        wait_nodes(self.coordinator.address, self.pki, self.ops, ["n1"])
        self.liar: Liar | None = None

    def submit(self, key: str, script: str, on_started=None) -> list[build_pb2.BuildEvent]:
        spec = common_pb2.BuildSpec(
            workspace="web",
            command=["sh", "-c", script],
            timeout_s=60,
            cache=common_pb2.CacheSpec(key=key, restore_keys=["web/deps-"], paths=["deps"]),
        )
        events = []
        with tls_channel(self.coordinator.address, self.pki, self.ci) as ch:
            for event in build_pb2_grpc.BuildsStub(ch).SubmitBuild(
                build_pb2.SubmitBuildRequest(spec=spec), timeout=120
            ):
                events.append(event)
                if event.HasField("started") and on_started is not None:
                    on_started(event)
        return events

    def place(self, key: str) -> build_pb2.Placement:
        spec = common_pb2.BuildSpec(workspace="web", cache=common_pb2.CacheSpec(key=key, paths=["deps"]))
        with tls_channel(self.coordinator.address, self.pki, self.ci) as ch:
            stub = build_pb2_grpc.BuildsStub(ch)
            placement = stub.PlaceBuild(build_pb2.PlaceBuildRequest(spec=spec, lease_s=60), timeout=30)
            stub.ReleasePlacement(build_pb2.ReleasePlacementRequest(lease_id=placement.lease_id), timeout=10)
        return placement

    def nodes(self) -> dict[str, inventory_pb2.NodeInventory]:
        with tls_channel(self.coordinator.address, self.pki, self.ops) as ch:
            reply = inventory_pb2_grpc.InventoryStub(ch).QueryInventory(
                inventory_pb2.QueryInventoryRequest(), timeout=10
            )
        return {n.node: n for n in reply.nodes}

    def metric(self, line_start: str) -> float:
        url = f"http://127.0.0.1:{self.coordinator.metrics_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        return next(float(line.split()[-1]) for line in body.splitlines() if line.startswith(line_start))

    def stop(self) -> None:
        if self.liar is not None:
            self.liar.stop()
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def fleet(tmp_path, port_factory):
    f = Fleet(tmp_path, port_factory)
    yield f
    f.stop()


def wait_for(what, predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_node_claiming_every_key_and_eight_slots_attracts_no_build_and_is_flagged(fleet):
    # n1 (the only node) saves H1: the coordinator's record says n1 holds it.
    events = fleet.submit("web/deps-H1", "mkdir -p deps && echo one > deps/f")
    assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED and events[-1].finished.cache.saved
    wait_for("n1's entry to count", lambda: fleet.nodes()["n1"].entry_count == 1)

    fleet.liar = Liar(fleet.agent_address, fleet.pki, [SCOPE + k for k in CLAIMED])
    ready = inventory_pb2.NODE_STATE_READY
    nodes = wait_for(
        "the liar to connect", lambda: (n := fleet.nodes()).get("liar") and n["liar"].state == ready and n
    )
    liar, n1 = nodes["liar"], nodes["n1"]
    # Flagged in the inventory: every claim uncorroborated, none listed, its slots bounded.
    assert (liar.entry_count, liar.uncorroborated_entries) == (0, len(CLAIMED))
    assert (liar.slots, liar.registered_slots) == (2, 8)
    assert (n1.uncorroborated_entries, n1.slots, n1.registered_slots) == (0, 1, 1)
    assert [e.key for e in n1.entries] == [SCOPE + "web/deps-H1"]
    # ...and in the metrics.
    assert fleet.metric("stoker_coordinator_node_claims_uncorroborated ") == len(CLAIMED)
    assert fleet.metric('stoker_coordinator_nodes_flagged{reason="entries"}') == 1
    assert fleet.metric('stoker_coordinator_nodes_flagged{reason="slots"}') == 1
    # ...and where an operator reads the inventory.
    env = {"PATH": os.environ["PATH"], "STOKER_CA": str(fleet.pki / "ca.pem"), "STOKER_TOKEN": fleet.ops}
    shown = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "inventory", "--coordinator", fleet.coordinator.address],
        capture_output=True, text=True, env=env, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert (
        f"flagged: liar: {len(CLAIMED)} entries it reports are uncorroborated (count for no placement); "
        "registered with 8 slots, bounded to 2"
    ) in shown, shown
    assert "flagged: n1" not in shown, shown

    # The liar is warm for nothing it claims: placements of the keys only it claims are cold wherever
    # they go (as sent, its snapshot made it the only warm node for each, and each went to it).
    probes = CLAIMED[1:-1]
    placed = [fleet.place(k) for k in probes]
    assert [p.expected_warmth for p in placed] == [common_pb2.WARMTH_COLD] * len(placed), placed

    # The key n1 saved sends the next build of it to n1, warm, though the liar claims it too, and newer.
    # While that build runs on n1 the liar reports about it (it restored H8, it failed): not its build, so
    # nothing of that counts.
    def liar_reports(started: build_pb2.BuildEvent) -> None:
        assert fleet.liar is not None
        for event in (
            build_pb2.BuildEvent(
                restored=build_pb2.Restored(cache=common_pb2.CacheFigures(restored_key=SCOPE + CLAIMED[-1]))
            ),
            build_pb2.BuildEvent(
                finished=build_pb2.Finished(state=build_pb2.BUILD_STATE_FAILED, exit_code=1, message="lie")
            ),
        ):
            update = agent_pb2.BuildUpdate(build_id=started.build_id, attempt=started.attempt, event=event)
            fleet.liar.send(agent_pb2.AgentMessage(build_update=update))

    events = fleet.submit("web/deps-H1", "sleep 1; cat deps/f", on_started=liar_reports)
    placed_event = next(e.placed for e in events if e.HasField("placed"))
    assert (placed_event.node, placed_event.expected_warmth) == ("n1", common_pb2.WARMTH_WARM), placed_event
    done = events[-1].finished
    assert (done.state, done.node, done.cache.warmth) == (
        build_pb2.BUILD_STATE_SUCCEEDED,
        "n1",
        common_pb2.WARMTH_WARM,
    ), done
    assert any(e.HasField("log") and e.log.text == "one" for e in events)
    # The liar sends its claims again. H1 (n1's) and H8 (its made-up restore) still count for nothing. The
    # keys of the leases granted on it now do: a lease's runner restores and saves on its node by hand, out
    # of the coordinator's sight, and the node's report after a lease is all there is (docs/security.md).
    fleet.liar.send(agent_pb2.AgentMessage(snapshot=fleet.liar.snapshot([SCOPE + k for k in CLAIMED])))
    leased = {SCOPE + k for k, p in zip(probes, placed) if p.node == "liar"}
    liar = wait_for(
        "the liar's snapshot", lambda: (n := fleet.nodes()["liar"]).entry_count == len(leased) and n
    )
    assert {e.key for e in liar.entries} == leased
    assert liar.uncorroborated_entries == len(CLAIMED) - len(leased)
    assert not any(c.HasField("run_build") for c in fleet.liar.commands)
