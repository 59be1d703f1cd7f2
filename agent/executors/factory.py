"""The one place that turns the agent's settings into a :class:`BuildExecutor`."""

from __future__ import annotations

from pathlib import Path

from stoker.agent.config import AgentConfig, BuildSettings
from stoker.agent.executors.base import BuildExecutor, Limits


def open_executor(config: AgentConfig, name: str = "") -> BuildExecutor:
    """The executor ``name`` (default: the one ``build.executor`` names; ``auto`` is podman, whose start the
    caller falls back from); call ``await .start()`` before use."""
    build = config.build
    name = name or build.executor
    if name in ("podman", "auto"):
        from stoker.agent.executors.podman import PodmanExecutor

        return PodmanExecutor(config.podman)
    if name == "process":
        from stoker.agent.executors.process import ProcessExecutor

        return ProcessExecutor(Path(build.work_dir) / ".process-groups", build.pass_env, build.kill_grace_s)
    raise ValueError(f"build.executor must be auto, podman or process, not {name!r}")


def default_limits(build: BuildSettings) -> Limits:
    """The limits every build gets from the agent's settings (until a build can ask for its own)."""
    if build.network not in ("default", "none"):
        raise ValueError(f"build.network must be default or none, not {build.network!r}")
    return Limits(
        cpus=build.cpus,
        memory_bytes=build.memory_bytes,
        pids=build.pids,
        output_bytes=build.output_bytes,
        disk_bytes=build.disk_bytes,
        network=build.network,
    )
