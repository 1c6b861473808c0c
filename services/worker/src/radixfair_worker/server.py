"""gRPC adapter of the worker: validates, translates, and calls into the engine process."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Tracer

from radixfair.errors import FAILURE_SCOPE_KEY, REQUEST_SCOPE, RadixfairError, RequestFailedError
from radixfair.metrics import rejection_reason
from radixfair.tokenization import PromptEncoder
from radixfair.tracing import extract_context
from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from radixfair_engine.request import FinishReason, Request
from radixfair_worker.engine_client import EngineClient
from radixfair_worker.engine_protocol import PublishedState, RequestOutcome
from radixfair_worker.multiplexed_call import MultiplexedCall
from radixfair_worker.request_builder import build_request
from radixfair_worker.request_stream import RequestStream
from radixfair_worker.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
_FINISH = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: generation_pb2.FINISH_REASON_CANCELLED,
}

# Text prompts longer than this are tokenized on a thread, not on the event loop every stream shares.
OFF_LOOP_PROMPT_CHARS = 16384


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Validates and translates; the engine runs in its own process behind ``engine``."""

    def __init__(
        self,
        engine: EngineClient,
        encoder: PromptEncoder,
        worker_id: str,
        model_name: str,
        tracer: Tracer,
        metrics: WorkerMetrics,
        identity_secret: str = "",
    ) -> None:
        """``identity_secret``: GenerateMultiplexed checks each start's signature with it (Generate's
        calls are checked by CallerIdentityInterceptor); empty, every caller is trusted."""
        self._engine = engine
        self._identity_secret = identity_secret
        self._encoder = encoder
        self._worker_id = worker_id
        self._model_name = model_name
        self._tracer = tracer
        self._metrics = metrics
        # Set when the worker shuts down: load-report watches end then (status OK), so the server's
        # grace period waits only for generations; a watch never ends by itself and held it to the
        # whole grace on every stop (a compose `down` killed workers at Docker's 10 s for it).
        self._closing = asyncio.Event()
        self._multiplexed: set[MultiplexedCall] = set()

    def end_watches(self) -> None:
        """Ends every WatchLoadReport stream after its current report, and any opened later at once;
        GenerateMultiplexed calls take no new request and end once their open ones have."""
        self._closing.set()
        for call in self._multiplexed:
            call.shut_down()

    async def Generate(self, request, context: grpc.aio.ServicerContext):  # noqa: N802 (gRPC name)
        started = time.monotonic()
        # Until the call ends otherwise, it ends because the caller went away.
        outcome = "cancelled"
        # Not start_as_current_span: this generator is closed (GeneratorExit) in another context
        # when the caller hangs up, and detaching a context attached elsewhere logs an ERROR
        # traceback per cancelled stream. The span is passed explicitly instead.
        span = self.start_span(extract_context(context.invocation_metadata()))
        try:
            try:
                engine_request, stream = await self.submit(request, span)
            except RadixfairError as error:
                outcome = "error"
                await self._reject(context, error, span)
            try:
                async for message in self._stream(engine_request, stream, span, context):
                    yield message
            finally:
                # Runs also when the caller hangs up right after the result (the generator is
                # then closed at its last yield), so the trace is complete either way.
                if stream.outcome is not None:
                    outcome = "ok"
                elif not stream.ended:
                    self._engine.abort(stream.request_id)
                else:
                    outcome = "error"
        except Exception:
            outcome = "error"  # a status was sent (an abort) or the handler failed
            raise
        finally:
            self.request_ended(span, outcome, started)

    async def GenerateMultiplexed(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802
        # Headers at once, before any start arrives: the router waits for them before its first write
        # (multiplexed_worker_call: a write racing a server's early status loses that status).
        await context.send_initial_metadata(())
        call = MultiplexedCall(self, self._engine, self._identity_secret)
        if self._closing.is_set():
            call.shut_down()
        self._multiplexed.add(call)
        try:
            async for message in call.serve(request_iterator):
                yield message
        except DecodeError as error:
            # Bytes that do not parse reach the handler from the request stream (the
            # MalformedRequestInterceptor covers only single-request methods): answered as Generate
            # answers them, not as UNKNOWN with the parser's exception; serve aborted the open ones.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {error}")
        finally:
            self._multiplexed.discard(call)

    # -- one request's life, shared by Generate and GenerateMultiplexed -------------------------

    def start_span(self, parent: otel_context.Context) -> trace.Span:
        """The request's server span, under the caller's trace context ``parent``."""
        return self._tracer.start_span("worker.generate", context=parent, kind=trace.SpanKind.SERVER)

    async def submit(
        self, request: worker_pb2.GenerateRequest, span: trace.Span
    ) -> tuple[Request, RequestStream]:
        """Validates and translates ``request``, and submits it under a fresh worker-internal id.

        Raises RadixfairError (its gRPC code says why) for a request the worker refuses at once, and
        RequestFailedError (scoped to the request) when building it failed unexpectedly.
        """
        build = (request, self._encoder, self._model_name, self._engine.max_context_tokens)
        try:
            if _prompt_chars(request.prompt) > OFF_LOOP_PROMPT_CHARS:
                # The tokenizer releases the GIL: a long text is encoded while others stream.
                engine_request = await asyncio.to_thread(build_request, *build)
            else:
                engine_request = build_request(*build)
        except RadixfairError:
            raise
        except Exception as error:
            # Something in this request's own input broke the build in a way nobody planned for (a
            # chat template raising on its text): its failure alone, never UNKNOWN for the caller,
            # which would take the worker out of rotation for one request (issue 12).
            log.exception("building request %r failed unexpectedly", request.request_id[:200])
            why = f"the worker could not build this request ({type(error).__name__}); its log says more"
            raise RequestFailedError(why) from error
        # From here on the request is known by the worker's own id only.
        stream = self._engine.submit(engine_request)
        _set_request_attributes(span, engine_request, request.request_id, self._model_name)
        return engine_request, stream

    def rejected(self, error: RadixfairError, span: trace.Span) -> None:
        """Counts a request refused or failed with ``error`` (its status is the caller's to send)."""
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
        self._metrics.rejected.labels(rejection_reason(error)).inc()

    def finished(
        self, request: Request, outcome: RequestOutcome, span: trace.Span
    ) -> generation_pb2.GenerationResult:
        """Records a request that ran to its end; its result message."""
        self._record_finish(request, outcome)
        _record_outcome(self._tracer, span, request, outcome)
        return self._result(request, outcome)

    def request_ended(self, span: trace.Span, outcome: str, started: float) -> None:
        """Closes a request's span and metrics; ``outcome`` is "ok", "error" or "cancelled"."""
        span.end()
        if outcome == "cancelled":
            self._metrics.cancelled.inc()
        self._metrics.request_duration.labels(outcome).observe(time.monotonic() - started)

    async def _reject(
        self, context: grpc.aio.ServicerContext, error: RadixfairError, span: trace.Span
    ) -> None:
        """Ends the call with ``error``'s status: the one place Generate maps an error to a status."""
        self.rejected(error, span)
        scope = ((FAILURE_SCOPE_KEY, REQUEST_SCOPE),) if isinstance(error, RequestFailedError) else ()
        await context.abort(error.code, str(error), trailing_metadata=scope)

    async def _stream(self, request: Request, stream: RequestStream, span: trace.Span, context):
        while True:
            # Everything since the last take: several steps' tokens when this consumer lags.
            chunk = await stream.take()
            if chunk.token_ids:
                yield worker_pb2.GenerateResponse(
                    delta=generation_pb2.TokenDelta(token_ids=chunk.token_ids, text=chunk.text)
                )
            if isinstance(chunk.end, RadixfairError):
                await self._reject(context, chunk.end, span)
            if isinstance(chunk.end, RequestOutcome):
                yield worker_pb2.GenerateResponse(result=self.finished(request, chunk.end, span))
                return

    def _result(self, request: Request, outcome: RequestOutcome) -> generation_pb2.GenerationResult:
        end = outcome.finished_time or time.monotonic()
        first = outcome.first_token_time or end
        admitted = outcome.admitted_time or end
        return generation_pb2.GenerationResult(
            finish_reason=_FINISH.get(outcome.finish_reason, generation_pb2.FINISH_REASON_UNSPECIFIED),
            usage=generation_pb2.Usage(
                prompt_tokens=len(request.prompt_ids),
                cached_tokens=outcome.cached_tokens,
                completion_tokens=outcome.completion_tokens,
            ),
            timings=generation_pb2.Timings(
                queue_ms=(admitted - request.arrival_time) * 1e3,
                time_to_first_token_ms=(first - request.arrival_time) * 1e3,
                total_ms=(end - request.arrival_time) * 1e3,
                preemptions=outcome.preemptions,
            ),
            worker_id=self._worker_id,
            text=outcome.text,
        )

    def _record_finish(self, request: Request, outcome: RequestOutcome) -> None:
        client = request.client_id
        reason = outcome.finish_reason.value if outcome.finish_reason else "unknown"
        self._metrics.requests.labels(client, reason).inc()
        self._metrics.tokens.labels(client, "prompt").inc(len(request.prompt_ids))
        self._metrics.tokens.labels(client, "cached").inc(outcome.cached_tokens)
        self._metrics.tokens.labels(client, "completion").inc(outcome.completion_tokens)
        if outcome.admitted_time is not None:
            self._metrics.queue_time.observe(max(outcome.admitted_time - request.arrival_time, 0.0))
        if outcome.preemptions:
            self._metrics.preemptions.inc(outcome.preemptions)

    async def GetLoadReport(self, request, context):  # noqa: N802
        return worker_pb2.GetLoadReportResponse(report=await self._load_report(context))

    async def WatchLoadReport(self, request, context):  # noqa: N802
        if request.interval_ms < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "interval_ms must be >= 0")
        interval = (request.interval_ms or 500) / 1000
        while not self._closing.is_set():
            yield worker_pb2.WatchLoadReportResponse(report=await self._load_report(context))
            try:
                await asyncio.wait_for(self._closing.wait(), interval)
            except TimeoutError:
                pass

    async def _load_report(self, context: grpc.aio.ServicerContext) -> worker_pb2.LoadReport:
        try:
            state = await self._engine.current_state()
        except RadixfairError as error:
            await context.abort(error.code, str(error))
        return self.load_report(state)

    def load_report(self, state: PublishedState) -> worker_pb2.LoadReport:
        snapshot = state.snapshot
        self._metrics.queue_depth.set(snapshot.queue_length)
        self._metrics.running.set(snapshot.running_requests)
        self._metrics.free_pages.set(snapshot.free_pages)
        self._metrics.total_pages.set(snapshot.total_pages)
        self._metrics.cached_pages.set(snapshot.cached_pages)
        self._metrics.cache_hit_rate.set(snapshot.cache_hit_rate)
        self._metrics.engine_steps.update(snapshot.step_stats)
        self._metrics.client_service.set_each(state.client_service)
        self._metrics.deficit.set_each(state.deficits)
        self._metrics.virtual_counter.set_each(state.virtual_counters)
        self._metrics.refills.set(state.refills)
        return worker_pb2.LoadReport(
            worker_id=self._worker_id,
            model=self._model_name,
            queue_length=snapshot.queue_length,
            running_requests=snapshot.running_requests,
            running_tokens=snapshot.running_tokens,
            free_pages=snapshot.free_pages,
            total_pages=snapshot.total_pages,
            page_size=self._engine.page_size,
            cached_prefix_hashes=state.digest,
            cache_hit_rate=snapshot.cache_hit_rate,
            client_service=state.client_service,
        )


