"""The one place that turns the agent's settings into a :class:`BuildExecutor`."""

from __future__ import annotations

from pathlib import Path

from stoker.agent.config import AgentConfig, BuildSettings
from stoker.agent.executors.base import BuildExecutor, Limits


def open_executor(config: AgentConfig) -> BuildExecutor:
    """The executor ``build.executor`` names; call ``await .start()`` before use."""
    build = config.build
    if build.executor == "podman":
        from stoker.agent.executors.podman import PodmanExecutor

        return PodmanExecutor(config.podman)
    if build.executor == "process":
        from stoker.agent.executors.process import ProcessExecutor

        return ProcessExecutor(Path(build.work_dir) / ".process-groups", build.pass_env, build.kill_grace_s)
    raise ValueError(f"build.executor must be podman or process, not {build.executor!r}")


def default_limits(build: BuildSettings) -> Limits:
    """The limits every build gets from the agent's settings (until a build can ask for its own)."""
    if build.network not in ("default", "none"):
        raise ValueError(f"build.network must be default or none, not {build.network!r}")
    return Limits(
        cpus=build.cpus,
        memory_bytes=build.memory_bytes,
        pids=build.pids,
        output_bytes=build.output_bytes,
        network=build.network,
    )
