"""The coordinator and agents as real processes over real gRPC on 127.0.0.1.

Registration, snapshots and deltas, builds with streamed logs, cancel, timeout, agent loss and
requeue, a coordinator restart, health and reflection, and bad input. No stubs are mocked: every
call goes through grpcio to a server process started by the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2, inventory_pb2, inventory_pb2_grpc

pytestmark = pytest.mark.integration


def builds_stub(address: str) -> build_pb2_grpc.BuildsStub:
    return build_pb2_grpc.BuildsStub(grpc.insecure_channel(address))


def inventory(address: str, **kw) -> inventory_pb2.QueryInventoryResponse:
    return inventory_pb2_grpc.InventoryStub(grpc.insecure_channel(address)).QueryInventory(
        inventory_pb2.QueryInventoryRequest(**kw), timeout=10
    )


def spec(
    command, *, key: str = "", paths=("out",), restore=(), workspace="web", timeout=60.0, zone="", files=None
):
    return common_pb2.BuildSpec(
        workspace=workspace,
        command=list(command),
        timeout_s=timeout,
        cache=common_pb2.CacheSpec(key=key, restore_keys=list(restore), paths=list(paths) if key else []),
        constraints=common_pb2.Constraints(zone=zone),
        files=files or {},
    )


def run(stub, s, timeout=60) -> list[build_pb2.BuildEvent]:
    return list(stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=s), timeout=timeout))


def kinds(events) -> list[str]:
    return [e.WhichOneof("kind") for e in events]


def wait_until(predicate, timeout=20.0, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_health_and_reflection_on_both_servers(fleet):
    c = fleet.start_coordinator()
    a = fleet.start_agent("n1")
    fleet.wait_ready("n1")
    for address in (c.address, a.address):
        with grpc.insecure_channel(address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(a.address) as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        ready = health_pb2.HealthCheckRequest(service="stoker.agent.Ready")
        wait_until(
            lambda: check(ready, timeout=5).status == health_pb2.HealthCheckResponse.SERVING,
            5,
            "the agent's readiness once its stream is open",
        )
    with grpc.insecure_channel(c.address) as ch:
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "stoker.v1.Builds",
        "stoker.v1.AgentGateway",
        "stoker.v1.Inventory",
        "stoker.v1.Rollouts",
        "grpc.health.v1.Health",
    } <= names
    # Every service the agent lists, reflection can describe (it listed stoker.agent.Ready, a health-check
    # name only, which grpcurl then failed to describe: issue 17, item 8).
    with grpc.insecure_channel(a.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        listed = [
            s.name
            for r in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            for s in r.list_services_response.service
        ]
        assert "grpc.health.v1.Health" in listed and "stoker.agent.Ready" not in listed, listed
        # The stable v1 reflection service answers too (grpcurl asks for it first): the same messages.
        v1 = ch.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        replies = v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        assert [s.name for r in replies for s in r.list_services_response.service] == listed
        for name in listed:
            [reply] = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)]), timeout=5
            )
            assert reply.HasField("file_descriptor_response"), (name, reply)


def test_build_streams_logs_saves_cache_and_inventory_follows_by_delta(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stub = builds_stub(c.address)
    events = run(
        stub,
        spec(["sh", "-c", "mkdir -p out && echo data > out/f && echo one && echo two >&2"], key="web/k1"),
    )
    ks = kinds(events)
    assert ks[0] == "placed" and ks[-1] == "finished"
    assert {"restoring", "restored", "started", "saving"} <= set(ks)
    logs = [(e.log.stream, e.log.text) for e in events if e.HasField("log")]
    assert (build_pb2.LogLine.STREAM_STDOUT, "one") in logs and (
        build_pb2.LogLine.STREAM_STDERR,
        "two",
    ) in logs
    fin = events[-1].finished
    assert fin.state == build_pb2.BUILD_STATE_SUCCEEDED and fin.exit_code == 0 and fin.cache.saved
    assert fin.node == "n1" and fin.timings.total_s > 0
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # The new entry reaches the coordinator as a delta, without a restart.
    inv = wait_until(lambda: [k for k in inventory(c.address).keys if k.key == "web/k1"], message="delta")
    assert inv[0].nodes == ["n1"]
    # A second build with the same key is warm and sees the cached file.
    events = run(stub, spec(["cat", "out/f"], key="web/k1"))
    assert events[-1].finished.cache.warmth == common_pb2.WARMTH_WARM
    assert any(e.log.text == "data" for e in events if e.HasField("log"))


def test_stoker_build_cli_exits_with_the_build_exit_code(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    env = {**os.environ, "STOKER_COORDINATOR": c.address}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stoker.cli.main",
            "build",
            "--workspace",
            "w",
            "--",
            "sh",
            "-c",
            "echo hello-from-build; exit 7",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 7, done.stderr
    assert "hello-from-build" in done.stdout
    assert "placed on n1" in done.stderr


def test_cancel_kills_the_whole_process_group(fleet, tmp_path):
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stub = builds_stub(c.address)
    pids = tmp_path / "pids"
    stream = stub.SubmitBuild(
        build_pb2.SubmitBuildRequest(
            spec=spec(
                [
                    "sh",
                    "-c",
                    f"sleep 300 & echo $! > {pids}.child; echo $$ > {pids}.parent; echo started; wait",
                ]
            )
        ),
        timeout=60,
    )
    build_id = ""
    for event in stream:
        build_id = event.build_id
        if event.HasField("log") and event.log.text == "started":
            break
    child, parent = int(Path(f"{pids}.child").read_text()), int(Path(f"{pids}.parent").read_text())
    assert pid_alive(child) and pid_alive(parent)
    stub.CancelBuild(build_pb2.CancelBuildRequest(build_id=build_id, reason="test"), timeout=10)
    rest = list(stream)
    assert rest[-1].finished.state == build_pb2.BUILD_STATE_CANCELLED
    wait_until(lambda: not pid_alive(child) and not pid_alive(parent), 10, "the process group to be gone")
    record = stub.GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5)
    assert record.state == build_pb2.BUILD_STATE_CANCELLED


def test_timeout_kills_the_build(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    started = time.monotonic()
    events = run(builds_stub(c.address), spec(["sleep", "60"], timeout=1))
    fin = events[-1].finished
    assert fin.state == build_pb2.BUILD_STATE_TIMED_OUT and "timed out after 1 s" in fin.message
    assert time.monotonic() - started < 20


def test_agent_killed_mid_build_requeues_elsewhere_and_finishes_once(fleet):
    c = fleet.start_coordinator(lease_ttl_s=2)
    fleet.start_agent("n1")
    fleet.start_agent("n2")
    fleet.wait_ready("n1", "n2")
    stream = builds_stub(c.address).SubmitBuild(
        build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", "echo begin; sleep 2; echo end"])), timeout=90
    )
    events = []
    for event in stream:
        events.append(event)
        if event.HasField("log") and event.log.text == "begin":
            break
    first_node = next(e.placed.node for e in events if e.HasField("placed"))
    fleet.agents[first_node].kill()
    events += list(stream)
    ks = kinds(events)
    assert "retrying" in ks and ks.count("finished") == 1 and ks[-1] == "finished"
    placed = [e.placed.node for e in events if e.HasField("placed")]
    assert placed[0] == first_node and placed[-1] != first_node
    fin = events[-1]
    assert fin.finished.state == build_pb2.BUILD_STATE_SUCCEEDED and fin.attempt == 2
    assert any(e.log.text == "end" and e.attempt == 2 for e in events if e.HasField("log"))


def test_coordinator_restart_agents_reregister_and_inventory_returns(fleet, port_factory):
    port = port_factory()
    c = fleet.start_coordinator(listen=f"127.0.0.1:{port}")
    for name, zone in (("n1", "a"), ("n2", "b")):
        fleet.start_agent(name, zone=zone)
    fleet.wait_ready("n1", "n2")
    stub = builds_stub(c.address)
    finished_ids = []
    for zone, key in (("a", "web/k-a"), ("b", "web/k-b"), ("a", "api/k")):
        events = run(stub, spec(["sh", "-c", "mkdir -p out && echo x > out/x"], key=key, zone=zone))
        assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
        finished_ids.append(events[-1].build_id)
    wait_until(lambda: len(inventory(c.address).keys) == 3, message="three keys")
    c.kill()
    c2 = fleet.start_coordinator(listen=f"127.0.0.1:{port}", name="coordinator-2")
    fleet.wait_ready("n1", "n2")
    inv = wait_until(
        lambda: (lambda r: r if len(r.keys) == 3 else None)(inventory(c2.address)),
        message="the inventory to come back",
    )
    assert {k.key: list(k.nodes) for k in inv.keys} == {"web/k-a": ["n1"], "web/k-b": ["n2"], "api/k": ["n1"]}
    out = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "inventory", "--coordinator", c2.address],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and all(k in out.stdout for k in ("web/k-a", "web/k-b", "api/k"))
    stub2 = builds_stub(c2.address)
    for build_id in finished_ids:  # the durable state survived
        assert (
            stub2.GetBuild(build_pb2.GetBuildRequest(build_id=build_id), timeout=5).state
            == build_pb2.BUILD_STATE_SUCCEEDED
        )


def test_bad_input_gets_clear_errors_and_does_not_disturb_other_builds(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1", zone="a")
    fleet.wait_ready("n1")
    stub = builds_stub(c.address)
    slow = stub.SubmitBuild(
        build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", "sleep 1; echo survived"])), timeout=60
    )

    def code_of(fn):
        with pytest.raises(grpc.RpcError) as err:
            fn()
        return err.value.code(), err.value.details()

    cases = [
        (spec([], workspace="w"), "spec.command"),
        (spec(["true"], workspace=""), "spec.workspace"),
        (spec(["true"], timeout=-1), "spec.timeout_s"),
        (spec(["true"], key="k", paths=["../x"]), "spec.cache.paths[0]"),
        (spec(["true"], key="k", paths=["/etc"]), "spec.cache.paths[0]"),
    ]
    for bad, field in cases:
        code, details = code_of(lambda bad=bad: run(stub, bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), (code, details)
    code, details = code_of(lambda: run(stub, spec(["true"], zone="nowhere")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "zone=nowhere" in details
    code, _ = code_of(lambda: stub.GetBuild(build_pb2.GetBuildRequest(build_id="b-missing"), timeout=5))
    assert code == grpc.StatusCode.NOT_FOUND
    from stoker.v1 import agent_pb2, agent_pb2_grpc

    gateway = agent_pb2_grpc.AgentGatewayStub(grpc.insecure_channel(c.address))
    code, details = code_of(lambda: gateway.Register(agent_pb2.RegisterRequest(node="", slots=1), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("node")
    events = list(slow)
    assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
    assert any(e.log.text == "survived" for e in events if e.HasField("log"))


def test_queued_build_says_so_and_placement_lease_flow(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1", labels={"pool": "big"})
    fleet.wait_ready("n1")
    env = {**os.environ, "STOKER_COORDINATOR": c.address}
    placed = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "place", "--workspace", "w", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert placed.returncode == 0, placed.stderr
    import json

    lease = json.loads(placed.stdout)
    assert lease["node"] == "n1" and lease["node_labels"] == {"pool": "big"}
    stub = builds_stub(c.address)
    stream = stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec(["echo", "ran"])), timeout=60)
    first = next(stream)
    assert first.HasField("queued") and "all busy" in first.queued.reason
    released = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "release", lease["lease_id"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert released.returncode == 0 and "released" in released.stdout
    rest = list(stream)
    assert rest[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED


def test_agent_sigterm_drains_running_build(fleet):
    c = fleet.start_coordinator()
    agent = fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stream = builds_stub(c.address).SubmitBuild(
        build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", "echo go; sleep 1; echo finished-normally"])),
        timeout=60,
    )
    for event in stream:
        if event.HasField("log") and event.log.text == "go":
            break
    agent.popen.send_signal(signal.SIGTERM)
    rest = list(stream)
    assert rest[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED
    assert any(e.log.text == "finished-normally" for e in rest if e.HasField("log"))
    assert agent.popen.wait(20) == 0


def test_builds_do_not_inherit_the_agents_credentials(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1", env={"AWS_SECRET_ACCESS_KEY": "s3cr3t", "PATH": os.environ["PATH"]})
    fleet.wait_ready("n1")
    events = run(
        builds_stub(c.address),
        common_pb2.BuildSpec(
            workspace="w",
            command=["sh", "-c", 'echo "secret=${AWS_SECRET_ACCESS_KEY:-none} mine=$MINE"'],
            env={"MINE": "yes"},
        ),
    )
    lines = [e.log.text for e in events if e.HasField("log")]
    assert "secret=none mine=yes" in lines


def test_missing_command_is_a_clear_error(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    events = run(builds_stub(c.address), spec(["no-such-build-tool", "--version"]))
    fin = events[-1].finished
    assert fin.state == build_pb2.BUILD_STATE_ERROR and fin.exit_code == 127
    assert "cannot start 'no-such-build-tool': no such executable" in fin.message


def test_placement_lease_must_be_finite_and_bounded(fleet):
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stub = builds_stub(c.address)
    for bad in (float("nan"), float("inf"), -1.0, 1e12):
        with pytest.raises(grpc.RpcError) as err:
            stub.PlaceBuild(
                build_pb2.PlaceBuildRequest(spec=common_pb2.BuildSpec(workspace="w"), lease_s=bad), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(
            "lease_s"
        )
    # The node's slot was not taken by any of them: a normal placement still gets it at once.
    lease = stub.PlaceBuild(
        build_pb2.PlaceBuildRequest(spec=common_pb2.BuildSpec(workspace="w"), lease_s=5), timeout=5
    )
    assert lease.node == "n1"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetBuild(build_pb2.GetBuildRequest(build_id="b-" + "x" * 5000), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 200


def test_the_builds_output_is_its_own_and_stokers_lines_come_on_their_own_stream(fleet):
    """Issue 17, item 5: the agent wrote "stoker: cache key matched exactly; not saving" into the build's
    stdout, where a build could also print it to look like stoker. Now the build's streams hold only what
    it wrote, and stoker's lines come as STREAM_STOKER, which a build cannot write to."""
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stub = builds_stub(c.address)
    script = "mkdir -p out && echo data > out/f && echo 'stoker: cache key matched exactly; not saving'"
    run(stub, spec(["sh", "-c", script], key="web/own-1"))
    events = run(stub, spec(["sh", "-c", script], key="web/own-1"))  # an exact hit: stoker does not save
    logs = [(e.log.stream, e.log.text) for e in events if e.HasField("log")]
    stdout = [t for s, t in logs if s == build_pb2.LogLine.STREAM_STDOUT]
    assert stdout == ["stoker: cache key matched exactly; not saving"]  # only the build's own line
    ours = [t for s, t in logs if s == build_pb2.LogLine.STREAM_STOKER]
    assert ours == ["stoker: cache key matched exactly; not saving"], logs
    assert not [t for s, t in logs if s == build_pb2.LogLine.STREAM_STDERR], logs


