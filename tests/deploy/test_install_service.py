"""scripts/install_service.sh, run exactly as the router image's build stage runs it.

The README set-up installs everything editable (`install_service.sh --editable
dev`); the images install one service, non-editable, into a fresh virtualenv.
This builds that fresh router environment once, then checks what the image
promises: no torch, the generated stubs, and an entry point that serves
grpc.health.v1 from the same config file and env compose gives a router.

pip resolves the install with no index, against wheels packed from the
third-party packages .venv already holds (installed_wheelhouse): the same
pinned versions, without most of a minute of index pages and downloads. A
requirement outside that set fails the install rather than passing unseen.

The distiller's install is checked as pip's dry run of the script against .venv (everything is
installed there already, so it resolves offline in seconds): what it would install, and what it
finds satisfied, never includes the worker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import ENV_EXAMPLE, REPO
from installed_wheelhouse import fill_wheelhouse, project_requirements
from support.ports import free_port

INSTALL = REPO / "scripts" / "install_service.sh"
HEALTH_CHECK = REPO / "deploy" / "docker" / "grpc_health_check.py"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RADIXFAIR_", "VIRTUAL_ENV", "PYTHONPATH"))
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def router_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with `install_service.sh router`, the router Dockerfile's RUN step."""
    root = tmp_path_factory.mktemp("router-image")
    venv, wheelhouse = root / "venv", root / "wheelhouse"
    # The virtualenv (its pip) is made while the wheelhouse is packed: neither needs the other.
    making_venv = subprocess.Popen([sys.executable, "-m", "venv", str(venv)])
    try:
        requirements, own = project_requirements(REPO / "common", REPO / "services" / "router")
        fill_wheelhouse(wheelhouse, requirements, own, REPO / "constraints.txt")
    finally:
        assert making_venv.wait(timeout=600) == 0
    env = _clean_env(
        PYTHON=str(venv / "bin" / "python"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheelhouse),
    )
    result = subprocess.run(
        ["bash", str(INSTALL), "router"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return venv


def _python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, env=_clean_env(), cwd=venv
    )


def test_router_install_holds_no_torch(router_venv: Path) -> None:
    assert _python(router_venv, "import radixfair_router.app, radixfair.v1.router_pb2_grpc").returncode == 0
    missing = _python(router_venv, "import torch")
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr


def test_router_install_is_a_regular_install_not_a_link_to_the_source(router_venv: Path) -> None:
    result = _python(
        router_venv,
        "import radixfair, radixfair_router; print(radixfair.__file__); print(radixfair_router.__file__)",
    )

    for path in result.stdout.split():
        assert str(router_venv) in path, path


@pytest.fixture
def router_process(
    router_venv: Path, smollm2_dir: Path, redis_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`radixfair-router --config deploy/config/router.yaml` with the env a router container gets."""
    port = free_port()
    keys = next(
        line.split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.startswith("RADIXFAIR_AUTH__API_KEYS=")
    )
    env = _clean_env(
        RADIXFAIR_AUTH__API_KEYS=keys,
        RADIXFAIR_ROUTER_ID="router-1",
        # Loopback stand-ins for what compose provides: free ports, this machine's Redis and model.
        RADIXFAIR_HOST="127.0.0.1",
        RADIXFAIR_PORT=str(port),
        RADIXFAIR_METRICS_PORT=str(free_port()),
        RADIXFAIR_TOKENIZER_DIR=str(smollm2_dir),
        RADIXFAIR_LEDGER__REDIS_URL=redis_url,
    )
    log = tmp_path / "router.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(router_venv / "bin" / "radixfair-router"),
                "--config",
                str(REPO / "deploy" / "config" / "router.yaml"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield process, f"127.0.0.1:{port}", log
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_router_entry_point_serves_health_with_the_compose_config(
    router_venv: Path, router_process: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    process, address, log = router_process
    command = [str(router_venv / "bin" / "python"), str(HEALTH_CHECK), address, "--timeout", "1"]
    deadline = time.monotonic() + 60
    result = subprocess.run(command, capture_output=True, text=True, env=_clean_env())
    while result.returncode != 0 and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-4000:]
        time.sleep(0.5)
        result = subprocess.run(command, capture_output=True, text=True, env=_clean_env())

    assert result.returncode == 0, log.read_text()[-4000:]
    assert "SERVING" in result.stdout


def test_unknown_component_is_refused_with_the_list_of_components() -> None:
    result = subprocess.run(
        ["bash", str(INSTALL), "gateway"], capture_output=True, text=True, env=_clean_env()
    )

    assert result.returncode == 2
    assert "unknown component 'gateway'" in result.stderr and "router" in result.stderr


def test_the_distiller_install_pulls_in_no_worker() -> None:
    # `install_service.sh distiller` exactly as the distiller's set-up runs it, as a pip dry run
    # (PIP_DRY_RUN) against this environment, offline. PIP_VERBOSE=1 cancels the script's -q, so
    # pip names every package it would install and every requirement it finds satisfied, and whose
    # requirement it is. PIP_NO_BUILD_ISOLATION=0 turns build isolation off (pip reads a "no-"
    # option's variable inverted): the packages' metadata is built with .venv's setuptools.
    env = _clean_env(
        PYTHON=sys.executable,
        PIP_DRY_RUN="1",
        PIP_NO_INDEX="1",
        PIP_NO_BUILD_ISOLATION="0",
        PIP_VERBOSE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )

    result = subprocess.run(
        ["bash", str(INSTALL), "distiller"], env=env, capture_output=True, text=True, timeout=600
    )

    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    would_install = {
        name for line in re.findall(r"^Would install (.+)$", output, re.MULTILINE) for name in line.split()
    }
    assert would_install == {
        "radixfair-0.1.0",
        "radixfair-model-format-0.1.0",
        "radixfair-engine-0.1.0",
        "radixfair-distiller-0.1.0",
    }, output[-4000:]
    # The teacher's GGUF conversion comes with the model format's convert extra, not the worker's.
    assert re.search(r"satisfied: gguf==\S+ .*\(from radixfair-model-format==", output), output[-4000:]
    assert not re.search(r"radixfair[-_]worker|services/worker", output, re.IGNORECASE), output[-4000:]
