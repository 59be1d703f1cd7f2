"""The ``podman`` executor: each build in its own container, driven through podman's CLI.

What a build gets (``_run_argv`` is the one place it is decided): its own user namespace mapped onto an
unprivileged host uid range (``podman.uid_base``), its own pid, mount, ipc, uts and network namespaces
(network ``none`` on request), podman's default seccomp filter, no new privileges, no capabilities,
cgroup limits on memory, pids and CPU, only its workspace mounted (at /workspace, the working
directory), a read-only root file system with fresh tmpfs /tmp, /var/tmp, /run and HOME (tmpfs pages count
against the memory limit, so nothing a build writes outside its workspace escapes a limit: a writable root
would land in podman's storage on the node's SSD, outside the disk limit), and an init (catatonit) as
pid 1: when the command exits, pid 1 exits and the kernel kills everything left in the pid namespace,
``setsid`` daemons included.

podman keeps its storage under ``podman.dir``, apart from the host's. Every container carries the label
``stoker.build``; an agent that starts removes every such container a crashed predecessor left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stoker.agent.config import PodmanSettings
from stoker.agent.executors.base import (
    MAX_LINE,
    BuildExecutor,
    BuildJob,
    DiskWatch,
    EndReason,
    ExecutorUnavailable,
    Outcome,
    OutputBudget,
    OutputSink,
    Stop,
    exit_message,
    pump_lines,
)
from stoker.agent.executors.images import Image, ImageStore

log = logging.getLogger(__name__)

LABEL = "stoker.build"
NETWORK = "stoker-builds"
"""The builds' own network (podman.network_subnet), apart from podman's default one."""
BRIDGE = "stoker0"
HOME = "/home/stoker"
WORKSPACE = "/workspace"
_CGROUP_PARENT = "/stoker-builds"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_POLL_S = 0.02
"""How often the cgroup's OOM and pids counters are read while a build runs: the kernel counts in the
container's own cgroup (cgroup v1), which is gone some tens of ms after the command died."""
_PODMAN_FAILED = 125
_PODMAN_LOST_EXIT = 127
"""podman run's exit code when it could not learn the container's own, with an ``Error: …exit code…`` line
last on stderr (podman 4.3, under load: "getting exit code of container … from DB: no such exit code")."""
"""podman run's exit code when podman itself failed (with its own ``Error: …`` line last on stderr)."""
_RUNROOT_MAX = 50
_INIT_PATHS = ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit")


@dataclass
class _Container:
    name: str
    stop: Stop
    stopping: asyncio.Task[None] | None = None


