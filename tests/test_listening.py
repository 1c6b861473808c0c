"""Listening ports: exclusive, reusable after their owner stops, and opened in one place (issue 12.13)."""

from __future__ import annotations

import ast
import asyncio
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from radixfair.listening import PortInUseError, bind_grpc_port, build_grpc_server
from radixfair.metrics import serve_metrics

REPO = Path(__file__).resolve().parents[1]
# The only modules allowed to open a listening port directly.
PORT_OPENERS = {REPO / "common/src/radixfair/listening.py", REPO / "common/src/radixfair/metrics.py"}


def test_a_port_served_with_grpc_defaults_is_refused_not_shared():
    # gRPC's defaults turn SO_REUSEPORT on: a server that also did would bind beside this one.
    foreign = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = foreign.add_insecure_port("127.0.0.1:0")
    foreign.start()

    async def bind() -> None:
        bind_grpc_port(build_grpc_server(), "127.0.0.1", port)

    try:
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            asyncio.run(bind())
    finally:
        foreign.stop(grace=None)


def test_a_port_is_free_again_once_its_server_stopped_after_serving():
    """A supervised child restarts on its own port while the old connections linger in TIME_WAIT."""
    asyncio.run(_serve_once_then_bind_again())


async def _serve_once_then_bind_again() -> None:
    first = build_grpc_server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), first)
    port = bind_grpc_port(first, "127.0.0.1", 0)
    await first.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await first.stop(grace=None)

    second = build_grpc_server()
    assert bind_grpc_port(second, "127.0.0.1", port) == port
    await second.stop(grace=None)


def test_a_taken_metrics_port_is_refused_with_the_same_error():
    with pytest.raises(PortInUseError, match="/metrics"):
        foreign = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        port = foreign.add_insecure_port("0.0.0.0:0")
        foreign.start()
        try:
            serve_metrics(CollectorRegistry(), port, "127.0.0.1")
        finally:
            foreign.stop(grace=None)


def _direct_port_openers(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        if name in ("add_insecure_port", "add_secure_port", "start_http_server") or (
            name == "server" and owner in ("grpc.aio", "aio")
        ):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(func)}")
    return found


def test_every_service_opens_its_ports_through_radixfair_listening():
    """The next service, or a TLS port, cannot bring back port sharing by building its own server."""
    sources = [*REPO.glob("services/*/src/**/*.py"), *REPO.glob("common/src/radixfair/**/*.py")]
    sources += REPO.glob("engine/src/**/*.py")  # the engine library: it opens no port either
    assert len(sources) > 20
    direct = [hit for path in sources if path not in PORT_OPENERS for hit in _direct_port_openers(path)]
    assert direct == []
