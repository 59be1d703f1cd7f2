"""Plumbing shared by the agent and the coordinator: settings, logging, server helpers.

It imports neither service; they share only this and the wire contract in ``stoker.v1``.
"""