class PodmanExecutor(BuildExecutor):
    name = "podman"

    def __init__(self, settings: PodmanSettings) -> None:
        self._settings = settings
        self._dir = Path(settings.dir)
        self._podman = ""
        self._runtime = ""
        self._init_path = ""
        self._ulimits: list[str] = []
        self._running: dict[str, _Container] = {}
        self._images = ImageStore(
            self._podman_cmd, self._dir / "image-uses.json", settings.image_budget_bytes
        )

    # -- start and leftovers -------------------------------------------------------------------
    async def start(self) -> str:
        found = shutil.which(self._settings.binary)
        if found is None:
            raise ExecutorUnavailable(
                f"podman ({self._settings.binary!r}) is not installed: install the Debian "
                "package podman (scripts/system_deps.sh does), or set build.executor=process "
                "on a trusted node"
            )
        self._podman = found
        self._init_path = next((p for p in _INIT_PATHS if os.access(p, os.X_OK)), "")
        if not self._init_path:
            raise ExecutorUnavailable(
                "catatonit (podman's init for builds) is missing: install the Debian package "
                "catatonit (scripts/system_deps.sh does)"
            )
        if len(str(self._dir / "run")) > _RUNROOT_MAX:
            raise ExecutorUnavailable(
                f"podman.dir {self._dir} is too long: podman refuses a run directory "
                f"({self._dir / 'run'}) longer than {_RUNROOT_MAX} characters"
            )
        try:
            uid_map = Path("/proc/self/uid_map").read_text()
        except OSError:
            uid_map = ""
        problem = uid_range_problem(self._settings.uid_base, self._settings.uid_count, uid_map, os.getuid())
        if problem:
            raise ExecutorUnavailable(problem)
        for sub in ("storage", "run", "tmp", "jobs", "networks"):
            (self._dir / sub).mkdir(parents=True, exist_ok=True)
        info = await self._info()
        host = info.get("host", {})
        cgroups = host.get("cgroupVersion", "")
        default_runtime = host.get("ociRuntime", {}).get("name", "")
        self._runtime, why = _choose_runtime(self._settings.runtime, cgroups, default_runtime)
        problem = cgroup_parent_problem(Path("/sys/fs/cgroup"), cgroups)
        if problem:
            raise ExecutorUnavailable(problem)
        self._ulimits = _ulimits(self._settings.nofile)
        await self._ensure_network()
        await self._images.refresh()
        version = info.get("version", {}).get("Version", "?")
        return (
            f"podman executor: podman {version}, runtime {self._runtime} ({why}), cgroups {cgroups}, "
            f"storage {self._dir}"
        )

    # -- the builds' network -------------------------------------------------------------------
    async def _ensure_network(self) -> None:
        """The builds' own bridge network, and the rules that keep its builds off this machine and off
        ``podman.network_blocked``. Every agent on a machine uses the same bridge (stoker0) and subnet."""
        s = self._settings
        # Written rather than made with `podman network create`: podman 4.3 cannot name the bridge, and two
        # agents on one machine must share one bridge for one subnet (CNI's host-local IPAM, keyed by the
        # network's name, then keeps their addresses apart).
        config = self._dir / "networks" / f"{NETWORK}.conflist"
        try:
            network = cni_network(s.network_subnet, firewall=not s.network_guard)
            _write_private(config, json.dumps(network, indent=2) + "\n")
        except ValueError as exc:
            raise ExecutorUnavailable(f"podman.network_subnet {s.network_subnet!r}: {exc}") from exc
        code, _, err = await self._podman_cmd("network", "exists", NETWORK, runtime=False, timeout_s=60)
        if code != 0:
            raise ExecutorUnavailable(f"podman does not take the builds' network {config}: {_last_line(err)}")
        if not s.network_guard:
            log.warning(
                "podman.network_guard is off: builds on network default can reach this machine's services"
            )
            return
        for cidr in s.network_blocked:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ExecutorUnavailable(
                    f"podman.network_blocked: {cidr!r} is not a network: {exc}"
                ) from exc
        iptables = shutil.which("iptables")
        if iptables is None:
            raise ExecutorUnavailable(
                "iptables is missing (Debian package iptables): it keeps builds off this machine's own "
                "addresses; install it, or set podman.network_guard=false where the network is guarded "
                "otherwise"
            )
        for how, rule in guard_rules(s.network_subnet, s.network_blocked):
            if await _iptables(iptables, "-C", *rule) == 0:
                continue
            if await _iptables(iptables, how, *rule) != 0:
                raise ExecutorUnavailable(
                    f"cannot add the iptables rule `{' '.join(rule)}` that keeps builds off this machine "
                    "(the agent needs CAP_NET_ADMIN); or set podman.network_guard=false"
                )

    async def _info(self) -> dict:
        code, out, err = await self._podman_cmd("info", "--format", "json", runtime=False, timeout_s=120)
        if code != 0:
            raise ExecutorUnavailable(f"`podman info` failed (exit {code}): {_last_line(err)}")
        return json.loads(out)

    async def cleanup_leftovers(self) -> int:
        code, out, err = await self._podman_cmd(
            "ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.Names}}", timeout_s=120
        )
        if code != 0:
            log.warning("cannot list leftover build containers: %s", _last_line(err))
            return 0
        names = out.split()
        for name in names:
            await self._remove(name)
        for leftover in (self._dir / "jobs").iterdir():
            leftover.unlink(missing_ok=True)
        return len(names)

    # -- image ---------------------------------------------------------------------------------
    async def prepare(self, job: BuildJob, output: OutputSink) -> Outcome | None:
        if not job.image:
            return Outcome(
                -1, EndReason.IMAGE, "no image: the build names none and build.default_image is empty"
            )
        code, _, _ = await self._podman_cmd("image", "exists", job.image, timeout_s=60)
        if code == 0:
            await self._images.acquire(job.build_id, job.image)
            return None
        args = ["pull"]
        if _registry(job.image) in self._settings.insecure_registries:
            args.append("--tls-verify=false")
        if self._settings.auth_file:
            args += ["--authfile", self._settings.auth_file]
        output(f"stoker: pulling image {job.image}", True)
        started = time.monotonic()
        lines: list[str] = []

        def progress(line: str, _stderr: bool) -> None:
            lines.append(line)
            output(line, True)

        code = await self._stream(args + [job.image], progress, self._settings.pull_timeout_s)
        if code != 0:
            errors = [ln for ln in lines if ln.startswith("Error")] or lines[-1:] or [f"exit {code}"]
            return Outcome(-1, EndReason.IMAGE, f"cannot pull image {job.image}: {errors[-1]}")
        output(f"stoker: pulled image {job.image} in {time.monotonic() - started:.1f} s", True)
        await self._images.acquire(job.build_id, job.image)
        await self._images.refresh()
        return None

    # -- one build -----------------------------------------------------------------------------
    async def run(
        self, job: BuildJob, output: OutputSink, on_started: Callable[[int], None] | None = None
    ) -> Outcome:
        problem = _check_job(job)
        if problem:
            self._images.release(job.build_id)
            return Outcome(-1, EndReason.NOT_STARTED, problem)
        container = _Container(_container_name(job.build_id), Stop())
        self._running[job.build_id] = container
        removed = False
        env_file = self._dir / "jobs" / f"{container.name}.env"
        cid_file = self._dir / "jobs" / f"{container.name}.cid"
        try:
            _write_private(env_file, "".join(f"{k}={v}\n" for k, v in self._environment(job).items()))
            cid_file.unlink(missing_ok=True)
            argv = self._global_args() + self._run_argv(job, container.name, env_file, cid_file)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._podman_env(),
                cwd=self._dir,
                limit=MAX_LINE,
            )
            if on_started is not None:
                on_started(proc.pid)
            if container.stop.reason is not None:  # cancelled while starting
                self._stop_container(container)
            outcome = await self._wait(job, proc, container, cid_file, output)
            # ``podman run --rm`` removed the container as it ended (cheaper than a ``podman rm`` after it,
            # which podman 4.3 fails while its own cleanup still holds the shm mount); only when podman
            # itself failed may one be left.
            removed = outcome.reason is not EndReason.NOT_STARTED
            return outcome
        finally:
            self._running.pop(job.build_id, None)
            if container.stopping is not None:  # its ``podman stop`` ends with the container, not after run()
                await asyncio.shield(container.stopping)
            if not removed:
                await asyncio.shield(self._remove(container.name))
            env_file.unlink(missing_ok=True)
            cid_file.unlink(missing_ok=True)
            self._images.release(job.build_id)
            self._images.enforce_budget_soon()

    def images(self) -> tuple[Image, ...]:
        return self._images.held

    def release(self, build_id: str) -> None:
        self._images.release(build_id)
        self._images.enforce_budget_soon()

    @property
    def runtime(self) -> str:
        return self._runtime

    async def _wait(
        self,
        job: BuildJob,
        proc: asyncio.subprocess.Process,
        container: _Container,
        cid_file: Path,
        output: OutputSink,
    ) -> Outcome:
        def over_budget() -> None:
            if container.stop.request(
                EndReason.OUTPUT, f"more than {job.limits.output_bytes} bytes of output"
            ):
                self._stop_container(container)

        last_stderr = [""]

        def passing_on(line: str, stderr: bool) -> None:
            if stderr:
                last_stderr[0] = line
            output(line, stderr)

        def over_disk(message: str) -> None:
            if container.stop.request(EndReason.DISK, message):
                self._stop_container(container)

        budget = OutputBudget(job.limits.output_bytes, over_budget)
        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(
            pump_lines(proc.stdout, passing_on, False, budget),
            pump_lines(proc.stderr, passing_on, True, budget),
        )
        watcher = _CgroupWatch(cid_file)
        disk = DiskWatch(job.limits.disk_bytes, job.workspace, over_disk)
        watching = [asyncio.create_task(watcher.watch()), asyncio.create_task(disk.watch())]
        try:
            await asyncio.wait_for(proc.wait(), job.timeout_s)
        except TimeoutError:
            if container.stop.request(EndReason.TIMEOUT, f"timed out after {job.timeout_s:g} s"):
                self._stop_container(container)
            await proc.wait()
        finally:
            for task in watching:
                task.cancel()
            watcher.read_once()
        await disk.check()  # what it wrote since the last measurement
        await readers
        code = proc.returncode if proc.returncode is not None else -1
        if code == _PODMAN_FAILED and last_stderr[0].startswith("Error: ") and container.stop.reason is None:
            return Outcome(
                code, EndReason.NOT_STARTED, f"podman could not run the build: {last_stderr[0][7:]}"
            )
        if (
            code == _PODMAN_LOST_EXIT
            and last_stderr[0].startswith("Error: ")
            and "exit code" in last_stderr[0]
        ):
            recovered = await self._exit_code_from_events(cid_file)
            if recovered is None:
                log.error("build %s: podman lost its exit code: %s", job.build_id, last_stderr[0])
                return Outcome(
                    -1, EndReason.LOST, f"podman lost the build's exit code ({last_stderr[0][7:]})"
                )
            log.warning(
                "build %s: podman lost its exit code (%s); its died event says %d",
                job.build_id,
                last_stderr[0],
                recovered,
            )
            code = recovered
        if code == 1 and "failed to exec pid1" in last_stderr[0] and container.stop.reason is None:
            # catatonit (the build's init) could not start the command: as the process executor says.
            why = last_stderr[0].rsplit(": ", 1)[-1]
            return Outcome(127, EndReason.NOT_STARTED, f"cannot start {job.argv[0]!r}: {why.lower()}")
        return _outcome(code, container.stop, watcher, job)

    lost_exit_wait_s = 5.0
    """How long to look for a died event when podman lost a build's exit code."""

    async def _exit_code_from_events(self, cid_file: Path) -> int | None:
        """The exit code in the container's ``died`` event (podman's events file), which podman writes
        even when ``podman run`` itself failed to read the code back; ``None`` if there is none within
        ``lost_exit_wait_s`` (the cleanup that writes it may still be running)."""
        try:
            cid = cid_file.read_text().strip()
        except OSError:
            return None
        deadline = time.monotonic() + self.lost_exit_wait_s
        while True:
            code, out, _ = await self._podman_cmd(
                "events",
                "--stream=false",
                "--filter",
                f"container={cid}",
                "--filter",
                "event=died",
                "--format",
                "{{.ContainerExitCode}}",
                timeout_s=30,
            )
            codes = [line.strip() for line in out.splitlines() if line.strip().lstrip("-").isdigit()]
            if code == 0 and codes:
                return int(codes[-1])
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.25)

    def cancel(self, build_id: str, reason: str) -> None:
        container = self._running.get(build_id)
        if container is not None and container.stop.request(EndReason.CANCELLED, reason or "cancelled"):
            self._stop_container(container)

    def _stop_container(self, container: _Container) -> None:
        """``podman stop``: SIGTERM to the container's init, SIGKILL after the grace period."""

        async def stop() -> None:
            grace = str(max(0, round(self._settings.kill_grace_s)))
            code, _, err = await self._podman_cmd(
                "stop",
                "--ignore",
                "--time",
                grace,
                container.name,
                timeout_s=self._settings.kill_grace_s + 60,
            )
            if code != 0:
                log.warning("podman stop %s failed: %s", container.name, _last_line(err))

        if container.stopping is None:
            container.stopping = asyncio.get_running_loop().create_task(stop())

    async def _remove(self, name: str) -> None:
        """Remove the container whatever its state; podman 4.3 sometimes reports its shm mount busy on the
        first try right after the container exited, so try a few times."""
        err = ""
        for attempt in range(4):
            code, _, err = await self._podman_cmd(
                "rm", "--force", "--ignore", "--time", "0", name, timeout_s=120
            )
            if code == 0:
                return
            await asyncio.sleep(0.2 * (attempt + 1))
        log.error("cannot remove build container %s: %s", name, _last_line(err))

    # -- podman's command lines ----------------------------------------------------------------
    def _global_args(self, runtime: bool = True) -> list[str]:
        args = [
            self._podman,
            "--root",
            str(self._dir / "storage"),
            "--runroot",
            str(self._dir / "run"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--network-config-dir",
            str(self._dir / "networks"),
        ]
        if runtime and self._runtime:
            args += ["--runtime", self._runtime]
        return args

    def _run_argv(self, job: BuildJob, name: str, env_file: Path, cid_file: Path) -> list[str]:
        """Every isolation and limit a build gets, in one list (see the module's docstring)."""
        s, lim = self._settings, job.limits
        idmap = f"0:{s.uid_base}:{s.uid_count}"
        argv = [
            "run",
            "--rm",
            "--name",
            name,
            "--label",
            f"{LABEL}={job.build_id}",
            "--cidfile",
            str(cid_file),
            "--pull",
            "never",
            "--init",
            "--init-path",
            self._init_path,
            "--uidmap",
            idmap,
            "--gidmap",
            idmap,
            "--security-opt",
            "no-new-privileges",
            "--cap-drop",
            "all",
            "--cgroup-parent",
            _CGROUP_PARENT,
            "--log-driver",
            "none",
            "--http-proxy=false",
            "--stop-timeout",
            str(max(0, round(s.kill_grace_s))),
            "--env-file",
            str(env_file),
            "--mount",
            f"type=bind,source={job.workspace},destination={WORKSPACE},U=true",
            "--workdir",
            WORKSPACE,
            "--read-only",  # podman then mounts tmpfs on /run and /var/tmp (and /tmp, given below)
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,mode=1777",
            "--tmpfs",
            f"{HOME}:rw,nosuid,nodev,mode=0700",
            *self._ulimits,
        ]
        argv += ["--network", "none" if lim.network == "none" else NETWORK]
        # No IPv6 in a build: the guard's rules are IPv4 ones, and over IPv6 the bridge's link-local address
        # led to every service of this machine listening on [::] (found by a hostile build).
        argv += [
            "--sysctl",
            "net.ipv6.conf.all.disable_ipv6=1",
            "--sysctl",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]
        if lim.pids > 0:
            argv += ["--pids-limit", str(lim.pids)]
        if lim.memory_bytes > 0:
            argv += ["--memory", str(lim.memory_bytes), "--memory-swap", str(lim.memory_bytes)]
        if lim.cpus > 0:
            argv += ["--cpus", f"{lim.cpus:g}"]
        return argv + ["--", job.image, *job.argv]

    def _environment(self, job: BuildJob) -> dict[str, str]:
        env = {"HOME": HOME}
        env.update(job.env)
        env["STOKER_WORKSPACE"] = WORKSPACE
        return env

    def _podman_env(self) -> dict[str, str]:
        # podman runs in the agent's podman directory (cwd=self._dir): conmon 2.1 writes an ``oom`` file
        # into its working directory when a container hits its memory limit.
        """podman's own environment: nothing of the agent's (its credentials, proxies) reaches podman, so
        nothing of it can reach a container either."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TMPDIR": str(self._dir / "tmp"),
            "HOME": str(self._dir),
        }

    async def _podman_cmd(self, *args: str, runtime: bool = True, timeout_s: float) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *self._global_args(runtime),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._podman_env(),
            cwd=self._dir,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1, "", f"podman {args[0]} did not finish within {timeout_s:g} s"
        except asyncio.CancelledError:
            # Never leave a podman command running behind a cancelled caller: its pipes would keep an
            # event loop from closing.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        code = proc.returncode if proc.returncode is not None else -1
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    async def _stream(self, args: list[str], output: OutputSink, timeout_s: float) -> int:
        """Run a podman command, passing its output lines on as they come (a pull's progress)."""
        proc = await asyncio.create_subprocess_exec(
            *self._global_args(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._podman_env(),
            cwd=self._dir,
            limit=MAX_LINE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        budget = OutputBudget(0, lambda: None)
        readers = asyncio.gather(
            pump_lines(proc.stdout, output, False, budget), pump_lines(proc.stderr, output, True, budget)
        )
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            output(f"Error: podman {args[0]} did not finish within {timeout_s:g} s", True)
        await readers
        return proc.returncode if proc.returncode is not None else -1


class _CgroupWatch:
    """Reads the build container's OOM-kill and pids-limit counters while it runs."""

    def __init__(self, cid_file: Path) -> None:
        self._cid_file = cid_file
        self._dirs: list[Path] = []
        self.oom_kills = 0
        self.pids_max_hits = 0

    async def watch(self) -> None:
        while True:
            self.read_once()
            await asyncio.sleep(_POLL_S)

    def read_once(self) -> None:
        if not self._dirs:
            self._dirs = _cgroup_dirs(self._cid_file)
        for d in self._dirs:
            self.oom_kills = max(
                self.oom_kills,
                _counter(d / "memory.oom_control", "oom_kill"),
                _counter(d / "memory.events", "oom_kill"),
            )
            self.pids_max_hits = max(self.pids_max_hits, _counter(d / "pids.events", "max"))


def cni_network(subnet: str, firewall: bool = False) -> dict:
    """The builds' network as a CNI configuration list: a named bridge with NAT. podman 4.3 would also add
    the portmap, tuning and firewall plugins; builds publish no ports and need no tuning, and the firewall
    plugin's per-container rules (which let forwarding through a DROP policy) cost ~0.1 s of every build's
    start here: the agent's own rules do that job once (``guard_rules``). With the guard off it is kept."""
    net = ipaddress.ip_network(subnet)
    return {
        "cniVersion": "0.4.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": str(net), "gateway": str(next(net.hosts()))}]],
                },
                "capabilities": {"ips": True},
            },
            *([{"type": "firewall", "backend": ""}] if firewall else []),
        ],
    }


