"""The ``process`` executor: the build's command as a plain child of the agent, in its own process group.

No isolation at all: same uid, namespaces and cgroup as the agent, no limits but the timeout and the
output bytes. For trusted single-tenant nodes only; the agent warns at start when it is configured.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from stoker.agent.executors.base import (
    MAX_LINE,
    BuildExecutor,
    BuildJob,
    DiskWatch,
    EndReason,
    Outcome,
    OutputBudget,
    OutputSink,
    Stop,
    exit_message,
    pump_lines,
)

_SETPRIV = shutil.which("setpriv")


class ProcessExecutor(BuildExecutor):
    name = "process"

    def __init__(self, groups_dir: Path, pass_env: Sequence[str], kill_grace_s: float = 5.0) -> None:
        """``groups_dir`` keeps one file per running build with its process group id, so an agent that
        crashed can kill what its builds left behind when it starts again."""
        self._groups_dir = groups_dir
        self._pass_env = tuple(pass_env)
        self._kill_grace_s = kill_grace_s
        self._running: dict[str, tuple[asyncio.subprocess.Process | None, Stop]] = {}
        self._escalations: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._groups_dir.mkdir(parents=True, exist_ok=True)
        return (
            "process executor: builds run as plain processes of the agent, NOT isolated from it or each other"
        )

    async def cleanup_leftovers(self) -> int:
        self._groups_dir.mkdir(parents=True, exist_ok=True)
        killed = 0
        for record in self._groups_dir.iterdir():
            try:
                pgid = int(record.read_text().strip())
            except (OSError, ValueError):
                pgid = 0
            if pgid > 1:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                    killed += 1
                except (ProcessLookupError, PermissionError):
                    pass
            record.unlink(missing_ok=True)
        return killed

    async def prepare(self, job: BuildJob, output: OutputSink) -> Outcome | None:
        if job.limits.network == "none":
            return Outcome(
                -1,
                EndReason.NOT_STARTED,
                "the process executor cannot take a build's network away; run it under podman",
            )
        return None

    def environment(self, job: BuildJob) -> dict[str, str]:
        env = {k: os.environ[k] for k in self._pass_env if k in os.environ}
        env.update(job.env)
        env["STOKER_WORKSPACE"] = str(job.workspace)
        return env

    async def run(
        self, job: BuildJob, output: OutputSink, on_started: Callable[[int], None] | None = None
    ) -> Outcome:
        env = self.environment(job)
        program = job.argv[0]
        found = (
            os.access(job.workspace / program, os.X_OK)
            if "/" in program
            else shutil.which(program, path=env.get("PATH", os.defpath))
        )
        if not found:
            return Outcome(127, EndReason.NOT_STARTED, f"cannot start {program!r}: no such executable")
        stop = Stop()
        self._running[job.build_id] = (None, stop)
        try:
            proc = await asyncio.create_subprocess_exec(
                *_dying_with_us(list(job.argv)),
                cwd=job.workspace,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=MAX_LINE,
            )
        except OSError as exc:
            self._running.pop(job.build_id, None)
            return Outcome(127, EndReason.NOT_STARTED, f"cannot start {program!r}: {exc.strerror}")
        self._running[job.build_id] = (proc, stop)
        group_file = self._groups_dir / job.build_id
        try:
            group_file.write_text(str(proc.pid))
            if on_started is not None:
                on_started(proc.pid)
            if stop.reason is not None:  # cancelled while starting
                self._signal(proc, stop)
            return await self._wait(job, proc, stop, output)
        finally:
            _killpg(proc.pid, signal.SIGKILL)  # leftovers of the build's process group
            group_file.unlink(missing_ok=True)
            self._running.pop(job.build_id, None)

    async def _wait(
        self, job: BuildJob, proc: asyncio.subprocess.Process, stop: Stop, output: OutputSink
    ) -> Outcome:
        def over_budget() -> None:
            if stop.request(EndReason.OUTPUT, f"more than {job.limits.output_bytes} bytes of output"):
                self._signal(proc, stop)

        def over_disk(message: str) -> None:
            if stop.request(EndReason.DISK, message):
                self._signal(proc, stop)

        budget = OutputBudget(job.limits.output_bytes, over_budget)
        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(
            pump_lines(proc.stdout, output, False, budget), pump_lines(proc.stderr, output, True, budget)
        )
        disk = DiskWatch(job.limits.disk_bytes, job.workspace, over_disk)
        watching = asyncio.create_task(disk.watch())
        try:
            await asyncio.wait_for(proc.wait(), job.timeout_s)
        except TimeoutError:
            stop.request(EndReason.TIMEOUT, f"timed out after {job.timeout_s:g} s")
            self._signal(proc, stop)
            await proc.wait()
        finally:
            watching.cancel()
        await disk.check()  # what it wrote since the last measurement
        _killpg(proc.pid, signal.SIGKILL)  # a daemon that kept the pipes open must not hold the readers
        await readers
        code = proc.returncode if proc.returncode is not None else -1
        if stop.reason is not None:
            return Outcome(code, stop.reason, stop.message)
        return Outcome(code, EndReason.EXITED, exit_message(code))

    def cancel(self, build_id: str, reason: str) -> None:
        entry = self._running.get(build_id)
        if entry is None:
            return
        proc, stop = entry
        stop.request(EndReason.CANCELLED, reason or "cancelled")
        if proc is not None:
            self._signal(proc, stop)

    def _signal(self, proc: asyncio.subprocess.Process, stop: Stop) -> None:
        """SIGTERM to the build's whole process group; SIGKILL after the grace period."""
        if proc.returncode is not None:
            return
        _killpg(proc.pid, signal.SIGTERM)

        async def escalate() -> None:
            try:
                await asyncio.wait_for(proc.wait(), self._kill_grace_s)
            except TimeoutError:
                _killpg(proc.pid, signal.SIGKILL)

        task = asyncio.get_running_loop().create_task(escalate())
        self._escalations.add(task)
        task.add_done_callback(self._escalations.discard)


def _dying_with_us(argv: list[str]) -> list[str]:
    """The command, run so that it gets SIGKILL when the agent dies (util-linux setpriv --pdeathsig), and a
    crashed agent leaves no build running unsupervised; what survives of its process group is reaped when
    the agent starts again. (Doing the prctl in a preexec_fn is not safe in a threaded process.)"""
    if _SETPRIV is None:
        return argv
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
