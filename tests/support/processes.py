"""Service processes on loopback, started and stopped cleanly by fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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
