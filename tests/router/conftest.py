"""Worker processes for the router tests: two shared by the session (starting one costs seconds),
and per-test ones for tests that kill them. Tests on the shared ones use prefixes no other test uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.processes import ServiceProcess, stop_all
from support.router_stack import start_worker_process


def start_workers(model_dir: Path, log_dir: Path, count: int, **overrides: object) -> list[ServiceProcess]:
    """Starts ``count`` workers in parallel (each waits for its own health check)."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: start_worker_process(model_dir, log_dir, **overrides), range(count)))


@pytest.fixture(scope="session")
def two_workers(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    workers = start_workers(tiny_model_dir, tmp_path_factory.mktemp("workers"), 2)
    yield workers
    stop_all(workers)


@pytest.fixture
def spawn_workers(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., list[ServiceProcess]]]:
    """Workers owned by one test (for tests that kill them)."""
    started: list[ServiceProcess] = []

    def spawn(count: int, **overrides: object) -> list[ServiceProcess]:
        workers = start_workers(tiny_model_dir, tmp_path, count, **overrides)
        started.extend(workers)
        return workers

    yield spawn
    stop_all(started)
