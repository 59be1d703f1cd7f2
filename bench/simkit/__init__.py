"""The benchmark's side of the simulator: the synthetic trace generator and the peers stoker is compared with.
The engine and the trace format are the product's (``stoker.coordinator.planning``)."""
