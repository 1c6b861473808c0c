"""Routes one validated request to a worker, streams its output back, and books its service.

The route -> book -> settle rule is ``dispatch_core.DispatchCore``'s (the
simulator calls the same one); this module is its gRPC transport.
The flow of one request:
1. estimate each healthy worker's prefix match (CacheView) and load (registry);
2. the policy picks a worker and admits the request into the ledger (DispatchCore.decide);
3. forward to that worker with the trace context in the call metadata: a Generate call of its own,
   or (``forward.worker_transport: multiplexed``) a start on the one GenerateMultiplexed call this
   router keeps to that worker (multiplexed_worker_call.py; a worker that answers UNIMPLEMENTED gets
   Generate calls, and the requests on its failed call are sent again), read the same way (with
   ``forward.dispatch_ahead``, the call starts during step 2 on the worker the
   admission will most likely choose, and is cancelled if it chooses another);
4. stream deltas back as they come, each message relayed as parsed (the
   worker's and the router's response messages share one wire format, so
   the worker's reply is read as the router's type and passed on unchanged);
   the call is read in its own task (WorkerStream), so the messages that
   arrive while one waits for its booking or for the client go out as one,
   text byte-identical (with forward.stream_interval_s, at most one message
   per interval after the first token); output tokens are booked by LiveStreams: with a
   Redis ledger every token is booked before it is relayed (OutputCredit,
   in a batch with every other stream's; the first token is booked during
   the worker's prefill), so a killed router never under-charges; with the
   in-process ledger in batches on a timer;
   on the result, correct the input charge to the tokens the worker
   actually computed (DispatchCore.settlement).
A worker that fails before its first token is taken out of rotation (if it
is unreachable), its admission is refunded, and the request goes to another
worker. After tokens have flowed, the caller gets UNAVAILABLE: a stream
cannot be resumed elsewhere without repeating text. Every wait is bounded:
LiveStreams stops a stream that goes silent on a worker that left rotation
(retried, if no token flowed) or for longer than the idle limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from radixfair.auth import Principal
from radixfair.caller_identity import IDENTITY_SIGNATURE_KEY, identity_signature
from radixfair.errors import (
    FAILURE_SCOPE_KEY,
    REQUEST_SCOPE,
    NoWorkerAvailableError,
    RadixfairError,
    WorkerFailedError,
)
from radixfair.tracing import inject_metadata
from radixfair.v1 import generation_pb2, router_pb2, worker_pb2
from radixfair_router.admission_gate import VtcAdmissionGate
from radixfair_router.cache_view import CacheView
from radixfair_router.config import RouterConfig
from radixfair_router.dispatch_core import DispatchCore
from radixfair_router.ledger import Ledger
from radixfair_router.ledger_state import Charge
from radixfair_router.live_streams import LiveStreamLimits, LiveStreams, StreamBook
from radixfair_router.multiplexed_worker_call import (
    MultiplexedConnection,
    MultiplexedRequest,
    MultiplexedUnsupportedError,
)
from radixfair_router.output_credit import OutputCredit
from radixfair_router.policies import RoutingDecision, RoutingPolicy
from radixfair_router.request_validation import ValidatedRequest
from radixfair_router.router_metrics import RouterMetrics
from radixfair_router.worker_registry import WorkerEndpoint, WorkerRegistry
from radixfair_router.worker_stream import CallCancelledError, StreamEndedError, WorkerStream

log = logging.getLogger(__name__)

# Worker statuses that say "not this worker, not now": the request may go elsewhere.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
# Of those, the ones that mean the worker itself is in trouble.
_WORKER_BROKEN = _RETRYABLE - {grpc.StatusCode.RESOURCE_EXHAUSTED}


def _request_scoped(error: grpc.aio.AioRpcError) -> bool:
    """True when the worker says the failure is the request's own (see radixfair.errors.FAILURE_SCOPE_KEY)."""
    return any(
        key == FAILURE_SCOPE_KEY and value == REQUEST_SCOPE for key, value in error.trailing_metadata() or ()
    )


