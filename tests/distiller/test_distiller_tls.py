"""TLS and mutual TLS on the distiller's gRPC port, and its clients (both CLIs) connecting with a CA file.

Real distiller processes on loopback; the certificates are made by the test (one CA signs the
server's certificate for 127.0.0.1 and a tenant's client certificate; a second CA signs a
stranger's). The calls the clients make are ListArtifacts (a reply with the evaluation table's
header) and SubmitJob of a recipe the distiller rejects (an answer only the distiller can give),
so nothing here trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.certificates import TestPki, tls_health, wait_serving_over_tls
from support.ports import free_port
from support.processes import ServiceProcess

from radixfair.tls import TlsConfig

TABLE_HEADER = "| model | params (M)"


@dataclass(frozen=True)
class Distillers:
    certs: TestPki
    tls: ServiceProcess
    mtls: ServiceProcess


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki.create(tmp_path_factory.mktemp("certs"), server_name="distiller")


@pytest.fixture(scope="module")
def distillers(certs: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distillers]:
    root = tmp_path_factory.mktemp("distillers")
    serving = {"tls.cert_file": str(certs.server.cert), "tls.key_file": str(certs.server.key)}
    mutual = {**serving, "tls.ca_file": str(certs.ca.cert), "tls.require_client_cert": "true"}
    started = [_spawn(serving, root / "tls"), _spawn(mutual, root / "mtls")]
    try:
        wait_serving_over_tls(started[0], certs.client_tls())
        wait_serving_over_tls(started[1], certs.client_tls(certs.tenant))
        yield Distillers(certs, *started)
    finally:
        for service in started:
            service.stop()


def test_a_client_with_the_ca_sees_the_distiller_serving_over_tls(distillers: Distillers) -> None:
    assert tls_health(distillers.tls.address, distillers.certs.client_tls()) == "SERVING"


def test_a_plaintext_client_is_refused_by_a_tls_distiller(distillers: Distillers) -> None:
    assert tls_health(distillers.tls.address, TlsConfig()) == "UNAVAILABLE"


def test_the_distiller_cli_lists_artifacts_over_tls_with_the_ca_file(distillers: Distillers) -> None:
    ca = str(distillers.certs.ca.cert)
    done = _distiller_cli("list", "--server", distillers.tls.address, "--ca-cert", ca)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(TABLE_HEADER)


def test_the_distiller_cli_without_the_ca_says_the_distiller_is_unavailable_in_one_line(
    distillers: Distillers,
) -> None:
    done = _distiller_cli("list", "--server", distillers.tls.address)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: UNAVAILABLE"), done.stderr


def test_radixfair_distill_submits_over_tls_and_gets_the_distillers_own_answer(
    distillers: Distillers, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: no-teacher\n")  # a recipe the distiller rejects: its answer proves the hop

    done = _radixfair_cli(
        "distill", str(recipe), "--server", distillers.tls.address, "--ca-cert", str(distillers.certs.ca.cert)
    )

    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: INVALID_ARGUMENT"), done.stderr


def test_a_mutual_tls_distiller_refuses_a_client_without_a_certificate(distillers: Distillers) -> None:
    assert tls_health(distillers.mtls.address, distillers.certs.client_tls()) == "UNAVAILABLE"


def test_a_mutual_tls_distiller_refuses_a_certificate_another_ca_signed(distillers: Distillers) -> None:
    certs = distillers.certs
    assert tls_health(distillers.mtls.address, certs.client_tls(certs.stranger)) == "UNAVAILABLE"


def test_the_distiller_cli_lists_artifacts_over_mutual_tls_with_its_certificate(
    distillers: Distillers,
) -> None:
    certs = distillers.certs
    done = _distiller_cli(
        "list", "--server", distillers.mtls.address, "--ca-cert", str(certs.ca.cert),
        "--client-cert", str(certs.tenant.cert), "--client-key", str(certs.tenant.key),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(TABLE_HEADER)


def test_a_missing_certificate_file_is_one_start_up_line(certs: TestPki, tmp_path: Path) -> None:
    missing = tmp_path / "absent.crt"
    settings = {"tls.cert_file": str(missing), "tls.key_file": str(certs.server.key)}

    done = subprocess.run(
        [sys.executable, "-m", "radixfair_distiller", *_set_args(settings, tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"radixfair-distiller: error: tls.cert_file {missing}: cannot read (No such file or directory)"
    ]


# ---- helpers ------------------------------------------------------------------


def _set_args(settings: dict[str, str], work_dir: Path, port: int | None = None) -> list[str]:
    base = {"port": str(port or free_port()), "work_dir": str(work_dir), "device": "cpu"}
    base["torch_threads"] = "1"
    return [arg for key, value in {**base, **settings}.items() for arg in ("--set", f"{key}={value}")]


def _spawn(settings: dict[str, str], work_dir: Path) -> ServiceProcess:
    work_dir.mkdir(parents=True)
    port = free_port()
    log_path = work_dir / "distiller.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "radixfair_distiller", *_set_args(settings, work_dir, port)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return ServiceProcess(process, f"127.0.0.1:{port}", log_path)


def _distiller_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "radixfair_distiller.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _radixfair_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "radixfair.cli", *args], capture_output=True, text=True, timeout=120
    )
