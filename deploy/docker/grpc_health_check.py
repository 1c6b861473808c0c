"""Exits 0 when a gRPC server reports SERVING through grpc.health.v1, 1 otherwise.

Container health checks (each Dockerfile's HEALTHCHECK and docker-compose.yml)
run it inside the image, which holds grpcio-health-checking already; Kubernetes
uses the kubelet's built-in gRPC probe instead, except on TLS ports, which the
kubelet's probe cannot speak: there the Helm chart runs this script too.

A plaintext check first asks with the standard library alone (one HTTP/2 request,
see plaintext_serving): importing grpc and radixfair costs about 0.4 s of CPU, which
on a busy 2-core box running the whole compose stack took checks past their 10 s
timeout, every 10 s for five services. Only an answer other than SERVING, and any
TLS check, goes through grpc, which also names what it saw.

usage: python grpc_health_check.py [ADDRESS] [--service NAME] [--timeout SECONDS]
           [--ca-cert PEM [--client-cert PEM --client-key PEM] [--tls-server-name NAME]]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radixfair.tls import TlsConfig

TLS_FLAGS = ("--ca-cert", "--client-cert", "--client-key", "--tls-server-name")
# HTTP/2 (RFC 9113) frame types and flags this client uses.
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SERVING = 1


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack("!I", len(payload))[1:] + struct.pack("!BBI", kind, flags, stream) + payload


def _literal_header(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    encoded = b"\x00"
    for text in (name.encode(), value.encode()):
        assert len(text) < 127, "a longer string needs HPACK's multi-byte length"
        encoded += bytes([len(text)]) + text
    return encoded


def _check_request(address: str, service: str) -> bytes:
    headers = b"".join(
        _literal_header(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", address),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    # HealthCheckRequest: field 1 (service), length-delimited; empty when "" (proto3 default).
    message = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    grpc_message = b"\x00" + struct.pack("!I", len(message)) + message
    return (
        _PREFACE
        + _frame(_SETTINGS, 0, 0, b"")
        + _frame(_HEADERS, _END_HEADERS, 1, headers)
        + _frame(_DATA, _END_STREAM, 1, grpc_message)
    )


def _read_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def _response_message(sock: socket.socket, deadline: float) -> bytes:
    """The DATA of stream 1 until the stream ends, answering the server's SETTINGS and PINGs."""
    data = b""
    while True:
        length, kind, flags, stream = struct.unpack("!I B B I", b"\x00" + _read_exactly(sock, 9, deadline))
        payload = _read_exactly(sock, length, deadline)
        if kind == _SETTINGS and not flags & _ACK:
            sock.sendall(_frame(_SETTINGS, _ACK, 0, b""))
        elif kind == _PING and not flags & _ACK:
            sock.sendall(_frame(_PING, _ACK, 0, payload))
        elif kind in (_GOAWAY, _RST_STREAM):
            raise ConnectionError("the server ended the stream")
        elif stream == 1 and kind in (_DATA, _HEADERS):
            if kind == _DATA:
                padding = payload[0] if flags & _PADDED else 0
                data += payload[1 : len(payload) - padding] if flags & _PADDED else payload
            if flags & _END_STREAM:
                return data


def plaintext_serving(address: str, service: str, timeout_s: float) -> bool:
    """True when a plaintext server answers SERVING; False on any other answer or failure.

    One unary call of grpc.health.v1.Health/Check over HTTP/2 with prior knowledge, as gRPC's
    own clients make it. Only the reply message is read: its field 1 is the status (a varint).
    """
    deadline = time.monotonic() + timeout_s
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
            sock.sendall(_check_request(address, service))
            data = _response_message(sock, deadline)
    except (OSError, ValueError, struct.error):
        return False
    # One gRPC message: flag byte, 4-byte length, then HealthCheckResponse {status = 1 (varint)}.
    message = data[5:]
    return len(data) >= 5 and message[:1] == b"\x08" and message[1:2] == bytes([_SERVING])


def check(address: str, service: str, timeout_s: float, tls: TlsConfig | None = None) -> tuple[bool, str]:
    """(serving, what was seen) for ``service`` ("" is the whole server) at ``address``, through grpc."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from radixfair.tls import TlsConfig, open_channel  # noqa: F811 - at run time, not only for types

    with open_channel(address, tls or TlsConfig(), "health check tls") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            return False, f"{error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--service", default="", help="service name; empty checks the whole server")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    tls_asked = any(arg.split("=")[0] in TLS_FLAGS for arg in argv)
    if not tls_asked:
        args, _ = parser.parse_known_args(argv)
        if plaintext_serving(args.address, args.service, args.timeout):
            print(f"{args.address} {args.service or '(server)'}: SERVING")
            return 0
    from radixfair.tls import TlsError, add_client_tls_arguments, client_tls_from_arguments

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
