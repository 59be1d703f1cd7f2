"""Shared pieces of the coordinator: the clock, the error tree, metrics and the build state store."""
