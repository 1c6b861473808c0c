"""One worker call, read in its own task, so the relay can coalesce what the client has not taken yet.

The relay to the client waits on things the worker does not: the write-ahead booking of a message's
tokens (a Redis round trip) and the client's own stream. Reading the worker's call in the relay's
task left each message on the worker's side until the previous one was out, so a stream that fell
behind paid a booking and a relay per worker message. Here the call is read as fast as the worker
sends, and ``take`` hands the relay everything that arrived since its last take as one message: the
deltas' token ids and texts concatenated in order, so the text the client reads is byte-identical to
relaying each message (tests/router/test_relay_coalescing.py), and the relay books the batch once.

A stream that keeps up gets each worker message as it came (the same object, no copy). With a stream
interval (``ForwardConfig.stream_interval_s``) the relay ``hold``s the stream after each message, so
what the worker sends meanwhile goes out as one: a relayed message costs the router a gRPC write (and
a write-ahead booking) whatever it carries. What is held
here is one request's output, bounded by its ``max_tokens``, as the worker's own stream holds it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from radixfair.errors import FAILURE_SCOPE_KEY, REQUEST_SCOPE
from radixfair.v1 import router_pb2
from radixfair_router.live_streams import StreamBook

log = logging.getLogger(__name__)

Response = router_pb2.RouterServiceGenerateResponse


class CallCancelledError(Exception):
    """The worker call was cancelled by this router (LiveStreams, or its worker leaving the pool)."""


class StreamEndedError(Exception):
    """The worker's stream ended without a result."""


class PendingOutput:
    """One request's output from its worker, as the relay reads it: deltas gathered since the last
    ``take`` (coalesced into one message), the result, or the end it raises. Filled by a transport:
    WorkerStream (a Generate call per request) or a multiplexed call's request."""

    def __init__(self) -> None:
        self._deltas: list[Response] = []
        self._result: Response | None = None
        self._end: BaseException | None = None
        self._wake: asyncio.Future[None] | None = None
        # While the relay holds the stream (``hold``), a delta does not wake it; the result does.
        self._holding = False
        # Kept: asking asyncio for the running loop is a getpid() system call each time.
        self._loop = asyncio.get_running_loop()

    async def take(self) -> tuple[Response | None, Response | None]:
        """(delta, result): the deltas pending since the last take as one message (None if none),
        and the result once it came. Raises the call's end once everything before it was taken."""
        while not self._deltas and self._result is None:
            if self._end is not None:
                raise self._end
            self._wake = self._loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        deltas, self._deltas = self._deltas, []
        result, self._result = self._result, None
        return (coalesce(deltas) if deltas else None), result

    async def hold(self, seconds: float) -> None:
        """Lets deltas gather for up to ``seconds`` (the relay's stream interval); returns at once when
        the result or the call's end is here, or comes meanwhile, so neither waits for the interval."""
        if seconds <= 0 or self._result is not None or self._end is not None:
            return
        self._holding = True
        self._wake = self._loop.create_future()
        timer = self._loop.call_later(seconds, self._wake_taker)
        try:
            await self._wake
        finally:
            timer.cancel()
            self._wake = None
            self._holding = False

    def _wake_taker(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


class WorkerStream(PendingOutput):
    """Reads a worker call in a task; ``take`` returns the next coalesced delta and the result, or
    raises the call's end (``grpc.aio.AioRpcError``, ``CallCancelledError``, ``StreamEndedError``).
    ``close`` stops the reading task (the caller cancels the call itself)."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, book: StreamBook) -> None:
        super().__init__()
        self._call = call
        self._book = book
        self._task = self._loop.create_task(self._read())

    @property
    def complete(self) -> bool:
        """True once everything the worker will send is here (its result, or the call's end)."""
        return self._task.done()

    def close(self) -> None:
        self._task.cancel()

    async def _read(self) -> None:
        call, book = self._call, self._book
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    self._finish(StreamEndedError())
                    return
                if message is None:  # grpc.aio's read of bytes that do not parse: the call is broken
                    details = "the worker sent a message that does not parse"
                    metadata = grpc.aio.Metadata()
                    self._finish(
                        grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, metadata, metadata, details)
                    )
                    return
                book.last_activity = time.monotonic()
                if message.HasField("result"):
                    self._result = message
                    self._wake_taker()
                    return
                self._deltas.append(message)
                if not self._holding:
                    self._wake_taker()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # closed by the relay
            self._finish(CallCancelledError())
        except grpc.aio.AioRpcError as error:
            self._finish(error)
        except Exception as error:
            # Unexpected (a bug here): the request ends, scoped to it, rather than wait for the idle
            # limit with nothing left to read its call; the relay's caller cancels the call.
            log.error("reading the worker call of a request failed", exc_info=error)
            details = f"the router failed to relay this request's output ({error!r})"
            trailer = grpc.aio.Metadata((FAILURE_SCOPE_KEY, REQUEST_SCOPE))
            self._finish(
                grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailer, details)
            )

    def _finish(self, end: BaseException) -> None:
        self._end = end
        self._wake_taker()


def coalesce(deltas: list[Response]) -> Response:
    """The deltas as one: token ids and texts concatenated in order (the first message, extended)."""
    first = deltas[0]
    if len(deltas) > 1:
        delta = first.delta
        for later in deltas[1:]:
            delta.token_ids.extend(later.delta.token_ids)
        delta.text = "".join([m.delta.text for m in deltas])
    return first
