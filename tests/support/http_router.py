"""A real router serving its OpenAI-compatible HTTP API from its own thread, for synchronous HTTP clients.

The router runs in an event loop of its own thread (as in its process), so the official ``openai``
SDK and ``httpx`` call it with blocking calls from the test; ``call`` runs a coroutine on the
router's loop to read its state (ledger, metrics) the way the router itself would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.sdk.trace.export import SpanExporter

from radixfair_router.app import RunningRouter
from support.ports import free_port
from support.processes import ServiceProcess
from support.router_stack import router_config
from support.router_thread import WAIT_S, routers_in_thread

T = TypeVar("T")


@dataclass
class HttpRouter:
    running: RunningRouter
    loop: asyncio.AbstractEventLoop

    @property
    def base_url(self) -> str:
        assert self.running.http is not None
        return f"http://127.0.0.1:{self.running.http.port}/v1"

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT_S)


@contextmanager
def http_router(
    tokenizer_dir: Path,
    workers: list[ServiceProcess],
    span_exporter: SpanExporter | None = None,
    **config: Any,
) -> Iterator[HttpRouter]:
    """A router with ``http_port`` set, in front of ``workers``, in-memory ledger unless redis_url given."""
    redis_url = config.pop("redis_url", "")
    base = replace(router_config(tokenizer_dir, workers, redis_url), http_port=free_port())
    settings = replace(base, **config)
    with routers_in_thread({"router": settings}, span_exporter) as started:
        yield HttpRouter(started.routers["router"], started.loop)
