"""All of this router's requests to one worker on one GenerateMultiplexed call (forward.worker_transport).

With one Generate call per request, relaying a message costs the router a grpc.aio read from that
request's call, and on the GPU host those reads were most of the ~410 us of CPU a relayed message
took (notes/OPEN_FINDINGS.md, the eleventh wave). Here one call per worker endpoint carries every
request: the worker sends each step's output of all of them in one message, so the router reads one
message a step per worker, and hands each request its share.

``MultiplexedConnection`` owns the call: it opens it with the first request, writes starts and
cancels (what queued while a write was in flight goes out as one message), reads the worker's
messages and hands each event to its request. ``MultiplexedRequest`` is one request on it, and offers
what the relay uses of a per-request call: ``cancel``/``done`` (as grpc.aio's call) and
``take``/``hold``/``complete``/``close`` (as WorkerStream), with the same ends: the worker's error for
the request as a ``grpc.aio.AioRpcError`` with the status its own Generate call would have ended with,
``CallCancelledError`` when this router cancelled it or closed the connection (the worker left the
pool), and UNAVAILABLE for every open request when the shared call breaks (the worker was killed).
So booking, retries and LiveStreams are one code path for both transports.

A call that ends before the worker sent anything on it failed at its open, and two rules keep such a
worker cheap (a router upgraded before its workers, issue 11: 8 routers in front of a worker without
GenerateMultiplexed used 6.9 cores and served nothing, each request opening a call that failed):
- UNIMPLEMENTED at the open: the worker predates GenerateMultiplexed. ``serves_multiplexed`` turns
  False for ``FALLBACK_RECHECK_S`` (the router sends that endpoint's requests as Generate calls; then
  one call probes again, for a worker upgraded meanwhile), and the requests on the failed call end
  with ``MultiplexedUnsupportedError``, which the router answers by sending them again (nothing
  reached the worker). Logged at WARNING once per connection.
- Any other end at the open (UNAVAILABLE, a refusal, a call the worker closes at once): the next open
  waits ``reopen_delay(failures)`` (doubling, capped); a request started meanwhile ends at once with
  UNAVAILABLE naming the worker, as a refused call would, without opening one. So calls opened on a
  broken worker are bounded by that schedule, not by the requests.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable

import grpc

from radixfair.errors import FAILURE_SCOPE_KEY, REQUEST_SCOPE
from radixfair.v1 import router_pb2, worker_pb2
from radixfair_router.live_streams import StreamBook
from radixfair_router.worker_stream import CallCancelledError, PendingOutput

log = logging.getLogger(__name__)

Response = router_pb2.RouterServiceGenerateResponse
_GENERATE_MULTIPLEXED = "/radixfair.v1.WorkerService/GenerateMultiplexed"
_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}
# Starts are gathered into one message up to about this many bytes: a quarter of gRPC's default
# 4 MiB receive limit, so a message of several starts never fails where each alone would pass (one
# start larger than this goes alone, as its own Generate call would carry it).
MESSAGE_BYTES = 1 << 20
# A start must fit a message the worker receives (gRPC's default limit, which workers keep), with room
# for the message's framing: a larger one sent on the call would end it for every request on it, so it
# ends alone, never sent.
START_BYTES_LIMIT = (4 << 20) - 1024
# After a call failed at its open (nothing came back on it), the next open waits REOPEN_BASE_S x 2^(n-1)
# for the n-th such failure in a row, at most REOPEN_CAP_S. The first retry is quick (a worker that
# restarted is back in a few hundred ms); the cap keeps a worker that stays broken to one open a few
# seconds, whatever the request rate.
REOPEN_BASE_S = 0.1
REOPEN_CAP_S = 5.0
# How long an endpoint that answered UNIMPLEMENTED is served per request before one call probes
# GenerateMultiplexed again (a rolling upgrade reaches its workers within minutes).
FALLBACK_RECHECK_S = 60.0
# The longest the first write on a call waits for the worker's headers (see _write).
OPEN_ANSWER_WAIT_S = 1.0


def reopen_delay(failures: int) -> float:
    """Seconds before the next open after ``failures`` (>= 1) calls in a row failed at their open."""
    return min(REOPEN_BASE_S * 2.0 ** min(failures - 1, 32), REOPEN_CAP_S)


class MultiplexedUnsupportedError(Exception):
    """The request's worker does not implement GenerateMultiplexed (its call ended UNIMPLEMENTED at the
    open): nothing of the request reached the worker, so it is sent again as a Generate call."""


class MultiplexedRequest(PendingOutput):
    """One request on a MultiplexedConnection: the call and the stream the relay reads (``take`` and
    ``hold`` are PendingOutput's, as WorkerStream's are: one coalescing rule for both transports)."""

    def __init__(self, connection: MultiplexedConnection, tag: int) -> None:
        super().__init__()
        self._connection = connection
        self.tag = tag
        self._book: StreamBook | None = None
        # True once the worker will send nothing more for this request (its result or end came, or
        # it was cancelled): grpc.aio's ``done``.
        self._finished = False

    # -- as a call -------------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Stops the request: the worker aborts it (its KV pages return to the pool), and the relay
        reads CallCancelledError. False when it had ended already."""
        if self._finished:
            return False
        self._connection.cancel(self.tag)
        self.end(CallCancelledError())
        return True

    def done(self) -> bool:
        return self._finished

    # -- as the relay's stream -------------------------------------------------------------------

    def stream(self, book: StreamBook) -> MultiplexedRequest:
        """This request as the relay's stream; each message from the worker refreshes
        ``book.last_activity`` (what LiveStreams judges silence by)."""
        self._book = book
        return self

    @property
    def complete(self) -> bool:
        """True once everything the worker will send for this request is here."""
        return self._finished

    def close(self) -> None:
        """The relay is done reading; a request still running is stopped by ``cancel`` (the relay's
        caller does that, as it cancels a per-request call)."""

    # -- from the connection ---------------------------------------------------------------------

    def deliver(self, event: worker_pb2.MultiplexedEvent, now: float) -> bool:
        """Takes one event from the worker; True when it ended the request."""
        if self._book is not None:
            self._book.last_activity = now
        if event.HasField("delta"):
            message = Response()
            message.delta.CopyFrom(event.delta)  # ~0.8 us; Response(delta=...) took ~1.2
            self._deltas.append(message)
            if not self._holding:
                self._wake_taker()
            return False
        self._finished = True
        if event.HasField("result"):
            self._result = Response(result=event.result)
        else:
            self._end = _worker_error(event.error)
        self._wake_taker()
        return True

    def end(self, error: BaseException) -> None:
        """Ends the request with ``error`` (read after what came before it)."""
        if self._finished:
            return
        self._finished = True
        self._end = error
        self._wake_taker()


