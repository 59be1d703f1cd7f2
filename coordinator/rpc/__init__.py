"""The gRPC edge: one servicer per service, authentication, request checks, protobuf conversion and the
one table that maps domain errors to status codes."""