def _prompt_chars(prompt: generation_pb2.Prompt) -> int:
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        return len(prompt.text)
    if kind == "chat":
        return sum(len(m.content) for m in prompt.chat.messages)
    return 0


def _set_request_attributes(span: trace.Span, request: Request, caller_id: str, model_name: str) -> None:
    sampling = request.sampling
    span.set_attribute("gen_ai.operation.name", "text_completion")
    span.set_attribute("gen_ai.system", "radixfair")
    span.set_attribute("gen_ai.request.model", model_name)
    span.set_attribute("gen_ai.request.max_tokens", sampling.max_tokens)
    span.set_attribute("gen_ai.request.temperature", sampling.temperature)
    span.set_attribute("gen_ai.request.top_p", sampling.top_p)
    span.set_attribute("radixfair.client_id", request.client_id)
    # The caller's id is only a label (two callers may pick the same one); the worker's own id
    # is what every structure inside the worker is keyed by.
    span.set_attribute("radixfair.request_id", caller_id)
    span.set_attribute("radixfair.worker_request_id", request.request_id)


def _record_outcome(tracer: Tracer, span: trace.Span, request: Request, outcome: RequestOutcome) -> None:
    _record_phases(tracer, request, outcome, span)
    span.set_attribute("gen_ai.usage.input_tokens", len(request.prompt_ids))
    span.set_attribute("gen_ai.usage.output_tokens", outcome.completion_tokens)
    span.set_attribute("radixfair.cached_tokens", outcome.cached_tokens)
    finish = outcome.finish_reason.value if outcome.finish_reason else "unknown"
    span.set_attribute("gen_ai.response.finish_reasons", [finish])


def _record_phases(tracer: Tracer, request: Request, outcome: RequestOutcome, parent: trace.Span) -> None:
    """Queue, prefill and decode as child spans, from the engine's timestamps.

    The parent is passed explicitly: an async generator's steps may run in
    different contexts, so the "current span" is not reliable here.
    """
    parent_context = trace.set_span_in_context(parent)
    to_ns = _monotonic_to_epoch_ns()
    end = outcome.finished_time or time.monotonic()
    admitted = outcome.admitted_time or end
    first = outcome.first_token_time or end
    for name, start, stop in (
        ("worker.queue", request.arrival_time, admitted),
        ("worker.prefill", admitted, first),
        ("worker.decode", first, end),
    ):
        span = tracer.start_span(name, context=parent_context, start_time=to_ns(start))
        if name == "worker.prefill":
            span.set_attribute("radixfair.cached_tokens", outcome.cached_tokens)
            span.set_attribute(
                "radixfair.computed_prompt_tokens", len(request.prompt_ids) - outcome.cached_tokens
            )
        span.end(end_time=to_ns(stop))


def _monotonic_to_epoch_ns():
    offset = time.time() - time.monotonic()
    return lambda t: int((t + offset) * 1e9)
