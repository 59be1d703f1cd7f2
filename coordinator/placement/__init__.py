"""Where builds run: the node registry, the inventory index, the scheduler and the build queue."""
