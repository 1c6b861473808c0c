"""TLS on client -> router and router -> worker, and mutual TLS, with real processes on loopback.

The certificates are made by the test (openssl): one CA signs the servers' certificate (for
127.0.0.1), the router's client certificate and a tenant's; a second CA signs a stranger's.
The worker requires a client certificate from the CA, so every generation served below went
router -> worker over mutual TLS.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from support.certificates import Identity, TestPki, tls_health, wait_serving_over_tls
from support.ports import free_port
from support.processes import ServiceProcess

from radixfair.client import ClientConfig, RouterClient
from radixfair.config_loading import ConfigError, load_config
from radixfair.tls import TlsConfig
from radixfair.v1 import router_pb2, router_pb2_grpc
from radixfair_router.config import RouterConfig

API_KEY = "key-tls-tenant"
# The workers' identity when registering: never a tenant's key.
REGISTRATION_TOKEN = "registration-token-of-the-tls-workers"
WORKER_ID = "worker-tls"
WORKER_SETTINGS = {"engine.page_size": 4, "engine.num_pages": 256, "engine.max_batched_tokens": 128}


@dataclass(frozen=True)
class Certificates:
    pki: TestPki
    # The router's client certificate, which the worker requires (from the same CA as the tenant's).
    router_client: Identity

    def client_tls(self, identity: Identity | None = None) -> TlsConfig:
        return self.pki.client_tls(identity)


@dataclass(frozen=True)
class TlsStack:
    certs: Certificates
    worker: ServiceProcess
    # Serves TLS, lists the worker.
    tls_router: ServiceProcess
    # Serves mutual TLS; the worker registered with it over mutual TLS.
    mtls_router: ServiceProcess


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    pki = TestPki.create(tmp_path_factory.mktemp("certs"))
    return Certificates(pki, pki.ca.issue("router", server=False))


@pytest.fixture(scope="module")
def stack(
    certs: Certificates, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsStack]:
    """One worker (mutual TLS) and two routers, started together on ports chosen up front.

    The TLS router lists the worker; the mutual-TLS router lists none: the worker registers with
    it over mutual TLS (router_tls), so its generations prove the registration hop too.
    """
    logs = tmp_path_factory.mktemp("tls-logs")
    worker_port, tls_port, mtls_port = free_port(), free_port(), free_port()
    worker_address = f"127.0.0.1:{worker_port}"
    router_client = certs.client_tls(certs.router_client)
    worker_settings = {
        "port": worker_port,
        "model": str(tiny_model_dir),
        "worker_id": WORKER_ID,
        "tls": _serving_tls(certs, require_client_cert=True),
        "router_address": f"127.0.0.1:{mtls_port}",
        "router_token": REGISTRATION_TOKEN,
        "router_tls": {
            "ca_file": router_client.ca_file,
            "cert_file": router_client.cert_file,
            "key_file": router_client.key_file,
        },
        "heartbeat_seconds": 0.5,
        **WORKER_SETTINGS,
    }
    tls_router = _router_settings(certs, tiny_model_dir, tls_port, require_client_cert=False)
    tls_router["registry"]["workers"] = [{"worker_id": WORKER_ID, "address": worker_address}]
    mtls_router = _router_settings(certs, tiny_model_dir, mtls_port, require_client_cert=True)
    mtls_router["registry"]["registration_token"] = REGISTRATION_TOKEN
    services = [
        _spawn("radixfair_worker", worker_settings, logs),
        _spawn("radixfair_router", tls_router, logs),
        _spawn("radixfair_router", mtls_router, logs),
    ]
    try:
        wait_serving_over_tls(services[0], router_client)
        for router in services[1:]:
            wait_serving_over_tls(router, certs.client_tls(certs.pki.tenant))
            asyncio.run(_wait_until_worker_healthy(router.address, certs.client_tls(certs.pki.tenant)))
        yield TlsStack(certs, *services)
    finally:
        for service in services:
            service.stop()


def test_a_client_with_the_ca_streams_through_router_and_worker_over_tls(stack: TlsStack) -> None:
    output = asyncio.run(_generate(stack.tls_router.address, stack.certs.client_tls()))

    assert output.result is not None and output.result.worker_id == WORKER_ID
    assert output.result.usage.completion_tokens == 4 and len(output.token_ids) == 4


def test_a_plaintext_client_is_refused_by_a_tls_router(stack: TlsStack) -> None:
    code = asyncio.run(_plaintext_generate_code(stack.tls_router.address))

    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_routers_ca_is_refused(stack: TlsStack) -> None:
    wrong_trust = TlsConfig(ca_file=str(stack.certs.pki.stranger_ca.cert))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(_generate(stack.tls_router.address, wrong_trust))

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_router_refuses_a_client_without_a_certificate(stack: TlsStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(_generate(stack.mtls_router.address, stack.certs.client_tls()))

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_router_refuses_a_certificate_another_ca_signed(stack: TlsStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(_generate(stack.mtls_router.address, stack.certs.client_tls(stack.certs.pki.stranger)))

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_router_serves_a_client_whose_certificate_its_ca_signed(stack: TlsStack) -> None:
    output = asyncio.run(_generate(stack.mtls_router.address, stack.certs.client_tls(stack.certs.pki.tenant)))

    assert output.result is not None and output.result.worker_id == WORKER_ID
    assert output.result.usage.completion_tokens == 4


def test_a_worker_registers_with_a_mutual_tls_router_over_mutual_tls(stack: TlsStack) -> None:
    # The mutual-TLS router lists no worker: this one is known only through its registration.
    status = asyncio.run(_status(stack.mtls_router.address, stack.certs.client_tls(stack.certs.pki.tenant)))

    assert [(w.worker_id, w.address, w.healthy) for w in status.workers] == [
        (WORKER_ID, stack.worker.address, True)
    ]


def test_the_worker_admits_only_callers_with_a_certificate_from_the_ca(stack: TlsStack) -> None:
    without_certificate = stack.certs.client_tls()
    with_certificate = stack.certs.client_tls(stack.certs.router_client)

    assert tls_health(stack.worker.address, without_certificate) == "UNAVAILABLE"
    assert tls_health(stack.worker.address, with_certificate) == "SERVING"


def test_cli_generates_over_mutual_tls(stack: TlsStack) -> None:
    certs = stack.certs
    done = subprocess.run(
        [
            sys.executable, "-m", "radixfair.cli", "generate", "--router", stack.mtls_router.address,
            "--api-key", API_KEY, "--ca-cert", str(certs.pki.ca.cert),
            "--client-cert", str(certs.pki.tenant.cert), "--client-key", str(certs.pki.tenant.key),
            "--max-tokens", "3", "Hello",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert f"[worker {WORKER_ID}:" in done.stderr and "3 generated" in done.stderr


def test_cli_with_a_missing_ca_file_says_so_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.crt"
    done = subprocess.run(
        [
            sys.executable, "-m", "radixfair.cli", "status", "--router", "127.0.0.1:1",
            "--api-key", API_KEY, "--ca-cert", str(missing),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"radixfair: error: client tls.ca_file {missing}: cannot read (No such file or directory)"
    ]


@pytest.mark.parametrize("module", ["radixfair_router", "radixfair_worker"])
def test_a_missing_certificate_file_is_one_start_up_line(
    module: str, certs: Certificates, tiny_model_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "absent.crt"
    settings = {
        "tokenizer_dir" if module == "radixfair_router" else "model": str(tiny_model_dir),
        "port": free_port(),
        "tls.cert_file": str(missing),
        "tls.key_file": str(certs.pki.server.key),
        **({"ledger.store": "memory"} if module == "radixfair_router" else {}),
    }

    done = _run_to_exit(module, settings)

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"{module.replace('_', '-')}: error: tls.cert_file {missing}: cannot read (No such file or directory)"
    ]


def test_a_router_given_a_key_of_another_certificate_says_so_in_one_line(
    certs: Certificates, tiny_model_dir: Path
) -> None:
    settings = {
        "tokenizer_dir": str(tiny_model_dir),
        "port": free_port(),
        "ledger.store": "memory",
        "tls.cert_file": str(certs.pki.server.cert),
        "tls.key_file": str(certs.pki.tenant.key),
    }

    done = _run_to_exit("radixfair_router", settings)

    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("radixfair-router")]
    assert len(errors) == 1 and "certificate or key was refused" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"tls.cert_file": "a.crt"}, "cert_file and key_file go together"),
        ({"tls.key_file": "a.key"}, "cert_file and key_file go together"),
        ({"tls.require_client_cert": True}, "require_client_cert needs ca_file"),
        ({"registry.tls.key_file": "a.key"}, "cert_file and key_file go together"),
    ],
)
def test_incomplete_tls_settings_are_a_config_error(settings: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_config(RouterConfig, None, env={}, overrides={"ledger.store": "memory", **settings})


# ---- helpers ------------------------------------------------------------------


def _serving_tls(certs: Certificates, require_client_cert: bool) -> dict[str, object]:
    return {
        "cert_file": str(certs.pki.server.cert),
        "key_file": str(certs.pki.server.key),
        "ca_file": str(certs.pki.ca.cert) if require_client_cert else "",
        "require_client_cert": require_client_cert,
    }


def _router_settings(
    certs: Certificates, tokenizer_dir: Path, port: int, require_client_cert: bool
) -> dict[str, Any]:
    router_client = certs.client_tls(certs.router_client)
    return {
        "port": port,
        "tokenizer_dir": str(tokenizer_dir),
        "ledger": {"store": "memory"},
        "auth": {"api_keys": [{"key": API_KEY, "client_id": "tenant", "operator": True}]},
        "tls": _serving_tls(certs, require_client_cert),
        "registry": {
            "health_check_interval_s": 0.2,
            "tls": {
                "ca_file": router_client.ca_file,
                "cert_file": router_client.cert_file,
                "key_file": router_client.key_file,
            },
        },
        "forward": {"wait_for_worker_s": 10.0},
    }


def _spawn(module: str, settings: dict[str, Any], logs: Path) -> ServiceProcess:
    """Starts ``module`` on loopback from a config file holding ``settings`` (which name the port)."""
    port = settings["port"]
    config = logs / f"{module}-{port}.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", **_nested(settings)}))
    log_path = logs / f"{module}-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(config)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return ServiceProcess(process, f"127.0.0.1:{port}", log_path)


def _nested(settings: dict[str, object]) -> dict[str, object]:
    """{"engine.page_size": 4} -> {"engine": {"page_size": 4}}."""
    nested: dict[str, object] = {}
    for dotted, value in settings.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value
    return nested


async def _status(address: str, tls: TlsConfig) -> router_pb2.GetStatusResponse:
    async with RouterClient(ClientConfig(address, API_KEY, tls=tls)) as client:
        return await client.status()


async def _wait_until_worker_healthy(address: str, tls: TlsConfig) -> None:
    async with RouterClient(ClientConfig(address, API_KEY, tls=tls)) as client:
        for _ in range(300):
            status = await client.status()
            if any(w.worker_id == WORKER_ID and w.healthy for w in status.workers):
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"router {address} never saw {WORKER_ID} healthy over TLS")


async def _generate(address: str, tls: TlsConfig):  # -> GenerationOutput
    config = ClientConfig(address, API_KEY, max_attempts=1, timeout_s=60.0, tls=tls)
    async with RouterClient(config) as client:
        return await client.generate("Hello over TLS", max_tokens=4, ignore_eos=True)


async def _plaintext_generate_code(address: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        request = router_pb2.RouterServiceGenerateRequest()
        request.prompt.text = "Hello in the clear"
        call = router_pb2_grpc.RouterServiceStub(channel).Generate(
            request, metadata=[("authorization", f"Bearer {API_KEY}")], timeout=10.0
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _run_to_exit(module: str, settings: dict[str, object]) -> subprocess.CompletedProcess[str]:
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120)
