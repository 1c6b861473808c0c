"""The streams this router is relaying now: their output, booked in the ledger, and their liveness.

Output is booked in one of two ways, chosen by where the ledger lives:

- Redis (the ledger outlives this process): write-ahead with group commit. A
  message's tokens are booked *before* the message is relayed, so a router
  killed at any instant has booked at least every token its clients received
  (at most the one message per stream in the gap between booking and the
  socket write is booked and not received). One booking task runs whenever
  there is pending work, with no timer: it books every waiting stream's tokens,
  merged per (client, worker), in one pipelined ledger call, and while that
  batch is in flight new messages wait for the next one. Under load that is
  one Redis round trip per batch, not per message. A degraded ledger books in
  its local store the same way, so streams flow through a Redis outage.
- In-process memory (the ledger dies with the process anyway): relaying a
  message costs an addition; a timer task books every stream's uncharged
  output every ``output_charge_interval_s`` and at settle.

The timer task (every ``output_charge_interval_s``) also stops a stream whose
worker left rotation while the stream was silent (a frozen or unreachable
worker: its stream would otherwise hang until the caller's deadline), and a
stream silent for ``stream_idle_timeout_s``. "Silent" for a worker out of
rotation is ``RouterConfig.unhealthy_stream_silence_s``: by default as long as
the health checks took to give up on the worker, so a frozen worker's streams
end when it leaves rotation, or within one more check timeout. A stream still
sending tokens from a worker marked unhealthy (a draining worker says
NOT_SERVING) runs on.
Stopping cancels the worker call and records why; the relay turns that into a
retry (no token yet) or UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from radixfair.v1 import generation_pb2
from radixfair_router.dispatch_core import output_charge
from radixfair_router.ledger import Ledger
from radixfair_router.worker_registry import WorkerEndpoint

log = logging.getLogger(__name__)


@dataclass(eq=False)
class StreamBook:
    """What one forwarded stream has delivered and booked so far."""

    client_id: str
    weight: float
    endpoint: WorkerEndpoint
    # Prompt tokens the router forwarded (the result's usage reports these, not the worker's claim).
    prompt_tokens: int = 0
    tokens_sent: int = 0
    # Output tokens counted for relaying but not yet booked in the ledger.
    uncharged_tokens: int = 0
    # Tokens of the message waiting for its write-ahead booking: not relayed (yet). A stream cut
    # during that wait leaves them here, and its settle takes them back out of the ledger.
    unrelayed_tokens: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    # Monotonic time of the last message from the worker (or of the call's start).
    last_activity: float = field(default_factory=time.monotonic)
    result: generation_pb2.GenerationResult | None = None
    call: grpc.aio.UnaryStreamCall | None = None
    # Set when this router stopped the stream: the status and message the relay reports.
    stopped: tuple[grpc.StatusCode, str] | None = None


@dataclass(frozen=True)
class LiveStreamLimits:
    charge_interval_s: float
    idle_timeout_s: float
    # A stream of a worker out of rotation is stopped once it has been silent this long.
    unhealthy_silence_s: float
    output_token_weight: float
    # Book each message's tokens before relaying it (a ledger that outlives this process).
    write_ahead: bool = False


class LiveStreams:
    """Every stream being relayed, with the one task that books their output and watches them."""

    def __init__(
        self, ledger: Ledger, limits: LiveStreamLimits, on_charged: Callable[[str, float], None]
    ) -> None:
        self._ledger = ledger
        self._limits = limits
        self._on_charged = on_charged
        self._books: set[StreamBook] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Write-ahead: the next batch's future (shared by every caller waiting for it), and the task
        # that books the batches.
        self._next: asyncio.Future[None] | None = None
        self._pending = asyncio.Event()
        self._booker: asyncio.Task[None] | None = None

    @property
    def write_ahead(self) -> bool:
        return self._limits.write_ahead

    def __len__(self) -> int:
        return len(self._books)

    def open(self, book: StreamBook) -> None:
        self._books.add(book)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self, book: StreamBook) -> None:
        """The stream ended: its remaining uncharged tokens are the caller's to book (at settle)."""
        self._books.discard(book)

    async def booked(self) -> None:
        """Write-ahead: returns once every token counted so far (``uncharged_tokens`` of every open
        stream) is in the ledger. A caller cancelled while waiting leaves the batch to the others."""
        await asyncio.shield(self.next_batch())

    def next_batch(self) -> asyncio.Future[None]:
        """Write-ahead: the future of the batch that books every token counted so far; it joins the
        batch after the one in flight, if any (group commit). One future per batch, shared by all its
        waiters: a waiter awaits it shielded, so leaving does not cancel it for the others."""
        batch = self._next
        if batch is None:
            batch = self._next = asyncio.get_running_loop().create_future()
            self._pending.set()
            if self._booker is None or self._booker.done():
                self._booker = asyncio.get_running_loop().create_task(self._book_batches())
        return batch

    async def _book_batches(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            batch, self._next = self._next, None
            if batch is None:  # asked to stop (drain with no stream open)
                return
            try:
                await self.flush()
            except Exception:  # a booking bug must be seen, but must not stop the streams
                log.exception("could not book output charges")
            if not batch.done():
                batch.set_result(None)

    async def flush(self) -> None:
        """Books every stream's uncharged output now (write-ahead: only from the booking task)."""
        merged: dict[tuple[str, float, str], int] = {}
        taken: list[tuple[StreamBook, int]] = []
        for book in self._books:
            tokens = book.uncharged_tokens
            if tokens:
                book.uncharged_tokens = 0
                taken.append((book, tokens))
                key = (book.client_id, book.weight, book.endpoint.worker_id)
                merged[key] = merged.get(key, 0) + tokens
        if not merged:
            return
        weight_out = self._limits.output_token_weight
        charges = [
            output_charge(client, weight, worker, tokens, weight_out)
            for (client, weight, worker), tokens in merged.items()
        ]
        try:
            await self._ledger.charge_many(charges)
        except Exception:
            # Not booked (an unreachable Redis never lands here: the ledger degrades instead). The
            # tokens go back to their streams, so the next batch or the stream's settlement books
            # them and the ledger still ends equal to what was relayed. Not on cancellation: a
            # numbered ledger call runs to its end even when its caller is cancelled.
            for book, tokens in taken:
                book.uncharged_tokens += tokens
            raise
        for charge in charges:
            self._on_charged(charge.client_id, charge.service)

    def check(self, now: float) -> None:
        """Stops the streams that can no longer make progress."""
        limits = self._limits
        for book in self._books:
            if book.stopped is not None or book.call is None:
                continue
            silent = now - book.last_activity
            if silent >= limits.idle_timeout_s:
                self._stop(book, grpc.StatusCode.DEADLINE_EXCEEDED, f"no output for {silent:.0f}s")
            elif not book.endpoint.healthy and silent >= limits.unhealthy_silence_s:
                self._stop(
                    book,
                    grpc.StatusCode.UNAVAILABLE,
                    f"worker {book.endpoint.worker_id} left rotation (unreachable or not serving) "
                    f"and its stream was silent for {silent:.1f}s",
                )

    async def drain(self) -> None:
        """Books what is pending now; with no stream open, also ends the tasks (they restart with the
        next stream), so a stopped router leaves no task behind."""
        if not self._books and self._task is not None:
            self._stopping.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            self._stopping.clear()
        if not self.write_ahead:
            await self.flush()
            return
        await self.booked()
        if not self._books and self._booker is not None:
            self._pending.set()  # no waiter: the booking task ends
            await asyncio.gather(self._booker, return_exceptions=True)
            self._booker = None

    def worker_closing(self, endpoint: WorkerEndpoint, why: str) -> None:
        """``endpoint``'s channel is about to close, which cancels its calls: each open stream there is
        marked stopped first, so its relay retries it elsewhere (no token yet) or answers UNAVAILABLE,
        instead of taking the cancellation for the caller hanging up."""
        for book in self._books:
            if book.endpoint is endpoint and book.stopped is None:
                book.stopped = (
                    grpc.StatusCode.UNAVAILABLE,
                    f"worker {endpoint.worker_id} left the pool ({why}) while streaming",
                )

    def _stop(self, book: StreamBook, code: grpc.StatusCode, message: str) -> None:
        book.stopped = (code, message)
        assert book.call is not None
        book.call.cancel()

    async def _run(self) -> None:
        interval = self._limits.charge_interval_s
        while not self._stopping.is_set():
            # A plain sleep: wait_for on the stop event cost a task per tick (Python 3.11).
            await asyncio.sleep(interval)
            self.check(time.monotonic())
            if self.write_ahead:
                continue  # the booking task books, before each relay
            try:
                await self.flush()
            except Exception:  # a booking bug must be seen, but must not stop the watch
                log.exception("could not book batched output charges")
