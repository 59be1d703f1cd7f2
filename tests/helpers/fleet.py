"""A coordinator and agents as real processes on 127.0.0.1 (see stoker.demo.local_fleet)."""

from __future__ import annotations

from pathlib import Path

from stoker.demo import local_fleet


class Fleet:
    """A coordinator and agents started by a test; everything is stopped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.coordinator: local_fleet.Process | None = None
        self.agents: dict[str, local_fleet.Process] = {}

    def start_coordinator(self, **kwargs) -> local_fleet.Process:
        self.coordinator = local_fleet.start_coordinator(self.root, **kwargs)
        return self.coordinator

    def start_agent(self, name: str, zone: str = "zone-a", slots: int = 1, **kwargs) -> local_fleet.Process:
        assert self.coordinator is not None
        address = kwargs.pop("coordinator", self.coordinator.address)
        agent = local_fleet.start_agent(
            self.root, name, address, zone=zone, slots=slots, blobs=self.blobs, **kwargs
        )
        self.agents[name] = agent
        return agent

    def wait_ready(self, *names: str, timeout: float = 30.0):
        assert self.coordinator is not None
        return local_fleet.wait_for_nodes(self.coordinator.address, list(names or self.agents), timeout)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        if self.coordinator is not None:
            self.coordinator.kill()