class PassThroughError(RadixfairError):
    """A worker's verdict on the request itself (e.g. INVALID_ARGUMENT), returned to the caller as is."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _RetryableError(Exception):
    code: grpc.StatusCode
    message: str
    worker_broken: bool
    # The worker does not serve GenerateMultiplexed: sent again (as a Generate call, to any worker,
    # this one included), as no attempt; at most once per worker per request.
    resend: bool = False


# The worker's Generate, read as the router's response type: the two messages share one wire
# format (tests/router/test_stream_relay.py holds them equal), so a reply is relayed as parsed.
_WORKER_GENERATE = "/radixfair.v1.WorkerService/Generate"
_RelayCall = Callable[..., grpc.aio.UnaryStreamCall]


# A request under way on a worker: its own Generate call, or its share of the endpoint's
# GenerateMultiplexed call (forward.worker_transport); both offer cancel() and done().
_WorkerCall = grpc.aio.UnaryStreamCall | MultiplexedRequest


@dataclass(frozen=True)
class _StartedCall:
    """A worker call under way, and the span that covers it."""

    endpoint: WorkerEndpoint
    span: Span
    call: _WorkerCall

    def abandon(self, why: str) -> None:
        """Stops a call dispatched ahead that will not be relayed (the admission chose another worker,
        or the request failed or its caller left before the admission)."""
        self.call.cancel()
        self.span.set_attribute("radixfair.abandoned", why)
        self.span.end()


class RequestRouter:
    def __init__(
        self,
        config: RouterConfig,
        registry: WorkerRegistry,
        cache_view: CacheView,
        policy: RoutingPolicy,
        ledger: Ledger,
        tracer: Tracer,
        metrics: RouterMetrics,
    ) -> None:
        self._config = config
        self._registry = registry
        self._cache_view = cache_view
        self._policy = policy
        self._ledger = ledger
        self._tracer = tracer
        self._metrics = metrics
        self._settling: set[asyncio.Task[None]] = set()
        limits = LiveStreamLimits(
            charge_interval_s=config.policy.output_charge_interval_s,
            idle_timeout_s=config.forward.stream_idle_timeout_s,
            unhealthy_silence_s=config.unhealthy_stream_silence_s,
            output_token_weight=config.costs.output_token_weight,
            write_ahead=ledger.outlives_router,
        )
        self._live = LiveStreams(ledger, limits, lambda client, service: self._charged(client, service))
        registry.add_closing_listener(self._live.worker_closing)
        self._relay_calls: dict[grpc.aio.Channel, _RelayCall] = {}
        # forward.worker_transport "multiplexed": each endpoint's one call, closed when it leaves the
        # pool (after LiveStreams heard of it, so its streams report why).
        self._multiplexed = config.forward.worker_transport == "multiplexed"
        self._connections: dict[grpc.aio.Channel, MultiplexedConnection] = {}
        registry.add_closing_listener(self._close_connection)
        self.core = DispatchCore(policy, cache_view, ledger, config.costs, self._dispatched)
        metrics.degraded_transitions.set_function(lambda: ledger.degraded_transitions)
        self._gate: VtcAdmissionGate | None = policy.admission_gate(lambda: len(registry.healthy()))
        if self._gate is not None:
            metrics.queue_depth_router.set_function(lambda: self._gate.waiting if self._gate else 0)

    @property
    def policy_name(self) -> str:
        return self._policy.name

    @property
    def max_prompt_bytes(self) -> int:
        return self._config.forward.max_prompt_bytes

    def generate(
        self, request: ValidatedRequest, principal: Principal, parent: Span
    ) -> AsyncIterator[router_pb2.RouterServiceGenerateResponse]:
        """The request's messages. Without an admission gate, ``_generate`` itself: every message
        passes through each generator between the worker and the client, so none is added for nothing."""
        arrival = time.monotonic()
        if self._gate is None:
            return self._generate(request, principal, parent, arrival)
        return self._gated(request, principal, parent, arrival)

    async def _gated(
        self, request: ValidatedRequest, principal: Principal, parent: Span, arrival: float
    ) -> AsyncIterator[router_pb2.RouterServiceGenerateResponse]:
        assert self._gate is not None
        span = self._tracer.start_span("router.queue", context=trace.set_span_in_context(parent))
        try:
            async with self._gate.slot(principal.client_id):
                span.end()
                async for message in self._generate(request, principal, parent, arrival):
                    yield message
        finally:
            if span.is_recording():  # the caller left while waiting in the gate
                span.end()

    async def _generate(
        self, request: ValidatedRequest, principal: Principal, parent: Span, arrival: float
    ) -> AsyncIterator[router_pb2.RouterServiceGenerateResponse]:
        excluded: set[str] = set()
        resent: set[str] = set()
        last_failure: _RetryableError | None = None
        attempt = 0
        while attempt < self._config.forward.max_attempts:
            endpoint, decision, started = await self._route(
                request, principal, parent, excluded, last_failure
            )
            if attempt:
                self._metrics.retries.inc()
            book = StreamBook(principal.client_id, principal.weight, endpoint, len(request.token_ids))
            try:
                async for message in self._forward(
                    endpoint, decision, request, principal, parent, book, arrival, started
                ):
                    yield message
                self._metrics.requests.labels(principal.client_id, "ok").inc()
                return
            except _RetryableError as failure:
                if failure.resend and endpoint.worker_id not in resent:
                    # Nothing reached the worker and it still serves Generate: not the worker's failure.
                    resent.add(endpoint.worker_id)
                    continue
                attempt += 1
                last_failure = failure
                excluded.add(endpoint.worker_id)
                if failure.worker_broken:
                    self._registry.mark_failed(endpoint.worker_id, f"{failure.code.name}: {failure.message}")
                log.warning(
                    "request %s: worker %s failed before the first token (%s: %s); trying another",
                    request.request_id, endpoint.worker_id, failure.code.name, failure.message,
                )  # fmt: skip
        self._metrics.requests.labels(principal.client_id, "failed").inc()
        raise _exhausted(self._config.forward.max_attempts, last_failure)

    async def _route(
        self,
        request: ValidatedRequest,
        principal: Principal,
        parent: Span,
        excluded: set[str],
        last_failure: _RetryableError | None,
    ) -> tuple[WorkerEndpoint, RoutingDecision, _StartedCall | None]:
        healthy = await self._registry.wait_for_healthy(request.model, self._config.forward.wait_for_worker_s)
        workers = [w for w in healthy if w.worker_id not in excluded]
        if not workers:
            if last_failure is not None:
                raise _exhausted(len(excluded), last_failure)
            model = f" for model {request.model!r}" if request.model else ""
            raise NoWorkerAvailableError(f"no healthy worker{model} is available; try again shortly")
        decision, started = await self._decide(request, principal, parent, workers)
        endpoint = next(w for w in workers if w.worker_id == decision.worker_id)
        self._metrics.decisions.labels(decision.policy, decision.reason, decision.worker_id).inc()
        if decision.refills:
            self._metrics.refills.labels(principal.client_id).inc(decision.refills)
        self._metrics.client_service.labels(principal.client_id).inc(max(decision.charged, 0.0))
        return endpoint, decision, started

    async def _decide(
        self, request: ValidatedRequest, principal: Principal, parent: Span, workers: list[WorkerEndpoint]
    ) -> tuple[RoutingDecision, _StartedCall | None]:
        """DispatchCore's decision (one at a time per router; the span includes waiting for its turn),
        and the worker call already started on the decided worker, if any.

        With ``forward.dispatch_ahead`` the call starts on the worker the admission will most likely
        choose (admission_forecast.py) while the admission's Redis round trip runs. Nothing of it is
        relayed before the decision; a call on a worker the admission did not choose is cancelled.
        """
        span = self._tracer.start_span("router.route", context=trace.set_span_in_context(parent))
        loads = [(w.worker_id, w.load) for w in workers]
        early: list[_StartedCall] = []
        # Set when the caller leaves (or the decision fails) before the admission called ahead: the
        # decision runs on in its own task (waiting for its turn first), and must not start a call then.
        left = False

        def dispatch_ahead(worker_id: str) -> None:
            endpoint = next((w for w in workers if w.worker_id == worker_id), None)
            if endpoint is None or left:
                return
            try:
                early.append(self._start_call(endpoint, request, principal, parent))
            except grpc.aio.UsageError:
                pass  # its channel just closed: the decision's own call finds out

        ahead = dispatch_ahead if self._config.forward.dispatch_ahead else None
        deciding = asyncio.ensure_future(
            self.core.decide(principal.client_id, principal.weight, request.token_ids, loads, ahead=ahead)
        )
        try:
            # Shielded: a caller hanging up during the admission (a Redis round trip) must not leave
            # it booked and in flight with nobody to settle it; the decision finishes, then is undone.
            decision = await asyncio.shield(deciding)
            _set_decision_attributes(span, decision, len(request.token_ids))
        except BaseException as error:
            left = True
            for started in early:
                started.abandon("the request failed or left before its admission")
            if isinstance(error, asyncio.CancelledError):
                deciding.add_done_callback(lambda done: self._undo_abandoned(done, request, principal))
            raise
        finally:
            span.end()
        started = early[0] if early else None
        if started is not None:
            hit = started.endpoint.worker_id == decision.worker_id
            self._metrics.dispatch_ahead.labels("hit" if hit else "miss").inc()
            if not hit:
                started.abandon(f"the admission chose worker {decision.worker_id}")
                started = None
        return decision, started

    def _undo_abandoned(
        self, done: asyncio.Future[RoutingDecision], request: ValidatedRequest, principal: Principal
    ) -> None:
        """The caller left while its request was being decided: nobody was served, so it is refunded."""
        if done.cancelled() or done.exception() is not None:
            return
        decision = done.result()
        charge = self.core.settlement(
            decision, principal.client_id, principal.weight, len(request.token_ids), served=False
        )
        task = asyncio.get_running_loop().create_task(self._book_refund(charge, request.request_id))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _book_refund(self, charge: Charge, request_id: str) -> None:
        try:
            await self.core.book(charge)
        except Exception:  # a booking bug must be seen, but must not take the router down
            log.exception("could not refund the admission of abandoned request %s", request_id)

    def _dispatched(self, worker_id: str) -> None:
        endpoint = self._registry.get(worker_id)
        if endpoint is not None:
            endpoint.dispatched_since_report += 1

    async def _forward(
        self,
        endpoint: WorkerEndpoint,
        decision: RoutingDecision,
        request: ValidatedRequest,
        principal: Principal,
        parent: Span,
        book: StreamBook,
        arrival: float,
        started: _StartedCall | None = None,
    ) -> AsyncIterator[router_pb2.RouterServiceGenerateResponse]:
        if started is None:
            try:
                started = self._start_call(endpoint, request, principal, parent)
            except grpc.aio.UsageError as error:
                # The worker left rotation (its channel closed) between the decision and here: nothing
                # reached it, so the admission is settled as a retry and the request goes elsewhere.
                self._settle_later(decision, request, principal, book, "retry")
                raise _RetryableError(
                    grpc.StatusCode.UNAVAILABLE, f"worker {endpoint.worker_id} left rotation: {error}", False
                ) from error
        span, call = started.span, started.call
        book.call = call
        self._live.open(book)
        credit = self._output_credit(book, request)
        if self._registry.get(endpoint.worker_id) is not endpoint:
            # It left the pool after the decision, before this stream was open to hear of it: its
            # channel is closing and will cancel the call.
            self._live.worker_closing(endpoint, "removed while the request was being forwarded")
        endpoint.inflight += 1
        self._metrics.inflight.labels(endpoint.worker_id).set(endpoint.inflight)
        outcome = "incomplete"
        try:
            async for message in self._relay(call, book, arrival, credit):
                yield message
            outcome = "ok"
        except _RetryableError as failure:
            outcome = "retry"
            span.set_status(trace.Status(trace.StatusCode.ERROR, failure.message))
            raise
        except RadixfairError as error:
            outcome = "error"
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
            raise
        finally:
            self._live.close(book)
            if not call.done():
                call.cancel()  # the caller went away or the stream failed: stop the worker's work
            endpoint.inflight -= 1
            self._metrics.inflight.labels(endpoint.worker_id).set(endpoint.inflight)
            _set_usage_attributes(span, book)
            span.end()
            # Settled in its own task: a cancelled caller must not cancel the booking.
            self._settle_later(decision, request, principal, book, outcome)

    def _start_call(
        self, endpoint: WorkerEndpoint, request: ValidatedRequest, principal: Principal, parent: Span
    ) -> _StartedCall:
        """The worker's Generate for this request, started, under its forward span.

        Raises grpc.aio.UsageError when the endpoint's channel is closed (the worker left rotation).
        """
        span = self._tracer.start_span(
            "router.forward", context=trace.set_span_in_context(parent), kind=trace.SpanKind.CLIENT
        )
        span.set_attribute("server.address", endpoint.address)
        span.set_attribute("radixfair.worker_id", endpoint.worker_id)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            metadata = inject_metadata([])
        finally:
            otel_context.detach(token)
        secret = self._config.forward.identity_secret
        # The worker serves only the identity this router vouches for.
        signature = (
            identity_signature(secret, principal.client_id, principal.weight, request.request_id)
            if secret
            else ""
        )
        call: _WorkerCall
        try:
            # A worker without GenerateMultiplexed (one not yet upgraded) is served per request.
            connection = self._connection(endpoint) if self._multiplexed else None
            if connection is not None and connection.serves_multiplexed():
                call = connection.start(_worker_request(request, principal), signature, dict(metadata))
            else:
                if signature:
                    metadata.append((IDENTITY_SIGNATURE_KEY, signature))
                call = self._relay_call(endpoint)(_worker_request(request, principal), metadata=metadata)
        except grpc.aio.UsageError:
            span.end()
            raise
        return _StartedCall(endpoint, span, call)

    def _connection(self, endpoint: WorkerEndpoint) -> MultiplexedConnection:
        """The endpoint's multiplexed connection (its call opens with its first request).

        Raises grpc.aio.UsageError when the endpoint has left the pool: its close listener has run,
        so a connection made now would be kept for good (one entry per request that raced the removal).
        """
        connection = self._connections.get(endpoint.channel)
        if connection is None:
            if self._registry.get(endpoint.worker_id) is not endpoint:
                raise grpc.aio.UsageError(f"worker {endpoint.worker_id} has left the pool")
            fallbacks = self._metrics.transport_fallbacks.labels(endpoint.worker_id)
            connection = self._connections[endpoint.channel] = MultiplexedConnection(
                endpoint.channel, endpoint.worker_id, fallbacks.inc
            )
        return connection

    def _close_connection(self, endpoint: WorkerEndpoint, why: str) -> None:
        connection = self._connections.pop(endpoint.channel, None)
        if connection is not None:
            connection.close()

    def _output_credit(self, book: StreamBook, request: ValidatedRequest) -> OutputCredit | None:
        """With a ledger that outlives the router, the stream's booked-ahead output (None: the
        in-process ledger books on a timer). Its first booking starts now, during the worker's prefill."""
        if not self._live.write_ahead:
            return None
        sampling = request.sampling
        limit = sampling.max_tokens if sampling.HasField("max_tokens") else None
        credit = OutputCredit(self._live, book, self._config.policy.output_book_ahead_tokens, limit)
        credit.start()
        return credit

    async def _relay(
        self, call: _WorkerCall, book: StreamBook, arrival: float, credit: OutputCredit | None
    ) -> AsyncIterator[router_pb2.RouterServiceGenerateResponse]:
        """The per-message path: what the worker sent since the last relay, booked, then passed on.

        The worker's call is read in its own task (WorkerStream), or by its multiplexed connection's
        (MultiplexedRequest, the same interface): while a message waits for its booking or for the
        client, later ones gather, and go out as one message with one booking.
        """
        client = self._metrics.client_labels.label(book.client_id)
        ttft, inter_token = self._metrics.ttft.labels(client), self._metrics.inter_token.labels(client)
        stream = call.stream(book) if isinstance(call, MultiplexedRequest) else WorkerStream(call, book)
        interval = self._config.forward.stream_interval_s
        try:
            while True:
                try:
                    if interval and book.last_token_at is not None:
                        # One message per interval: what comes meanwhile goes out with the next.
                        await stream.hold(book.last_token_at + interval - time.monotonic())
                    delta, result = await stream.take()
                except MultiplexedUnsupportedError as error:
                    # The call ended at its open, so nothing of this request was streamed: send it again.
                    raise _RetryableError(grpc.StatusCode.UNAVAILABLE, str(error), False, True) from error
                except CallCancelledError:
                    # LiveStreams (or the worker leaving the pool) cancelled the call: not the caller.
                    self._fail(
                        book, *(book.stopped or (grpc.StatusCode.UNAVAILABLE, "worker call cancelled"))
                    )
                except StreamEndedError:
                    self._fail(
                        book,
                        *(book.stopped or (grpc.StatusCode.UNAVAILABLE, "stream ended without a result")),
                    )
                except grpc.aio.AioRpcError as error:
                    if book.stopped is not None:
                        self._fail(book, *book.stopped)
                    if error.code() in _RETRYABLE and not _request_scoped(error):
                        self._fail(book, error.code(), error.details() or "")
                    raise PassThroughError(error.code(), error.details() or error.code().name) from error
                if delta is not None:
                    count = len(delta.delta.token_ids)
                    if count:
                        now = time.monotonic()
                        if book.first_token_at is None:
                            book.first_token_at = now
                            ttft.observe(now - arrival)
                        else:
                            inter_token.observe(now - book.last_token_at)  # type: ignore[operator]
                        book.last_token_at = now
                        if credit is None:
                            book.uncharged_tokens += count
                            book.tokens_sent += count
                        else:  # booked before the client can see it (a router kill loses none)
                            if not credit.covers(count):
                                await credit.wait_for(count)
                            credit.relayed(count)
                    yield delta
                if result is not None:
                    # The caller's usage is what this router forwarded and relayed, as the ledger books
                    # it; only the cache credit is the worker's, clamped to the prompt (issue 12, point 2).
                    usage = result.result.usage
                    usage.cached_tokens = min(max(usage.cached_tokens, 0), book.prompt_tokens)
                    usage.prompt_tokens = book.prompt_tokens
                    usage.completion_tokens = book.tokens_sent
                    book.result = result.result
                    yield result
                    return
        finally:
            stream.close()

    def _fail(self, book: StreamBook, code: grpc.StatusCode, message: str) -> None:
        if book.tokens_sent == 0 and book.result is None:
            raise _RetryableError(code, message, worker_broken=code in _WORKER_BROKEN)
        raise WorkerFailedError(
            f"worker {book.endpoint.worker_id} failed after {book.tokens_sent} token(s) were streamed "
            f"({code.name}: {message}); the stream cannot be resumed, retry the request"
        )

    def _relay_call(self, endpoint: WorkerEndpoint) -> _RelayCall:
        """The worker's Generate on this endpoint's channel, replying in the router's message type."""
        call = self._relay_calls.get(endpoint.channel)
        if call is None:
            if len(self._relay_calls) > 4 * len(self._registry.all()) + 16:
                self._relay_calls.clear()  # channels of workers long gone
            call = self._relay_calls[endpoint.channel] = endpoint.channel.unary_stream(
                _WORKER_GENERATE,
                request_serializer=worker_pb2.GenerateRequest.SerializeToString,
                response_deserializer=router_pb2.RouterServiceGenerateResponse.FromString,
            )
        return call

    def _charged(self, client_id: str, service: float) -> None:
        self._metrics.client_service.labels(client_id).inc(service)

    def _settle_later(
        self,
        decision: RoutingDecision,
        request: ValidatedRequest,
        principal: Principal,
        book: StreamBook,
        outcome: str,
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._settle(decision, request, principal, book, outcome)
        )
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(
        self,
        decision: RoutingDecision,
        request: ValidatedRequest,
        principal: Principal,
        book: StreamBook,
        outcome: str,
    ) -> None:
        """Final booking of one forwarded stream: remaining output, input correction, tokens."""
        client = principal.client_id
        served = not (outcome == "retry" or _rejected_before_output(outcome, book))
        prompt = len(request.token_ids)
        # Negative when output was booked ahead (OutputCredit) and never relayed.
        completion = book.uncharged_tokens - book.unrelayed_tokens
        charge = self.core.settlement(
            decision,
            client,
            principal.weight,
            prompt,
            served=served,
            completion_tokens=completion,
            cached_tokens=book.result.usage.cached_tokens if book.result is not None else None,
        )
        if not served:
            if outcome == "error":
                self._metrics.requests.labels(client, "failed").inc()
        else:
            self._metrics.tokens.labels(client, "prompt").inc(prompt)
            self._metrics.tokens.labels(client, "cached").inc(charge.cached_tokens)
            self._metrics.tokens.labels(client, "completion").inc(book.tokens_sent)
            if outcome != "ok":
                self._metrics.requests.labels(
                    client, "cancelled" if outcome == "incomplete" else "failed"
                ).inc()
        book.uncharged_tokens = book.unrelayed_tokens = 0
        try:
            await self.core.book(charge)
        except Exception:  # a booking bug must be seen, but must not take the router down
            log.exception("could not book the service of request %s", request.request_id)
        self._metrics.client_service.labels(client).inc(max(charge.service, 0.0))

    async def drain(self) -> None:
        """Books batched output and waits for pending bookings (shutdown, tests)."""
        await self._live.drain()
        if self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)


