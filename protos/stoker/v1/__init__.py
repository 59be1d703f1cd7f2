"""Generated code of the stoker.v1 wire contract (see the .proto files beside it)."""
