"""The stoker coordinator: registry, inventory, scheduler, build queue, rollouts, state."""
