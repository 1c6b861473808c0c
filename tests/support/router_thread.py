"""Real routers serving from an event loop of their own thread, for tests that call them synchronously.

A router runs in its own event loop (as in its process), so a test can drive it with blocking clients
(the ``openai`` SDK, ``httpx``) or, through ``call``, run a coroutine on that loop to read its state
(ledger, metrics) the way the router itself would.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry.sdk.trace.export import SpanExporter

from radixfair_router.app import RunningRouter
from radixfair_router.config import RouterConfig
from support.router_stack import running_router

T = TypeVar("T")
# Bound on every wait here: start-up on a loaded 2-core machine, and a router's stop.
WAIT_S = 120.0


@dataclass
class RoutersInThread:
    """The running routers, by the names they were started under, and the loop they run in."""

    routers: dict[str, RunningRouter]
    loop: asyncio.AbstractEventLoop

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT_S)


@contextlib.contextmanager
def routers_in_thread(
    configs: Mapping[str, RouterConfig], span_exporter: SpanExporter | None = None
) -> Iterator[RoutersInThread]:
    """Starts one router per config in a new thread's loop (each waits for its workers), yields them,
    then stops them and the loop."""
    loop = asyncio.new_event_loop()
    started: Future[dict[str, RunningRouter]] = Future()
    stop = threading.Event()

    async def serve() -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                routers = {
                    name: await stack.enter_async_context(running_router(config, span_exporter))
                    for name, config in configs.items()
                }
                started.set_result(routers)
                while not stop.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as error:
            if not started.done():
                started.set_exception(error)
            raise

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), name="routers", daemon=True)
    thread.start()
    try:
        yield RoutersInThread(started.result(WAIT_S), loop)
    finally:
        stop.set()
        thread.join(WAIT_S)
        loop.close()
