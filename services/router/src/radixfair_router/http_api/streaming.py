"""Server-sent events out, client hang-ups in.

The SSE framing is Starlette's StreamingResponse with one ``data:`` line per event; this module
adds what a generation needs on top: the body iterator is always closed when the response ends,
however it ends (a hang-up noticed while writing leaves it suspended otherwise, and closing it
is what cancels the worker's call), and a hang-up while the reply is still being prepared (a
queued request, a whole non-streamed generation) cancels that work too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

DONE_EVENT = "[DONE]"


def sse_event(data: str) -> bytes:
    """One event; ``data`` is a single line (compact JSON or the [DONE] marker)."""
    return f"data: {data}\n\n".encode()


class ClientGoneError(Exception):
    """The caller hung up before the reply was ready."""


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` whose body iterator is closed when the response ends, however it ends."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        # No caching, and no buffering by a proxy in between (nginx honours X-Accel-Buffering).
        base = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, headers={**base, **(headers or {})})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # type: ignore[attr-defined]


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; if the caller disconnects first, ``work`` is cancelled and ClientGoneError raised.

    Called once the body has been read, so the next ASGI message can only be the disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # its cleanup (cancelling the worker's call) ran
    raise ClientGoneError


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