def test_submit_names_the_build_in_its_initial_metadata_before_any_event(fleet):
    """Issue 17, item 9: a client that dropped before the first event could not reattach without a
    request_id. The id comes in the response's initial metadata, readable before any message."""
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stub = builds_stub(c.address)
    call = stub.SubmitBuild(
        build_pb2.SubmitBuildRequest(spec=spec(["sh", "-c", "sleep 1; echo hi"])), timeout=60
    )
    build_id = dict(call.initial_metadata())["stoker-build-id"]
    assert build_id.startswith("b-")
    call.cancel()  # the client goes away before reading an event
    events = list(stub.WatchBuild(build_pb2.WatchBuildRequest(build_id=build_id), timeout=60))
    assert events[-1].HasField("finished") and events[-1].build_id == build_id
    assert any(e.HasField("log") and e.log.text == "hi" for e in events)


def test_list_builds_pages_newest_first_with_filters_and_the_cli_prints_them(fleet):
    """Issue 17, item 9: ListBuilds (filters, paging) and ``stoker builds``."""
    c = fleet.start_coordinator()
    fleet.start_agent("n1")
    fleet.wait_ready("n1")
    stub = builds_stub(c.address)
    ids = []
    for i in range(5):
        events = run(stub, spec(["sh", "-c", f"exit {i % 2}"], workspace="listed"))
        ids.append(events[-1].build_id)
    run(stub, spec(["true"], workspace="other"))
    seen, token, pages = [], "", 0
    while True:
        reply = stub.ListBuilds(
            build_pb2.ListBuildsRequest(workspace="listed", page_size=2, page_token=token), timeout=10
        )
        seen += [b.id for b in reply.builds]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == ids[::-1] and pages == 3
    failed = stub.ListBuilds(
        build_pb2.ListBuildsRequest(workspace="listed", state=build_pb2.BUILD_STATE_FAILED), timeout=10
    )
    assert [b.id for b in failed.builds] == [ids[3], ids[1]]
    assert not stub.ListBuilds(build_pb2.ListBuildsRequest(node="no-such-node"), timeout=10).builds
    with pytest.raises(grpc.RpcError) as bad:
        stub.ListBuilds(build_pb2.ListBuildsRequest(page_token="not-a-token"), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in bad.value.details()
    out = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "builds", "--coordinator", c.address,
         "--workspace", "listed", "--state", "succeeded", "--since", "1h", "--limit", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0].split()[:3] == ["ID", "STATE", "WORKSPACE"]
    assert [r.split()[:3] for r in rows[1:]] == [
        [ids[4], "succeeded", "listed"],
        [ids[2], "succeeded", "listed"],
    ]


