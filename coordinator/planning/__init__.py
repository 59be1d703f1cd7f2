"""Capacity planning: the fleet simulator (trace format, event engine) that replays a build history through
the coordinator's own scheduler under other fleets, and what reads the coordinator's history for it."""
