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
from deploy_support import REPO
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support.ports import free_port

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
