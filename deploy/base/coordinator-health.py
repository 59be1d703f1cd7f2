# The coordinator's probe: grpc.health.v1 over TLS, run by the kubelet as an exec probe in the
# coordinator's own container (`python health.py ADDRESS CA_FILE SERVER_NAME [SERVICE]`).
#
# Why not a `grpc:` probe: the kubelet's gRPC probe speaks plaintext only, and every port of a secured
# coordinator speaks TLS (7070: TLS; 7443: mutual TLS). The code has no plaintext health-only port, and
# one would be no better than this: it would have to serve every service on it (a gRPC server serves all
# of them on all its ports). So the probe checks the real thing: a TLS handshake with the server's
# certificate, verified against its CA, and the overall health status. Exit 0 only when SERVING.
# SERVER_NAME must be one of the certificate's DNS names (the probe dials 127.0.0.1).
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

address, ca_file, server_name = sys.argv[1:4]
service = sys.argv[4] if len(sys.argv) > 4 else ""
with open(ca_file, "rb") as f:
    credentials = grpc.ssl_channel_credentials(f.read())
with grpc.secure_channel(
    address, credentials, options=[("grpc.ssl_target_name_override", server_name)]
) as ch:
    try:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=3
        )
    except grpc.RpcError as exc:
        print(f"health check of {address} failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        sys.exit(1)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
if reply.status != health_pb2.HealthCheckResponse.SERVING:
    print(f"{address} is {status}", file=sys.stderr)
    sys.exit(1)
