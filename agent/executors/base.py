"""One small interface between the build runner and whatever runs a build's command.

An executor takes a :class:`BuildJob` (the command, its workspace, its environment, the image, its
limits and timeout), streams the command's output line by line to a sink, and returns an
:class:`Outcome`: the exit code and why the build ended. Cancel works from any task. The runner does
everything around it (workspace, cache restore and save, events); the executor knows nothing of
protobuf or the coordinator.

Two implementations: :mod:`.podman` (each build in its own container) and :mod:`.process` (a plain
child process of the agent: no isolation, for trusted single-tenant nodes only).
"""

from __future__ import annotations

import asyncio
import enum
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stoker.agent.executors.images import Image

MAX_LINE = 16 * 1024
"""Longest output line passed on in one piece; longer lines arrive split."""

OutputSink = Callable[[str, bool], None]
"""Receives each line of output (without its newline) and whether it came from stderr."""


class ExecutorUnavailable(Exception):
    """The executor cannot run on this node (a missing package, a runtime that refuses the host)."""


class EndReason(str, enum.Enum):
    EXITED = "exited"
    """The command ran and exited (with whatever code) or died of a signal it was not sent by us."""
    NOT_STARTED = "not_started"
    """The command could not be started: no such program, a container that could not be created."""
    IMAGE = "image"
    """The build's image does not exist or cannot be pulled."""
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    OOM = "oom"
    """Killed by the kernel at the build's memory limit."""
    PIDS = "pids"
    """Failed or timed out after hitting its process limit (a fork bomb)."""
    OUTPUT = "output"
    """Stopped for writing more output than its limit."""
    DISK = "disk"
    """Stopped for filling its workspace past its limit."""
    LOST = "lost"
    """The command ran, but the container runtime lost its exit code: neither success nor the build's
    failure can be told (an error of the node, not of the build)."""


@dataclass(frozen=True)
class Limits:
    """What one build may use. 0 means no limit of that kind."""

    cpus: float = 0.0
    memory_bytes: int = 0
    pids: int = 0
    output_bytes: int = 0
    disk_bytes: int = 0
    """Bytes the build's workspace may hold (measured every ``DISK_POLL_S``; see ``DiskWatch``)."""
    network: str = "default"
    """``default`` (the executor's network) or ``none`` (loopback only)."""


@dataclass(frozen=True)
class BuildJob:
    build_id: str
    argv: tuple[str, ...]
    workspace: Path
    env: Mapping[str, str] = field(default_factory=dict)
    """The build's own variables; each executor adds what its environment needs (PATH, HOME…)."""
    image: str = ""
    """OCI reference of the image to run in (ignored by the process executor)."""
    limits: Limits = field(default_factory=Limits)
    timeout_s: float = 3600.0


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    reason: EndReason
    message: str

    @property
    def succeeded(self) -> bool:
        return self.reason is EndReason.EXITED and self.exit_code == 0


class BuildExecutor(ABC):
    """Runs build commands. One instance per agent; ``run`` may be called for several builds at once."""

    name: str

    @abstractmethod
    async def start(self) -> str:
        """Check that this executor can run here and get ready; returns a line for the agent's log.
        Raises :class:`ExecutorUnavailable` naming what to install or change."""

    @abstractmethod
    async def cleanup_leftovers(self) -> int:
        """Remove what builds of a crashed agent left running; returns how many were removed."""

    @abstractmethod
    async def prepare(self, job: BuildJob, output: OutputSink) -> Outcome | None:
        """Get the job ready to run (pull its image), reporting progress as output lines. ``None``
        when ready; else the outcome that ends the build (a bad image: one clear error)."""

    @abstractmethod
    async def run(
        self, job: BuildJob, output: OutputSink, on_started: Callable[[int], None] | None = None
    ) -> Outcome:
        """Run the command to its end (or until cancelled or timed out) and return how it ended.
        Nothing the command started is left running when this returns."""

    def release(self, build_id: str) -> None:
        """Let go of what ``prepare`` holds for a build that will not run after all (it was cancelled
        before its command started). ``run`` lets go of it itself. Nothing, for an executor without images."""
        del build_id

    @abstractmethod
    def cancel(self, build_id: str, reason: str) -> None:
        """Stop the build's command (grace period, then kill); its ``run`` returns CANCELLED."""

    @property
    def runtime(self) -> str:
        """The OCI runtime the executor's containers run with ('' when it has none)."""
        return ""

    def images(self) -> tuple[Image, ...]:
        """The images the executor holds, as last listed (none for an executor without images)."""
        return ()


@dataclass
class Stop:
    """Why a running build is being stopped; the first reason given wins."""

    reason: EndReason | None = None
    message: str = ""

    def request(self, reason: EndReason, message: str) -> bool:
        """Record the reason; True when this is the first request."""
        if self.reason is not None:
            return False
        self.reason, self.message = reason, message
        return True


async def pump_lines(
    stream: asyncio.StreamReader, output: OutputSink, stderr: bool, budget: OutputBudget
) -> None:
    """Pass each line of ``stream`` to ``output`` until EOF, counting bytes against ``budget``; once
    over the budget, lines are read and dropped (the caller stops the build)."""
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line longer than the reader's limit: take what there is
            line = await stream.read(MAX_LINE)
        if not line:
            return
        if budget.take(len(line)):
            output(line.decode(errors="replace").rstrip("\r\n"), stderr)


class OutputBudget:
    """Bytes of output a build may still write; calls ``on_exceeded`` once when it runs out."""

    def __init__(self, limit: int, on_exceeded: Callable[[], None]) -> None:
        self._left = limit if limit > 0 else None
        self._on_exceeded = on_exceeded
        self.exceeded = False

    def take(self, n: int) -> bool:
        if self._left is None:
            return True
        self._left -= n
        if self._left >= 0:
            return True
        if not self.exceeded:
            self.exceeded = True
            self._on_exceeded()
        return False


DISK_POLL_S = 0.5
"""How often a running build's workspace is measured against its disk limit."""


class DiskWatch:
    """Stops a build whose workspace holds more than its limit: measures the bytes allocated under the
    workspace (each inode once, symlinks not followed) every ``DISK_POLL_S``, and once more when the
    command has ended, so no build over its limit succeeds (and gets its cache saved). Between two
    measurements a build can write past the limit by what it writes in that time; the node's disk must
    keep that much room above the sum of its builds' limits."""

    def __init__(self, limit: int, workspace: Path, on_exceeded: Callable[[str], None]) -> None:
        self._limit = limit
        self._workspace = workspace
        self._on_exceeded = on_exceeded
        self.exceeded = False

    async def watch(self) -> None:
        if self._limit <= 0:
            return
        while not await self.check():
            await asyncio.sleep(DISK_POLL_S)

    async def check(self) -> bool:
        """Measure once; True (and ``on_exceeded`` called once) when over the limit."""
        if self._limit <= 0 or self.exceeded:
            return self.exceeded
        used = await asyncio.to_thread(allocated_bytes, self._workspace)
        if used > self._limit:
            self.exceeded = True
            self._on_exceeded(
                f"its workspace grew past its disk limit of {self._limit} bytes ({used} bytes allocated)"
            )
        return self.exceeded


def allocated_bytes(root: Path) -> int:
    """Bytes allocated to the files under ``root`` (st_blocks: a sparse file counts what it holds), each
    inode once, no symlink followed; files that vanish while walking are skipped."""
    total, seen, stack = 0, set(), [str(root)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def exit_message(code: int) -> str:
    if code == 0:
        return "succeeded"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exited with code {code}"
