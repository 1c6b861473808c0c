"""The scripts the images run besides the services: the health check and the prepare-model step.

Both run as subprocesses, the way a container runs them, against real
components: a loopback gRPC server with grpc.health.v1, real model directories.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from deploy_support import REPO, pod_template, render_chart
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support.certificates import CertificateAuthority, Identity
from support.ports import free_port

from radixfair.tls import TlsConfig, server_credentials

HEALTH_CHECK = REPO / "deploy" / "docker" / "grpc_health_check.py"
PREPARE_MODEL = REPO / "deploy" / "docker" / "prepare_model.py"


def _clean_env(**extra: str) -> dict[str, str]:
    """The process environment minus RADIXFAIR_* (each would be read as a config field)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADIXFAIR_")}
    env.update(extra)
    return env


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTH_CHECK), *args], capture_output=True, text=True, timeout=30
    )


def test_health_check_passes_on_a_serving_server(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    result = _check(address)

    assert result.returncode == 0
    assert "SERVING" in result.stdout


def test_a_plaintext_check_of_a_serving_server_runs_without_importing_grpc(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    # Importing grpc and radixfair is most of a check's CPU, which a busy box's containers could
    # not afford every 10 s: the standard library's HTTP/2 request answers the common case.
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    program = (
        "import runpy, sys\n"
        f"sys.argv = [{str(HEALTH_CHECK)!r}, {address!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(HEALTH_CHECK)!r}, run_name='__main__')\n"
        "except SystemExit as end:\n"
        "    print('exit', end.code, 'grpc imported:', 'grpc' in sys.modules)\n"
    )

    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)

    assert "SERVING" in result.stdout
    assert "exit 0 grpc imported: False" in result.stdout, result.stdout + result.stderr


def test_health_check_fails_on_a_server_that_is_not_serving(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    result = _check(address)

    assert result.returncode == 1
    assert "NOT_SERVING" in result.stdout


def test_health_check_of_an_unknown_service_fails(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    result = _check(address, "--service", "radixfair.v1.NoSuchService")

    assert result.returncode == 1
    assert "NOT_FOUND" in result.stdout


def test_health_check_fails_fast_when_nothing_listens() -> None:
    result = _check(f"127.0.0.1:{free_port()}", "--timeout", "1")

    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout or "DEADLINE_EXCEEDED" in result.stdout


@pytest.fixture
def mtls_health_server(tmp_path: Path) -> Iterator[tuple[str, CertificateAuthority, Identity]]:
    """A SERVING health server on mutual TLS, its CA, and a certificate it serves and accepts.

    The certificate holds the names the Helm chart's probes check (and 127.0.0.1), and may be
    used by either side, as the chart's one Secret is.
    """
    ca = CertificateAuthority.create(tmp_path / "ca")
    names = ("127.0.0.1", "radixfair-router.radixfair.svc", "*.radixfair-worker.radixfair.svc.cluster.local")
    identity = ca.issue("radixfair", server=True, names=names, both=True)
    tls = TlsConfig(str(identity.cert), str(identity.key), str(ca.cert), require_client_cert=True)
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = server_credentials(tls)
    assert credentials is not None
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield f"127.0.0.1:{port}", ca, identity
    server.stop(grace=None)


def test_health_check_passes_over_mutual_tls_with_the_certificates(
    mtls_health_server: tuple[str, CertificateAuthority, Identity],
) -> None:
    address, ca, identity = mtls_health_server

    result = _check(address, "--ca-cert", str(ca.cert), "--client-cert", str(identity.cert),
                    "--client-key", str(identity.key))  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SERVING" in result.stdout


@pytest.mark.parametrize("without", ["a client certificate", "TLS"])
def test_health_check_fails_on_a_mutual_tls_port_without_the_certificates(
    mtls_health_server: tuple[str, CertificateAuthority, Identity], without: str
) -> None:
    address, ca, _ = mtls_health_server
    args = ["--ca-cert", str(ca.cert)] if without == "a client certificate" else []

    result = _check(address, *args, "--timeout", "2")

    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout


def test_health_check_names_a_missing_certificate_file(tmp_path: Path) -> None:
    missing = tmp_path / "ca.crt"

    result = _check(f"127.0.0.1:{free_port()}", "--ca-cert", str(missing))

    assert result.returncode == 1
    assert f"{missing}: cannot read" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("kind", "name"), [("Deployment", "radixfair-router"), ("StatefulSet", "radixfair-worker")]
)
def test_the_charts_tls_probe_command_passes_against_a_mutual_tls_port(
    mtls_health_server: tuple[str, CertificateAuthority, Identity], kind: str, name: str, tmp_path: Path
) -> None:
    """The command the chart renders, run with the Secret's files where the pod mounts them."""
    address, ca, identity = mtls_health_server
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    for key, source in (("ca.crt", ca.cert), ("tls.crt", identity.cert), ("tls.key", identity.key)):
        (secret_dir / key).write_bytes(source.read_bytes())
    values = {"tls": {"enabled": True, "secretName": "radixfair-tls", "requireClientCert": True}}
    template = pod_template(render_chart(values).named(kind, name))
    assert template is not None
    container = template["spec"]["containers"][0]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    command = container["readinessProbe"]["exec"]["command"]
    assert command[0] == "python" and command[1] == "/opt/radixfair/grpc_health_check.py"

    port = address.rsplit(":", 1)[1]
    args = [arg.replace(mount, str(secret_dir)) for arg in command[3:]]
    result = subprocess.run(
        [sys.executable, str(HEALTH_CHECK), f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def _prepare(config_text: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "worker.yaml"
    config.write_text(config_text)
    return subprocess.run(
        [sys.executable, str(PREPARE_MODEL), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(**env),
    )


def test_prepare_model_accepts_a_complete_model_directory(smollm2_dir: Path, tmp_path: Path) -> None:
    result = _prepare(f"model: {smollm2_dir}\n", tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(smollm2_dir)


def test_prepare_model_names_what_a_model_directory_is_missing(tmp_path: Path) -> None:
    model = tmp_path / "half-copied"
    model.mkdir()
    (model / "config.json").write_text("{}")

    result = _prepare(f"model: {model}\n", tmp_path)

    assert result.returncode == 1
    assert "model.safetensors" in result.stderr and "tokenizer.json" in result.stderr


def test_prepare_model_finds_the_packaged_model_already_converted(smollm2_dir: Path, tmp_path: Path) -> None:
    # cache_dir comes from the environment, as RADIXFAIR_CACHE_DIR would in a container.
    result = _prepare("model: smollm2-135m-instruct\n", tmp_path, RADIXFAIR_CACHE_DIR=str(smollm2_dir.parent))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(smollm2_dir)


def test_prepare_model_rejects_a_bad_config_with_a_message(tmp_path: Path) -> None:
    result = _prepare("model: smollm2-135m-instruct\n", tmp_path, RADIXFAIR_NO_SUCH_FIELD="1")

    assert result.returncode == 1
    assert "no_such_field" in result.stderr