class MultiplexedConnection:
    """One worker endpoint's GenerateMultiplexed call, opened with the first request (and again after
    it broke), closed when the endpoint leaves the pool."""

    def __init__(
        self, channel: grpc.aio.Channel, worker_id: str, on_fallback: Callable[[], None] | None = None
    ) -> None:
        """``on_fallback()`` runs each time the worker answers UNIMPLEMENTED at an open (a metric)."""
        self._worker_id = worker_id
        self._on_fallback = on_fallback
        self._method = channel.stream_stream(
            _GENERATE_MULTIPLEXED,
            request_serializer=worker_pb2.GenerateMultiplexedRequest.SerializeToString,
            response_deserializer=worker_pb2.GenerateMultiplexedResponse.FromString,
        )
        self._call: grpc.aio.StreamStreamCall | None = None
        self._requests: dict[int, MultiplexedRequest] = {}
        # Unique per connection, so also per call: a tag is never reused.
        self._tags = itertools.count(1)
        # What the writer sends next: starts and cancels queued while it was writing go out as one
        # (``_outgoing``, about ``_outgoing_bytes`` long), after any full messages in ``_queued``.
        self._outgoing = worker_pb2.GenerateMultiplexedRequest()
        self._outgoing_bytes = 0
        self._queued: collections.deque[worker_pb2.GenerateMultiplexedRequest] = collections.deque()
        self._send = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # Whether the worker sent anything on the current call: a call that ends without it failed
        # at its open. Calls in a row that did so, when the next may open, and why the last ended.
        self._answered = False
        self._failed_opens = 0
        self._reopen_at = 0.0
        self._open_failure = ""
        # Until when requests go as Generate calls (the worker answered UNIMPLEMENTED); warned once.
        self._unsupported_until = 0.0
        self._warned = False
        # Calls opened (what a test bounds by the reopen schedule).
        self.opens = 0

    def __len__(self) -> int:
        """Requests open on the call."""
        return len(self._requests)

    def serves_multiplexed(self) -> bool:
        """False while the worker is known not to implement GenerateMultiplexed: send Generate calls."""
        return time.monotonic() >= self._unsupported_until

    def start(
        self, request: worker_pb2.GenerateRequest, signature: str, trace_context: dict[str, str]
    ) -> MultiplexedRequest:
        """Sends ``request`` on the call (opening it if none is open); returns its handle.

        Raises grpc.aio.UsageError when the connection or the channel is closed (the worker left
        rotation): nothing reached the worker. A start larger than a worker receives is ended at once
        with INVALID_ARGUMENT (scoped to the request), never sent. While the next open must wait (the
        last calls failed at their open), the handle is already ended UNAVAILABLE, with no call
        opened; while the worker is known not to serve GenerateMultiplexed, with
        MultiplexedUnsupportedError.
        """
        if self._closed:
            raise grpc.aio.UsageError(f"the connection to worker {self._worker_id} is closed")
        tag = next(self._tags)
        handle = MultiplexedRequest(self, tag)
        size = (
            request.ByteSize() + len(signature) + 64 + sum(len(k) + len(v) for k, v in trace_context.items())
        )
        if size > START_BYTES_LIMIT:
            message = (
                f"the request is about {size} bytes as sent to a worker, which receives messages of at "
                f"most {START_BYTES_LIMIT + 1024} bytes; send a shorter prompt"
            )
            handle.end(_aio_error(grpc.StatusCode.INVALID_ARGUMENT, message, request_scoped=True))
            return handle
        if self._call is None:
            refusal = self._refusal()
            if refusal is not None:
                handle.end(refusal)
                return handle
            self._open()
        self._requests[tag] = handle
        if self._outgoing_bytes and self._outgoing_bytes + size > MESSAGE_BYTES:
            self._queued.append(self._outgoing)
            self._outgoing, self._outgoing_bytes = worker_pb2.GenerateMultiplexedRequest(), 0
        self._outgoing_bytes += size
        self._outgoing.starts.add(
            tag=tag, request=request, identity_signature=signature, trace_context=trace_context
        )
        self._send.set()
        return handle

    def cancel(self, tag: int) -> None:
        """Tells the worker to abort the request ``tag`` (nothing more is read for it)."""
        if self._requests.pop(tag, None) is not None and self._call is not None:
            self._outgoing.cancel_tags.append(tag)
            self._send.set()

    def close(self) -> None:
        """Ends the call; each open request reads CallCancelledError (the relay then reports the
        reason LiveStreams recorded when the endpoint left the pool)."""
        if self._closed:
            return
        self._closed = True
        self._break(CallCancelledError)

    def _refusal(self) -> BaseException | None:
        """Why no call may open now, as the request's end; None when one may."""
        now = time.monotonic()
        if now < self._unsupported_until:
            return MultiplexedUnsupportedError(f"worker {self._worker_id} does not serve GenerateMultiplexed")
        if now < self._reopen_at:
            message = (
                f"the multiplexed call to worker {self._worker_id} failed at its open "
                f"{self._failed_opens} time(s) in a row ({self._open_failure}); next open in "
                f"{self._reopen_at - now:.2f}s"
            )
            return _aio_error(grpc.StatusCode.UNAVAILABLE, message, request_scoped=False)
        return None

    def _open(self) -> None:
        call = self._call = self._method()  # UsageError on a closed channel
        self.opens += 1
        self._answered = False
        loop = asyncio.get_running_loop()
        writer, reader = loop.create_task(self._write(call)), loop.create_task(self._read(call))
        writer.add_done_callback(lambda done: self._task_ended(call, done, "writer"))
        reader.add_done_callback(lambda done: self._task_ended(call, done, "reader"))
        self._tasks = [writer, reader]

    def _task_ended(self, call: grpc.aio.StreamStreamCall, task: asyncio.Task[None], role: str) -> None:
        """A reader or writer that died of an unexpected exception breaks its call: otherwise the call
        would look open, with no request on it ever ending and new ones joining it."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("the %s of the multiplexed call to worker %s failed", role, self._worker_id, exc_info=error)
        self._lost(call, grpc.StatusCode.INTERNAL, f"the router's {role} of the call failed ({error!r})")

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        # No write before the worker answered the open: grpc.aio replaces the status of a call that
        # ended while a write was in flight with a local INTERNAL ("Internal error from Core",
        # grpc/grpc#36066), so an old worker's UNIMPLEMENTED would read as a broken worker. Workers
        # send their headers at once; one that does not (or a proxy that holds them) gets the first
        # write after OPEN_ANSWER_WAIT_S.
        try:
            await asyncio.wait_for(call.initial_metadata(), OPEN_ANSWER_WAIT_S)
        except TimeoutError:
            pass
        except grpc.aio.AioRpcError:
            return  # the call ended: the reader reads why
        if call.done():
            return
        send = self._send
        while True:
            await send.wait()
            send.clear()
            while self._queued or self._outgoing.starts or self._outgoing.cancel_tags:
                if self._queued:
                    message = self._queued.popleft()
                else:
                    message, self._outgoing = self._outgoing, worker_pb2.GenerateMultiplexedRequest()
                    self._outgoing_bytes = 0
                try:
                    await call.write(message)
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    return  # the call ended: the reader reads why and ends its requests

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        requests = self._requests
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    self._lost(call, grpc.StatusCode.UNAVAILABLE, "the worker ended the call")
                    return
                if message is None:
                    # grpc.aio's read of bytes that do not parse (it logs the parse error): this reader
                    # serves every request on the call, so the call is broken, not this message skipped.
                    self._lost(
                        call, grpc.StatusCode.INTERNAL, "the worker sent a message that does not parse"
                    )
                    return
                now = time.monotonic()
                if not self._answered:
                    self._answered, self._failed_opens = True, 0
                for event in message.events:
                    request = requests.get(event.tag)
                    if request is None:
                        continue
                    try:
                        ended = request.deliver(event, now)
                    except Exception as error:  # this request's hand-over alone failed
                        self._relay_failed(request, error)
                        continue
                    if ended:
                        del requests[event.tag]
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # closed here
            self._lost(call, grpc.StatusCode.CANCELLED, "the call was cancelled")
        except grpc.aio.AioRpcError as error:
            self._lost(call, error.code(), error.details() or "")

    def _relay_failed(self, request: MultiplexedRequest, error: Exception) -> None:
        """Handing one event to ``request`` failed unexpectedly: that request ends INTERNAL (scoped to
        it, so the worker stays in rotation) and the worker aborts it; the call's others go on."""
        log.error("relaying request %d from worker %s failed", request.tag, self._worker_id, exc_info=error)
        self.cancel(request.tag)
        message = f"the router failed to relay this request's output ({error!r})"
        request.end(_aio_error(grpc.StatusCode.INTERNAL, message, request_scoped=True))

    def _lost(self, call: grpc.aio.StreamStreamCall, code: grpc.StatusCode, details: str) -> None:
        """The shared call broke: every request on it ends UNAVAILABLE (the relay retries one that
        had no token yet); the next request opens a new call."""
        if self._call is not call:
            return
        if not self._answered and code == grpc.StatusCode.UNIMPLEMENTED:
            self._fall_back(details)
            return
        log.warning("multiplexed call to worker %s ended (%s: %s)", self._worker_id, code.name, details)
        message = f"the multiplexed call to worker {self._worker_id} ended ({code.name}: {details})"
        if not self._answered:
            self._failed_opens += 1
            self._reopen_at = time.monotonic() + reopen_delay(self._failed_opens)
            self._open_failure = f"{code.name}: {details}"
            message = f"{message} at its open"
        self._break(lambda: _aio_error(grpc.StatusCode.UNAVAILABLE, message, request_scoped=False))

    def _fall_back(self, details: str) -> None:
        """The worker predates GenerateMultiplexed: Generate calls for a while, requests sent again."""
        self._unsupported_until = time.monotonic() + FALLBACK_RECHECK_S
        level = logging.INFO if self._warned else logging.WARNING
        log.log(
            level,
            "worker %s does not implement GenerateMultiplexed (UNIMPLEMENTED: %s); its requests go as "
            "Generate calls (forward.worker_transport falls back to per_request for it, and checks again "
            "in %.0fs)",
            self._worker_id, details, FALLBACK_RECHECK_S,
        )  # fmt: skip
        self._warned = True
        if self._on_fallback is not None:
            self._on_fallback()
        message = f"worker {self._worker_id} does not implement GenerateMultiplexed ({details})"
        self._break(lambda: MultiplexedUnsupportedError(message))

    def _break(self, end: Callable[[], BaseException]) -> None:
        """Ends the call and every request on it with a fresh ``end()`` each."""
        call, self._call = self._call, None
        requests, self._requests = self._requests, {}
        self._outgoing, self._outgoing_bytes = worker_pb2.GenerateMultiplexedRequest(), 0
        self._queued.clear()
        for request in requests.values():
            request.end(end())
        if call is not None:
            call.cancel()
        tasks, self._tasks = self._tasks, []
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()


def _worker_error(error: worker_pb2.MultiplexedError) -> grpc.aio.AioRpcError:
    status = _STATUS_BY_CODE.get(error.code, grpc.StatusCode.UNKNOWN)
    return _aio_error(status, error.message, error.request_scoped)


def _aio_error(code: grpc.StatusCode, details: str, request_scoped: bool) -> grpc.aio.AioRpcError:
    """The error a per-request Generate call ending this way raises (trailer included)."""
    trailer = grpc.aio.Metadata((FAILURE_SCOPE_KEY, REQUEST_SCOPE)) if request_scoped else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailer, details)
