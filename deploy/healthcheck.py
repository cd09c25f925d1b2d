"""Check one service of a gRPC health server and exit 0 when it is SERVING.

Docker Compose has no native gRPC probe, so its health checks run this
script inside the container (the image copies it to
/opt/nas-snapshots/healthcheck.py):

    python /opt/nas-snapshots/healthcheck.py readiness
    python /opt/nas-snapshots/healthcheck.py --address 127.0.0.1:8081 liveness

It exits 1 when the service is not SERVING or the call fails, and prints why
to stderr. Kubernetes does not need it: its `grpc` probes call the same
health server directly.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", help="health service name to check: liveness or readiness")
    parser.add_argument(
        "--address",
        default="127.0.0.1:8081",
        help="HOST:PORT of the plaintext health server, which NAS_HEALTH_ADDRESS sets (default: %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the response (default: %(default)s)")
    arguments = parser.parse_args(argv)

    request = health_pb2.HealthCheckRequest(service=arguments.service)
    with grpc.insecure_channel(arguments.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(request, timeout=arguments.timeout)
        except grpc.RpcError as exc:
            print(
                f"health check of {arguments.service!r} at {arguments.address} failed: {exc.code().name}: {exc.details()}",
                file=sys.stderr,
            )
            return 1

    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"health service {arguments.service!r} at {arguments.address} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
