"""Fixtures shared by the worker's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ports import free_port
from support.processes import ServiceProcess, start_service


@pytest.fixture(scope="session")
def one_slot_worker(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A worker process that runs one request and queues one more, with its /metrics endpoint.

    Shared by the full-queue tests of the gRPC API and of the operator metrics: each test waits for all
    its calls, so the worker is idle again when the next one starts, and the metrics test reads its
    counters as differences. One worker start instead of two (a process importing torch)."""
    port, metrics_port = free_port(), free_port()
    settings = {
        "model": tiny_model_dir,
        "port": port,
        "worker_id": f"worker-{port}",
        "metrics_port": metrics_port,
        "engine.max_waiting_requests": 1,
        "engine.max_running_requests": 1,
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    log = tmp_path_factory.mktemp("one-slot-worker") / "worker.log"
    service = start_service("radixfair_worker", args, f"127.0.0.1:{port}", log)
    service.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield service
    service.stop()