def _rejected_before_output(outcome: str, book: StreamBook) -> bool:
    """The worker answered with an error before any token or result flowed: it served nothing."""
    return outcome == "error" and book.tokens_sent == 0 and book.result is None


def _worker_request(request: ValidatedRequest, principal: Principal) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=request.request_id,
        client_id=principal.client_id,
        client_weight=principal.weight,
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=request.token_ids)),
        sampling=request.sampling,
        model=request.model,
    )


def _exhausted(attempts: int, failure: _RetryableError | None) -> RadixfairError:
    last = f" (last: {failure.code.name}: {failure.message})" if failure else ""
    if failure is not None and failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PassThroughError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"every worker tried ({attempts}) is at capacity{last}"
        )
    return NoWorkerAvailableError(f"no worker could serve the request after {attempts} attempt(s){last}")


def _set_decision_attributes(span: Span, decision: RoutingDecision, prompt_tokens: int) -> None:
    span.set_attribute("radixfair.routing.policy", decision.policy)
    span.set_attribute("radixfair.routing.reason", decision.reason)
    span.set_attribute("radixfair.routing.worker_id", decision.worker_id)
    span.set_attribute("radixfair.routing.prefix_match_tokens", decision.prefix_match)
    span.set_attribute("radixfair.routing.prompt_tokens", prompt_tokens)
    span.set_attribute("radixfair.routing.deficit", decision.deficit)
    span.set_attribute("radixfair.routing.refills", decision.refills)
    span.set_attribute("radixfair.routing.charged", decision.charged)


def _set_usage_attributes(span: Span, book: StreamBook) -> None:
    span.set_attribute("gen_ai.usage.output_tokens", book.tokens_sent)
    if book.result is not None:
        span.set_attribute("gen_ai.usage.input_tokens", book.result.usage.prompt_tokens)
        span.set_attribute("radixfair.cached_tokens", book.result.usage.cached_tokens)
        span.set_attribute("radixfair.worker_id", book.result.worker_id)
