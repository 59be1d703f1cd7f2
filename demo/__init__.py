"""The embedded default (``stoker demo``) and the local-fleet harness the demo, tests and benchmarks share."""