def guard_rules(subnet: str, blocked: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """iptables rules as (how, rule): ``-I`` rules go first in their chain, ``-A`` rules last. First, drop
    what builds on ``subnet`` send to this machine's own addresses (INPUT: the agent's ports, the host's
    services, whatever listens on 0.0.0.0) and to ``blocked`` (FORWARD); last, let the rest of their
    traffic through FORWARD (and its answers back), as CNI's firewall plugin would for each container, on
    hosts whose FORWARD policy is DROP. Traffic to the internet, DNS servers elsewhere included, flows."""
    mark = ("-m", "comment", "--comment", "stoker: builds may not reach this machine")
    rules: list[tuple[str, tuple[str, ...]]] = [("-I", ("INPUT", "-s", subnet, *mark, "-j", "DROP"))]
    for cidr in blocked:
        rules.append(("-I", ("FORWARD", "-s", subnet, "-d", cidr, *mark, "-j", "DROP")))
    passing = ("-m", "comment", "--comment", "stoker: builds reach the internet")
    rules.append(("-A", ("FORWARD", "-s", subnet, *passing, "-j", "ACCEPT")))
    established = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED")
    rules.append(("-A", ("FORWARD", "-d", subnet, *established, *passing, "-j", "ACCEPT")))
    return rules


async def _iptables(binary: str, *args: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        binary, "-w", "10", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait()


def uid_range_problem(base: int, count: int, uid_map: str, own_uid: int) -> str:
    """What is wrong with the uid range builds map onto ('' when nothing): it must lie inside what this
    agent's own user namespace maps (a user-namespaced pod maps 65536 ids, not 200000 onward), and must not
    hold the agent's own uid (a build would own the agent's files)."""
    if count <= 0 or base < 0:
        return f"podman.uid_count {count} and podman.uid_base {base} must be positive"
    end = base + count
    if base <= own_uid < end:
        return (
            f"podman.uid_base {base} and uid_count {count} include the agent's own uid {own_uid}: builds "
            "would own the agent's files; move the range"
        )
    mapped = []
    for line in uid_map.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            mapped.append((int(fields[0]), int(fields[0]) + int(fields[2])))
    if mapped and not any(lo <= base and end <= hi for lo, hi in mapped):
        have = ", ".join(f"{lo}..{hi - 1}" for lo, hi in mapped)
        return (
            f"podman.uid_base {base} and uid_count {count} ({base}..{end - 1}) are not mapped in the agent's "
            f"user namespace (it maps {have}); set them inside it, e.g. uid_base 1 and uid_count 65535 in a "
            "user-namespaced pod (docs/kubernetes.md)"
        )
    return ""


def cgroup_parent_problem(root: Path, version: str) -> str:
    """Why builds' cgroups cannot be made under ``_CGROUP_PARENT`` ("" when they can): the agent makes the
    parent in each controller that limits a build, as podman would at the first build, so that a read-only
    or missing cgroup file system (a pod without it mounted writable) stops the agent at start with one line
    rather than failing every build with podman's error."""
    name = _CGROUP_PARENT.strip("/")
    controllers = ("pids", "memory", "cpu") if version == "v1" else ("",)
    for controller in controllers:
        parent = root / controller / name if controller else root / name
        try:
            parent.mkdir(exist_ok=True)
        except OSError as exc:
            return (
                f"cannot make the builds' cgroup {parent}: {exc.strerror or exc}; the agent needs "
                "/sys/fs/cgroup writable (docs/kubernetes.md)"
            )
    return ""


def _cgroup_dirs(cid_file: Path) -> list[Path]:
    try:
        cid = cid_file.read_text().strip()
    except OSError:
        return []
    if not cid:
        return []
    rel = f"{_CGROUP_PARENT.strip('/')}/libpod-{cid}"
    root = Path("/sys/fs/cgroup")
    candidates = [root / "memory" / rel, root / "pids" / rel, root / rel]  # cgroup v1 controllers, then v2
    return [d for d in candidates if d.is_dir()]


def _counter(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _outcome(code: int, stop: Stop, watcher: _CgroupWatch, job: BuildJob) -> Outcome:
    if code > 128 and (stop.reason is not None or watcher.oom_kills):
        # A signal ended it (the agent stopped it, or the kernel killed it at its memory limit): podman
        # reports 128+N, as a shell does; report -N, as the process executor does (exit codes agree).
        code = -(code - 128)
    oom = f"killed by the kernel at its memory limit of {job.limits.memory_bytes} bytes (out of memory)"
    if watcher.oom_kills and code != 0:
        return Outcome(code, EndReason.OOM, oom)
    if watcher.oom_kills and stop.reason is None:
        # The kernel killed one of its processes (a subshell, a compiler) and the command went on to exit
        # 0: the build stands as it ended, but its message must not hide the kill.
        return Outcome(code, EndReason.EXITED, f"{exit_message(code)}, but a process of it was {oom}")
    pids_hit = f"hit its limit of {job.limits.pids} processes" if watcher.pids_max_hits else ""
    if pids_hit and (code != 0 or stop.reason is EndReason.TIMEOUT):
        why = f" and {stop.message}" if stop.reason is not None else f", then {exit_message(code)}"
        return Outcome(code, EndReason.PIDS, pids_hit + why)
    if stop.reason is not None:
        return Outcome(code, stop.reason, stop.message)
    return Outcome(
        code, EndReason.EXITED, exit_message(code) + (f" (it {pids_hit} on the way)" if pids_hit else "")
    )


def _choose_runtime(wanted: str, cgroups: str, default: str) -> tuple[str, str]:
    """The OCI runtime to use and why, for the start log line."""
    if wanted != "auto":
        if shutil.which(wanted) is None:
            raise ExecutorUnavailable(
                f"podman.runtime={wanted}, but {wanted} is not installed (Debian package {wanted})"
            )
        return wanted, "configured"
    if cgroups == "v1":
        if shutil.which("runc") is None:
            raise ExecutorUnavailable(
                "this host has cgroups v1/hybrid, where crun refuses to run containers; "
                "install the Debian package runc (scripts/system_deps.sh does)"
            )
        reason = "cgroups v1/hybrid: crun refuses them" if default == "crun" else "cgroups v1/hybrid"
        if default and default != "runc":
            log.warning("podman's default runtime %s cannot run on cgroups v1/hybrid: using runc", default)
        return "runc", reason
    return default or "runc", "podman's default"


def _ulimits(nofile: int) -> list[str]:
    """podman's default rlimits can exceed the host's hard limits (then no container starts): stay below
    the agent's own. The process limit also stays at or below kernel.pid_max: runc refused a higher one
    here (EPERM); the build's real bound is its cgroup pids limit."""
    _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)
    values = {
        "nofile": _at_most(nofile if nofile > 0 else nofile_hard, nofile_hard),
        "nproc": _at_most(_at_most(nproc_hard, _pid_max()), nproc_hard),
    }
    return [
        arg for flag, value in values.items() if value > 0 for arg in ("--ulimit", f"{flag}={value}:{value}")
    ]


def _at_most(value: int, hard: int) -> int:
    if hard == resource.RLIM_INFINITY or hard < 0:
        return value
    if value == resource.RLIM_INFINITY or value < 0:
        return hard
    return min(value, hard)


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 32768


def _check_job(job: BuildJob) -> str:
    if not job.image:
        return "no image to run the build in"
    if not job.argv:
        return "no command"
    if job.limits.network not in ("default", "none"):
        return f"network must be default or none, not {job.limits.network!r}"
    if "," in str(job.workspace):
        return f"workspace path {job.workspace} contains a comma (podman's --mount cannot take it)"
    for key, value in job.env.items():
        if not _ENV_NAME.fullmatch(key):
            return f"environment variable name {key!r} is not a valid name"
        if "\n" in value or "\0" in value:
            return f"environment variable {key} holds a newline or NUL, which cannot reach a container"
    return ""


def _container_name(build_id: str) -> str:
    return "stoker-" + re.sub(r"[^A-Za-z0-9_.-]", "_", build_id)[:200]


def _registry(image: str) -> str:
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"
