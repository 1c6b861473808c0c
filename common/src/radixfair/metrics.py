"""Prometheus exposition for one service, on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

from radixfair.listening import ListenError, ensure_port_free

# Latency buckets, in seconds, that resolve both a CPU worker's hundreds of
# milliseconds and a GPU worker's single milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
    """Starts the /metrics HTTP endpoint in a daemon thread; port 0 disables it.

    A taken port raises radixfair.listening.PortInUseError, as a taken gRPC port does.
    """
    if port:
        ensure_port_free(host, port, "/metrics")
        try:
            start_http_server(port, addr=host, registry=registry)
        except OSError as error:  # taken between the check and the bind
            raise ListenError(f"cannot listen for /metrics on {host}:{port}: {error.strerror}") from error
