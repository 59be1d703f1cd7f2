"""Benchmarks that compare stoker with its peers on the same work (each script runs on its own)."""