def test_an_operator_prewarms_a_key_onto_more_nodes_and_waits_for_them(fleet):
    """Issue 17, item 10: ``stoker prewarm KEY --replicas N --zone Z``: the nodes asked really fetch the
    entry from the blob store and report it."""
    c = fleet.start_coordinator()
    for name, zone in (("n1", "zone-a"), ("n2", "zone-a"), ("n3", "zone-b")):
        fleet.start_agent(name, zone=zone)
    fleet.wait_ready("n1", "n2", "n3")
    stub = builds_stub(c.address)
    saved = run(stub, spec(["sh", "-c", "mkdir -p out && echo data > out/f"], key="web/pk", zone="zone-a"))
    first = saved[-1].finished.node
    wait_until(lambda: [k for k in inventory(c.address).keys if k.key == "web/pk"], message="the saved entry")
    out = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "prewarm", "web/pk", "--coordinator", c.address,
         "--replicas", "2", "--zone", "zone-a", "--wait", "30"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    other = ({"n1", "n2"} - {first}).pop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"holding: {first}; asked: {other}", f"{other}: holds web/pk"]
    [held] = [k for k in inventory(c.address).keys if k.key == "web/pk"]
    assert sorted(held.nodes) == sorted([first, other])  # n3 (zone-b) was not asked
    inv = inventory_pb2_grpc.InventoryStub(grpc.insecure_channel(c.address))
    again = inv.Prewarm(inventory_pb2.PrewarmRequest(key="web/pk", replicas=2, zone="zone-a"), timeout=10)
    assert sorted(again.holding) == sorted([first, other]) and not again.asked  # nothing more to do
    for request, code in (
        (inventory_pb2.PrewarmRequest(key="web/pk", replicas=65), grpc.StatusCode.INVALID_ARGUMENT),
        (inventory_pb2.PrewarmRequest(key=""), grpc.StatusCode.INVALID_ARGUMENT),
        (inventory_pb2.PrewarmRequest(key="web/pk", zone="zone-z"), grpc.StatusCode.FAILED_PRECONDITION),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            inv.Prewarm(request, timeout=10)
        assert refused.value.code() == code, refused.value.details()


def test_a_lost_node_can_be_forgotten_and_a_connected_one_cannot(fleet):
    """Issue 17, item 8: ``stoker node forget`` removes a lost (decommissioned) node from the inventory;
    a connected or merely disconnected node is refused, saying why."""
    c = fleet.start_coordinator(lease_ttl_s=1)
    fleet.start_agent("n1")
    fleet.start_agent("n2")
    fleet.wait_ready("n1", "n2")

    def forget(node: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "stoker.cli.main", "node", "forget", node, "--coordinator", c.address],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    refused = forget("n2")
    assert refused.returncode == 125 and "FAILED_PRECONDITION: node n2 is connected" in refused.stderr
    assert "NOT_FOUND" in forget("n9").stderr
    fleet.agents["n2"].kill()
    wait_until(
        lambda: any(
            n.node == "n2" and n.state == inventory_pb2.NODE_STATE_LOST for n in inventory(c.address).nodes
        ),
        message="n2 lost",
    )
    done = forget("n2")
    assert done.returncode == 0 and done.stdout.strip() == "forgot node n2", done.stderr
    assert [n.node for n in inventory(c.address).nodes] == ["n1"]
    events = run(builds_stub(c.address), spec(["true"]))
    assert events[-1].finished.node == "n1"
