"""Service processes on loopback, started and stopped cleanly by fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    address: str
    log_path: Path
    metrics_url: str = ""

    def stop(self) -> None:
        stop_all([self])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_all(services: Sequence[ServiceProcess]) -> None:
    """SIGTERM to every service first, then waits for each: they shut down side by side, not in turn."""
    running = [service for service in services if service.process.poll() is None]
    for service in running:
        service.process.send_signal(signal.SIGTERM)
    for service in running:
        try:
            service.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(timeout=5)


def start_service(
    module: str, args: list[str], address: str, log_path: Path, timeout: float = 120.0
) -> ServiceProcess:
    """Starts ``python -m module args`` and waits until its grpc.health.v1 says SERVING."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdout=log_file, stderr=subprocess.STDOUT, env=env
    )
    service = ServiceProcess(process, address, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited with {process.returncode}:\n{service.log()[-4000:]}")
        if is_serving(address):
            return service
        time.sleep(0.2)
    service.kill()
    raise TimeoutError(f"{module} not serving on {address} after {timeout}s:\n{service.log()[-4000:]}")


def is_serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
