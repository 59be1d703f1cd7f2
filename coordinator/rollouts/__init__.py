"""Scatter-gather rollouts: the state machine, the judge, the engine, its store, targets and metrics.

It reaches the rest of the coordinator only through ``core`` (errors, clock) and the settings.
"""
