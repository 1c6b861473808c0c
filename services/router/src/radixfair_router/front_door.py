"""One generation request through the router, whichever front door it came in by (gRPC or HTTP).

``RouterServicer.Generate`` and the HTTP API's routes both go through ``Generation``: the request
is authenticated by the one ApiKeyAuthenticator, validated by ``validate_off_loop`` (size bound,
then tokenizing off the event loop), checked against the served models, and handed to
``RequestRouter.generate``, where routing, fairness, the ledger, retries and the worker call live.
Around it ``Generation`` keeps the ``router.generate`` span and the request metrics (rejected by
reason, cancelled, duration by outcome), so a request counts the same whichever door it came in
by. A front door only reads its transport's input and maps errors to its own status codes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Tracer

from radixfair.auth import ApiKeyAuthenticator, Principal
from radixfair.errors import NotFoundError, RadixfairError
from radixfair.metrics import rejection_reason
from radixfair.tokenization import PromptEncoder
from radixfair.tracing import extract_context
from radixfair.v1 import router_pb2
from radixfair_router.prompt_encoding import validate_off_loop
from radixfair_router.request_router import RequestRouter
from radixfair_router.request_validation import ValidatedRequest
from radixfair_router.router_metrics import RouterMetrics
from radixfair_router.worker_registry import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchParts:
    """What every front door generates with: one instance of each, shared by gRPC and HTTP."""

    router: RequestRouter
    registry: WorkerRegistry
    authenticator: ApiKeyAuthenticator
    encoder: PromptEncoder
    model_name: str
    tracer: Tracer
    metrics: RouterMetrics


class Generation:
    """One request: ``authenticate`` and ``validate``, then ``messages`` streams the router's output.

    ``front_door`` ("http"; empty for gRPC, the router's own protocol) is recorded on the span. A
    request refused before ``messages`` ends with ``fail`` (or ``abandon``). ``messages`` must be
    consumed to its end or closed (``aclose``): closing it before the result cancels the worker's
    call and settles the booking, as a gRPC caller's cancel does.
    """

    def __init__(
        self,
        parts: DispatchParts,
        operation: str,
        headers: Iterable[tuple[str, str | bytes]],
        front_door: str = "",
    ) -> None:
        self._parts = parts
        self._started = time.monotonic()
        self._headers = list(headers)
        self._span = parts.tracer.start_span(
            "router.generate", context=extract_context(self._headers), kind=trace.SpanKind.SERVER
        )
        self._span.set_attribute("gen_ai.operation.name", operation)
        self._span.set_attribute("gen_ai.system", "radixfair")
        if front_door:
            self._span.set_attribute("radixfair.front_door", front_door)
        self._ended = False
        self._described = False
        self.validated: ValidatedRequest | None = None

    def describe(self, request: router_pb2.RouterServiceGenerateRequest) -> None:
        """Records what was asked for on the span (once; ``validate`` does it if not done before)."""
        if self._described:
            return
        self._described = True
        span = self._span
        span.set_attribute("gen_ai.request.model", request.model or self._parts.model_name)
        if request.sampling.HasField("max_tokens"):
            span.set_attribute("gen_ai.request.max_tokens", request.sampling.max_tokens)
        span.set_attribute("gen_ai.request.temperature", request.sampling.temperature)

    def authenticate(self) -> Principal:
        principal = self._parts.authenticator.authenticate_metadata(self._headers)
        self._span.set_attribute("radixfair.client_id", principal.client_id)
        return principal

    async def validate(self, request: router_pb2.RouterServiceGenerateRequest) -> ValidatedRequest:
        parts, span = self._parts, self._span
        self.describe(request)
        validated = await validate_off_loop(
            request, parts.encoder, parts.model_name, parts.router.max_prompt_bytes
        )
        _check_model_served(parts.registry, validated.model)
        span.set_attribute("radixfair.request_id", validated.request_id)
        if validated.label:
            span.set_attribute("radixfair.request_label", validated.label)
        span.set_attribute("gen_ai.usage.input_tokens", len(validated.token_ids))
        self.validated = validated
        return validated

    async def messages(
        self, validated: ValidatedRequest, principal: Principal
    ) -> AsyncIterator[router_pb2.RouterServiceGenerateResponse]:
        # Until it ends otherwise, it ends because the caller went away (closed this iterator).
        outcome = "cancelled"
        try:
            # Closed with this iterator: the worker call is cancelled and booked when the caller goes.
            async with contextlib.aclosing(
                self._parts.router.generate(validated, principal, self._span)
            ) as out:
                async for message in out:
                    yield message
            outcome = "ok"
        except Exception as error:
            outcome = "error"
            if not isinstance(error, RadixfairError):  # a bug: seen in the log, answered INTERNAL/500
                log.exception("generation failed unexpectedly")
            self._record_failure(error)
            raise
        finally:
            self._end(outcome)

    def fail(self, error: BaseException) -> None:
        """Ends a request refused before it reached the router (bad key, bad body...)."""
        self._record_failure(error)
        self._end("error")

    def abandon(self) -> None:
        """Ends a request whose caller hung up before it reached the router."""
        self._end("cancelled")

    def _record_failure(self, error: BaseException) -> None:
        detail = str(error) if isinstance(error, RadixfairError) else repr(error)
        self._span.set_status(trace.Status(trace.StatusCode.ERROR, detail))
        self._parts.metrics.rejected.labels(rejection_reason(error)).inc()

    def _end(self, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._span.end()
        metrics = self._parts.metrics
        if outcome == "cancelled":
            metrics.cancelled.inc()
        metrics.request_duration.labels(outcome).observe(time.monotonic() - self._started)


def _check_model_served(registry: WorkerRegistry, model: str) -> None:
    """A model no known worker serves is answered at once (NOT_FOUND, 404), not after waiting."""
    served = registry.served_models()
    if model and served is not None and model not in served:
        raise NotFoundError(f"no worker serves model {model!r}; served here: {', '.join(sorted(served))}")
