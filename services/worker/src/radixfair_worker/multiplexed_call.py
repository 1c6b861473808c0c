"""One GenerateMultiplexed call: many requests of one caller (a router) on one stream.

Per request, a GenerateMultiplexed start is what a Generate call is: the same
validation, identity check (per start, ``caller_identity_check.identity_problem``),
worker-made request id, admission, stream and span (WorkerServicer's
``submit`` / ``finished`` / ``rejected`` / ``request_ended``). What differs is the
transport: the caller names each request by a tag it picks, which is only a
label (the engine never sees it, so two tags can never share a stream), and
every reply message carries the events of all requests with output pending.

One writer (``serve``) sends: it waits until some request has output, takes
everything pending of every such request (RequestStream.take_pending, as
Generate's take: several steps' tokens when the transport was slow, the text
byte-identical), and yields it as one message; gRPC resumes it once the
transport took that message, so a slow caller gets fewer, larger messages.
The caller then reads one message a step for all its requests instead of one
per request, which is what the router's CPU goes to (bench/engine/router_relay_cpu.py).

A request failing (refused, admission, a failed text, the engine gone) is an
error event for its tag; the call goes on. A cancel, or the call ending,
aborts the request's generation, which frees its KV pages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import trace

from radixfair.errors import (
    EngineStoppedError,
    InvalidRequestError,
    RadixfairError,
    RequestFailedError,
    UnauthenticatedError,
)
from radixfair.tracing import extract_context
from radixfair.v1 import worker_pb2
from radixfair_engine.request import Request
from radixfair_worker.caller_identity_check import identity_problem
from radixfair_worker.engine_client import EngineClient
from radixfair_worker.engine_protocol import RequestOutcome
from radixfair_worker.request_stream import RequestStream

if TYPE_CHECKING:
    from radixfair_worker.server import WorkerServicer

log = logging.getLogger(__name__)

# A reply message takes events until about this many bytes (an upper estimate: 4 bytes a character),
# a quarter of gRPC's default 4 MiB receive limit; the rest go in the next one. Requests that all
# fell far behind (a stalled caller) could otherwise make one message that the caller must refuse,
# which would end the call for every request on it.
MESSAGE_BYTES = 1 << 20
# A refusal's message may repeat what the caller sent (a model name, say): cut to this many characters,
# so that one error event stays far inside a reply message's budget.
ERROR_MESSAGE_CHARS = 8192


@dataclass(eq=False)
class _Open:
    """One request of the call, from its start until its end event (or its cancel)."""

    tag: int
    span: trace.Span
    started: float
    request: Request | None = None
    stream: RequestStream | None = None
    # Set when nothing more is sent for this tag (ended, cancelled, or its tag reused).
    closed: bool = False
    # Set once the tag's one end event (result or error) is queued: a tag never gets two.
    ended: bool = False
    # Set once the request's span and duration were recorded (WorkerServicer.request_ended).
    span_ended: bool = False
    # Still being built off the event loop (a long text prompt): submitted when that is done.
    building: asyncio.Task[None] | None = field(default=None, repr=False)


class MultiplexedCall:
    """Serves one GenerateMultiplexed call; ``serve`` is its reply stream."""

    def __init__(self, front: WorkerServicer, engine: EngineClient, identity_secret: str) -> None:
        self._front = front
        self._engine = engine
        self._secret = identity_secret
        self._open: dict[int, _Open] = {}
        # Requests with output pending since the writer's last take, in the order it came.
        self._ready: list[_Open] = []
        # Events made outside a take (refused starts), sent with the next message.
        self._events: list[worker_pb2.MultiplexedEvent] = []
        self._wake = asyncio.Event()
        self._requests_done = False
        # The worker is stopping: no new request, and the call ends once its open ones have.
        self._shutting_down = False

    def shut_down(self) -> None:
        """Refuses later starts (UNAVAILABLE, so a router retries them elsewhere) and ends the call
        once its open requests have: a worker's graceful stop then waits for generations only."""
        self._shutting_down = True
        self._wake.set()

    async def serve(
        self, requests: AsyncIterator[worker_pb2.GenerateMultiplexedRequest]
    ) -> AsyncIterator[worker_pb2.GenerateMultiplexedResponse]:
        """The reply messages, until the caller has closed its side and every request ended, or
        the call is cancelled (then every open request is aborted)."""
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    raise reader.exception()  # type: ignore[misc]
                message = self._take_all()
                if message.events:
                    yield message
                finished = self._requests_done or self._shutting_down
                if finished and not self._open and not self._ready and not self._events:
                    return
        finally:
            reader.cancel()
            for entry in list(self._open.values()):
                self._cancel(entry)  # never raises: every open request's generation is aborted

    # -- the caller's commands -------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[worker_pb2.GenerateMultiplexedRequest]) -> None:
        try:
            async for message in requests:
                for start in message.starts:
                    self._start(start)
                for tag in message.cancel_tags:
                    entry = self._open.get(tag)
                    if entry is not None:
                        self._cancel(entry)
        finally:
            self._requests_done = True
            self._wake.set()

    def _start(self, start: worker_pb2.MultiplexedStart) -> None:
        """Starts one request; any unexpected failure on its way ends its tag alone (``_failed``)."""
        try:
            span = self._front.start_span(extract_context(start.trace_context.items()))
        except Exception as error:  # no span, so no entry: the tag's end event alone
            log.error("starting the request on tag %d failed unexpectedly", start.tag, exc_info=error)
            self._events.append(_error_event(start.tag, _worker_failure("starting", error)))
            self._wake.set()
            return
        entry = _Open(start.tag, span, time.monotonic())
        try:
            self._admit(entry, start)
        except Exception as error:  # this start alone: the call reads on
            self._failed(entry, error, "starting")

    def _admit(self, entry: _Open, start: worker_pb2.MultiplexedStart) -> None:
        tag = entry.tag
        reused = self._open.get(tag)
        if reused is not None:
            # The tag cannot tell the two apart any more: both end with this one error.
            self._cancel(reused, outcome="error")
            error = InvalidRequestError(f"tag {tag} is already in use by an open request on this call")
            self._refuse(entry, error)
            return
        if self._shutting_down:
            self._refuse(entry, EngineStoppedError("the worker is shutting down"))
            return
        problem = identity_problem(self._secret, start.request, start.identity_signature)
        if problem is not None:
            self._refuse(entry, UnauthenticatedError(problem))
            return
        self._open[tag] = entry
        entry.building = asyncio.get_running_loop().create_task(self._submit(entry, start.request))

    async def _submit(self, entry: _Open, request: worker_pb2.GenerateRequest) -> None:
        try:
            await self._submit_unguarded(entry, request)
        except Exception as error:  # this task is all that would end the tag: it ends it
            self._failed(entry, error, "starting")

    async def _submit_unguarded(self, entry: _Open, request: worker_pb2.GenerateRequest) -> None:
        try:
            entry.request, entry.stream = await self._front.submit(request, entry.span)
        except asyncio.CancelledError:
            return  # cancelled while building: nothing was submitted
        except Exception as error:
            if not isinstance(error, RadixfairError):
                # The front failed unexpectedly (submit already maps a failure of the request's own
                # input): this task is all that would end the tag, so it ends it, the worker's failure.
                log.exception("starting the request on tag %d failed unexpectedly", entry.tag)
                error = RadixfairError(f"the worker failed to start this request ({type(error).__name__})")
            if not entry.closed:
                del self._open[entry.tag]
                self._refuse(entry, error)
            return
        finally:
            entry.building = None
        if entry.closed:  # cancelled while its prompt was being built
            self._engine.abort(entry.stream.request_id)
            return
        entry.stream.watch(lambda _stream: self._mark_ready(entry))

    def _cancel(self, entry: _Open, outcome: str = "cancelled") -> None:
        """Aborts ``entry``'s generation (its pages return to the pool); nothing more is sent for it.
        Never raises: it runs for every open request when the call ends."""
        self._close(entry)
        self._end_span(entry, outcome)

    def _close(self, entry: _Open) -> None:
        """Nothing more is sent for ``entry`` and its generation is stopped (a failed abort is logged:
        the engine frees a request whose caller is gone when it next fails to deliver)."""
        entry.closed = True
        if self._open.get(entry.tag) is entry:
            del self._open[entry.tag]
        building = entry.building
        try:
            if building is not None:
                if building is not asyncio.current_task():
                    building.cancel()
            elif entry.stream is not None and not entry.stream.ended:
                self._engine.abort(entry.stream.request_id)
        except Exception:
            log.exception("aborting the request on tag %d failed", entry.tag)

    def _end_span(self, entry: _Open, outcome: str) -> None:
        """Records the request's end once (span, duration, outcome); a failure there is logged only."""
        if entry.span_ended:
            return
        entry.span_ended = True
        try:
            self._front.request_ended(entry.span, outcome, entry.started)
        except Exception:
            log.exception("recording the end of the request on tag %d failed", entry.tag)

    def _end_with_error(self, entry: _Open, error: RadixfairError, events: list | None = None) -> int:
        """Queues ``entry``'s one end event, an error (into ``events``, the message being built, or the
        next one), unless it has one; records the rejection and the end. Bytes the event takes."""
        size = 0
        if not entry.ended:
            entry.ended = True
            event = _error_event(entry.tag, error)
            (self._events if events is None else events).append(event)
            size = 8 + event.ByteSize()
            self._wake.set()
        try:
            self._front.rejected(error, entry.span)
        except Exception:
            log.exception("recording the refusal of the request on tag %d failed", entry.tag)
        self._end_span(entry, "error")
        return size

    def _refuse(self, entry: _Open, error: RadixfairError) -> None:
        entry.closed = True
        self._end_with_error(entry, error)

    def _failed(self, entry: _Open, error: Exception, during: str, events: list | None = None) -> int:
        """An unexpected failure on ``entry``'s path (``during``: "starting" or "sending the output of"):
        that request alone ends, with INTERNAL scoped to it, since the failure may be its own
        (a router would otherwise take the worker out of rotation and retry the request on the next);
        its generation is aborted and the call goes on. Bytes its end event takes, if it got one."""
        log.error("%s the request on tag %d failed unexpectedly", during, entry.tag, exc_info=error)
        self._close(entry)
        return self._end_with_error(entry, _worker_failure(during, error), events)

    # -- the writer ------------------------------------------------------------------------------

    def _mark_ready(self, entry: _Open) -> None:
        self._ready.append(entry)
        self._wake.set()

    def _take_all(self) -> worker_pb2.GenerateMultiplexedResponse:
        """One message with the pending events of every request, up to about MESSAGE_BYTES (the rest
        go in the next one): refusals first, in the order they were made, then output."""
        message = worker_pb2.GenerateMultiplexedResponse()
        events = message.events
        budget = MESSAGE_BYTES
        refusals = 0
        while refusals < len(self._events) and budget > 0:
            budget -= 8 + self._events[refusals].ByteSize()
            refusals += 1
        events.extend(self._events[:refusals])
        del self._events[:refusals]
        if self._events:
            self._wake.set()  # the next message's, before any output
            return message
        ready, self._ready = self._ready, []
        for index, entry in enumerate(ready):
            if budget <= 0:
                self._ready = ready[index:]  # the next message's
                self._wake.set()
                break
            if entry.closed:
                continue
            try:
                budget -= self._take(entry, events)
            except Exception as error:  # this request alone: the call's others go on
                budget -= self._failed(entry, error, "sending the output of", events)
        return message

    def _take(self, entry: _Open, events) -> int:
        """Adds ``entry``'s pending events to ``events``; about how many bytes they take."""
        assert entry.stream is not None and entry.request is not None
        chunk = entry.stream.take_pending()
        if chunk is None:
            return 0
        size = 64 + 4 * len(chunk.text) + 10 * len(chunk.token_ids)
        if chunk.token_ids:
            # Filled in place: building a TokenDelta and copying it in took ~1.7x as long.
            delta = events.add(tag=entry.tag).delta
            delta.token_ids.extend(chunk.token_ids)
            delta.text = chunk.text
        end = chunk.end
        if end is None:
            return size
        entry.closed = True
        del self._open[entry.tag]
        if isinstance(end, RequestOutcome):
            events.add(tag=entry.tag, result=self._front.finished(entry.request, end, entry.span))
            entry.ended = True
            self._end_span(entry, "ok")
            return size + 256 + 4 * len(end.text)
        return size + self._end_with_error(entry, end, events)


def _worker_failure(during: str, error: Exception) -> RequestFailedError:
    """The request-scoped INTERNAL end of a request whose path failed unexpectedly in the worker."""
    return RequestFailedError(f"the worker failed {during} this request ({type(error).__name__})")


def _error_event(tag: int, error: RadixfairError) -> worker_pb2.MultiplexedEvent:
    text = str(error)
    if len(text) > ERROR_MESSAGE_CHARS:
        text = (
            f"{text[:ERROR_MESSAGE_CHARS]}... ({len(text) - ERROR_MESSAGE_CHARS} more characters truncated)"
        )
    return worker_pb2.MultiplexedEvent(
        tag=tag,
        error=worker_pb2.MultiplexedError(
            code=error.code.value[0],
            message=text,
            request_scoped=isinstance(error, RequestFailedError),
        ),
    )
