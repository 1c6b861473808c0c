"""A taken port is a start-up error for every service: one line, exit status 2, no traceback.

The port is held by a gRPC server with gRPC's default options, which turn
SO_REUSEPORT on: a service that also left it on would bind beside it and
share its connections (issue 12, point 13), and these tests would then see it
keep running instead of exiting.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from support.ports import free_port

# Generous: a worker or distiller imports torch before it binds; the test waits for an exit, not a time.
EXIT_WAIT_S = 240


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port served by a running gRPC server built with gRPC's defaults (port reuse on)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None)


@pytest.fixture
def taken_http_port() -> Iterator[int]:
    """A port with a plain listening socket on all interfaces, as another /metrics endpoint would hold."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _run_service(module: str, settings: dict[str, object]) -> subprocess.CompletedProcess[str]:
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=EXIT_WAIT_S
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


def _router_settings(smollm2_dir: Path, port: int, **more: object) -> dict[str, object]:
    return {"port": port, "tokenizer_dir": smollm2_dir, "ledger.store": "memory", **more}


def test_router_on_a_taken_grpc_port_exits_with_one_line(taken_port, smollm2_dir):
    result = _run_service("radixfair_router", _router_settings(smollm2_dir, taken_port))
    _assert_one_line_error(result, "radixfair-router: error:", f"port {taken_port}", "already in use")


def test_router_on_a_taken_metrics_port_exits_with_one_line(taken_http_port, smollm2_dir):
    settings = _router_settings(smollm2_dir, free_port(), metrics_port=taken_http_port)
    result = _run_service("radixfair_router", settings)
    _assert_one_line_error(result, "radixfair-router: error:", f"port {taken_http_port}", "/metrics")


def test_worker_on_a_taken_grpc_port_exits_with_one_line(taken_port, tiny_model_dir):
    result = _run_service("radixfair_worker", {"model": tiny_model_dir, "port": taken_port})
    _assert_one_line_error(result, "radixfair-worker: error:", f"port {taken_port}", "already in use")


def test_distiller_on_a_taken_grpc_port_exits_with_one_line(taken_port, tmp_path):
    result = _run_service("radixfair_distiller", {"port": taken_port, "work_dir": tmp_path / "work"})
    _assert_one_line_error(result, "radixfair-distiller: error:", f"port {taken_port}", "already in use")


def test_up_on_a_taken_router_port_says_so_before_starting_anything(taken_port, tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "radixfair.cli", "up", "--model", str(tiny_model_dir),
         "--port", str(taken_port), "--http-port", str(free_port()), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=EXIT_WAIT_S,
    )  # fmt: skip
    _assert_one_line_error(result, "radixfair: error:", f"port {taken_port}", "already in use")
    # Nothing was started: no child wrote a log.
    assert not list(run_dir.glob("*.log"))
