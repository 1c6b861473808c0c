"""Exits 0 when a gRPC server reports SERVING through grpc.health.v1, 1 otherwise.

Container health checks (each Dockerfile's HEALTHCHECK and docker-compose.yml)
run it inside the image, which holds grpcio-health-checking already; Kubernetes
uses the kubelet's built-in gRPC probe instead, except on TLS ports, which the
kubelet's probe cannot speak: there the Helm chart runs this script too.

usage: python grpc_health_check.py [ADDRESS] [--service NAME] [--timeout SECONDS]
           [--ca-cert PEM [--client-cert PEM --client-key PEM] [--tls-server-name NAME]]
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixfair.tls import (
    TlsConfig,
    TlsError,
    add_client_tls_arguments,
    client_tls_from_arguments,
    open_channel,
)


def check(address: str, service: str, timeout_s: float, tls: TlsConfig | None = None) -> tuple[bool, str]:
    """(serving, what was seen) for ``service`` ("" is the whole server) at ``address``."""
    with open_channel(address, tls or TlsConfig(), "health check tls") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            return False, f"{error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--service", default="", help="service name; empty checks the whole server")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    add_client_tls_arguments(parser)
    args = parser.parse_args(argv)
    try:
        serving, seen = check(args.address, args.service, args.timeout, client_tls_from_arguments(args))
    except TlsError as error:
        serving, seen = False, str(error)
    print(f"{args.address} {args.service or '(server)'}: {seen}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
