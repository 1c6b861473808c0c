"""A router in the test's event loop in front of real worker processes and a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter

from radixfair.auth import ApiKeyConfig, AuthConfig
from radixfair.client import ClientConfig, RouterClient
from radixfair_router.app import RunningRouter, start_router
from radixfair_router.config import (
    ForwardConfig,
    LedgerConfig,
    PolicyConfig,
    RegistryConfig,
    RouterConfig,
    StaticWorker,
)
from support.ports import free_port
from support.processes import ServiceProcess, start_service

# client id -> (api key, weight)
CLIENTS = {"alice": ("key-alice", 1.0), "bob": ("key-bob", 1.0), "carol": ("key-carol", 2.0)}

# Small pages so short test prompts span several of them.
WORKER_SETTINGS = {"engine.page_size": 4, "engine.num_pages": 512, "engine.max_batched_tokens": 256}


def start_worker_process(model_dir: Path, log_dir: Path, **overrides: object) -> ServiceProcess:
    port = free_port()
    settings = {
        "model": str(model_dir),
        "port": port,
        "worker_id": f"worker-{port}",
        **WORKER_SETTINGS,
        **overrides,
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return start_service("radixfair_worker", args, f"127.0.0.1:{port}", log_dir / f"worker-{port}.log")


@contextmanager
def metered_workers(
    model_dir: Path, log_dir: Path, count: int = 2
) -> Iterator[tuple[list[ServiceProcess], dict[str, str]]]:
    """``count`` workers of this test's own, each with a /metrics endpoint: (workers, {worker id: url})."""
    ports = [free_port() for _ in range(count)]
    with ThreadPoolExecutor(count) as pool:
        workers = list(
            pool.map(lambda port: start_worker_process(model_dir, log_dir, metrics_port=port), ports)
        )
    try:
        yield workers, {worker_id(w): f"http://127.0.0.1:{port}/metrics" for w, port in zip(workers, ports)}
    finally:
        for worker in workers:
            worker.stop()


def worker_id(worker: ServiceProcess) -> str:
    return f"worker-{worker.address.rsplit(':', 1)[1]}"


def router_config(
    tokenizer_dir: Path,
    workers: Sequence[ServiceProcess],
    redis_url: str = "",
    policy: str = "d2lpm",
    **policy_options: object,
) -> RouterConfig:
    ledger = LedgerConfig(store="redis", redis_url=redis_url) if redis_url else LedgerConfig(store="memory")
    return RouterConfig(
        port=0,
        tokenizer_dir=tokenizer_dir,
        policy=PolicyConfig(name=policy, **policy_options),  # type: ignore[arg-type]
        registry=RegistryConfig(
            workers=tuple(StaticWorker(worker_id(w), w.address) for w in workers),
            health_check_interval_s=0.2,
        ),
        ledger=replace(ledger, reconnect_interval_s=0.1, redis_timeout_s=1.0),
        forward=ForwardConfig(stream_idle_timeout_s=30.0, wait_for_worker_s=3.0),
        auth=AuthConfig(tuple(ApiKeyConfig(key, cid, weight) for cid, (key, weight) in CLIENTS.items())),
    )


@asynccontextmanager
async def running_router(
    config: RouterConfig, span_exporter: SpanExporter | None = None, healthy_workers: int | None = None
) -> AsyncIterator[RunningRouter]:
    """Starts the router and waits until ``healthy_workers`` (default: all static ones) are in rotation."""
    running = await start_router(config, span_exporter)
    try:
        wanted = len(config.registry.workers) if healthy_workers is None else healthy_workers
        await wait_until(lambda: len(running.registry.healthy()) >= wanted, "workers healthy")
        yield running
    finally:
        await running.stop(grace_s=0.5)


def client_for(running: RunningRouter, client_id: str, **options: object) -> RouterClient:
    key = CLIENTS[client_id][0]
    return RouterClient(ClientConfig(f"127.0.0.1:{running.port}", key, **options))  # type: ignore[arg-type]


async def stream_text(
    running: RunningRouter,
    prompt: list[int],
    client_id: str = "carol",
    max_attempts: int | None = None,
    **options: Any,
) -> tuple[str, Any]:
    """The text a client streams for ``prompt`` (deltas concatenated) and the result message."""
    config = {} if max_attempts is None else {"max_attempts": max_attempts}
    async with client_for(running, client_id, **config) as client:
        text, result = "", None
        async for message in client.stream(prompt, **options):
            if message.HasField("delta"):
                text += message.delta.text
            else:
                result = message.result
        return text, result


async def wait_until(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)
