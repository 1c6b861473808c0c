"""`radixfair up --tls`: the whole local stack with TLS on every hop, from a CA made for the stack.

One real stack (Redis, a router, one worker) started by the CLI with --tls. It only becomes ready
if its own health checks and status calls work over TLS, and its worker only joins if it registered
over TLS. Then: the CLI client chats with the CA file the stack made; plaintext is refused on the
router's gRPC and HTTP ports; the worker refuses plaintext and any caller without the stack's client
certificate, so every chat served went router -> worker over mutual TLS.
"""

from __future__ import annotations

import json
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.ports import free_port

from radixfair.tls import TlsConfig, open_channel

CLI = [sys.executable, "-m", "radixfair.cli"]
API_KEY = "tls-tenant-key"
# Bound on start-up and shutdown of the stack on a loaded 2-core machine.
WAIT_S = 240.0


@dataclass
class TlsUpStack:
    process: subprocess.Popen
    ready: dict[str, object]
    http_port: int

    @property
    def router(self) -> str:
        return str(self.ready["router"])

    @property
    def ca_file(self) -> Path:
        return Path(str(self.ready["ca_file"]))

    @property
    def worker(self) -> str:
        return str(self.ready["worker_addresses"][0])  # type: ignore[index]

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=WAIT_S)
        return output or ""


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsUpStack]:
    tmp = tmp_path_factory.mktemp("up-tls")
    port, http_port, ready = free_port(), free_port(), tmp / "ready.json"
    process = subprocess.Popen(
        [*CLI, "up", "--tls", "--workers", "1", "--model", str(tiny_model_dir), "--port", str(port),
         "--http-port", str(http_port), "--api-key", f"tenant={API_KEY}",
         "--run-dir", str(tmp / "run"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    up = TlsUpStack(process, {}, http_port)
    try:
        deadline = time.monotonic() + WAIT_S
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), up.stop()[-3000:]
        up.ready = json.loads(ready.read_text())
        yield up
    finally:
        up.stop()


def test_the_stack_makes_its_own_ca_in_the_run_dir_with_private_keys(stack: TlsUpStack) -> None:
    tls_dir = stack.ca_file.parent
    assert stack.ca_file.is_file() and tls_dir.name == "tls"
    keys = sorted(tls_dir.glob("*.key"))
    assert [k.name for k in keys] == ["ca.key", "client.key", "server.key"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert stack.ready["http_api"] == f"https://127.0.0.1:{stack.http_port}/v1"


def test_the_cli_chats_with_the_stack_over_tls_with_its_ca_file(stack: TlsUpStack) -> None:
    done = subprocess.run(
        [*CLI, "generate", "--router", stack.router, "--api-key", API_KEY, "--ca-cert", str(stack.ca_file),
         "--chat", "--max-tokens", "3", "Hello over TLS"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "[worker worker-0:" in done.stderr and "3 generated" in done.stderr


def test_a_plaintext_client_is_refused_by_the_stacks_router(stack: TlsUpStack) -> None:
    done = subprocess.run(
        [*CLI, "generate", "--router", stack.router, "--api-key", API_KEY, "--max-tokens", "3", "Hello"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("radixfair: error: UNAVAILABLE")
    assert _health(stack.router, TlsConfig()) == "UNAVAILABLE"


def test_the_http_api_serves_https_with_the_ca_and_refuses_plain_http(stack: TlsUpStack) -> None:
    base = f"127.0.0.1:{stack.http_port}"
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    with httpx.Client(verify=context, timeout=30) as client:
        models = client.get(f"https://{base}/v1/models", headers={"authorization": f"Bearer {API_KEY}"})
    assert models.status_code == 200, models.text

    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=30) as client:
        client.get(f"http://{base}/v1/models", headers={"authorization": f"Bearer {API_KEY}"})


def test_the_worker_admits_only_callers_with_the_stacks_client_certificate(stack: TlsUpStack) -> None:
    tls_dir = stack.ca_file.parent
    with_ca_only = TlsConfig(ca_file=str(stack.ca_file))
    with_client_cert = TlsConfig(
        cert_file=str(tls_dir / "client.crt"),
        key_file=str(tls_dir / "client.key"),
        ca_file=str(stack.ca_file),
    )

    assert _health(stack.worker, TlsConfig()) == "UNAVAILABLE"
    assert _health(stack.worker, with_ca_only) == "UNAVAILABLE"
    assert _health(stack.worker, with_client_cert) == "SERVING"


def _health(address: str, tls: TlsConfig) -> str:
    with open_channel(address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
