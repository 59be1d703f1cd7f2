"""The trace-driven simulator behind bench/simulate.py: trace generation and the event engine."""
