"""gRPC adapter of the router: authenticates, validates, and calls into RequestRouter.

Three identities call it: tenants (API keys) generate and read their own
state; operators (API keys marked operator) also read every tenant's state
and the workers' addresses; workers register with the registration token,
never with a tenant's key. No routing logic lives here. Every failure
leaves as a status with a message through the one mapping in
radixfair.errors; anything unexpected is logged and answered INTERNAL, and
the router keeps serving.
"""

from __future__ import annotations

import logging
import time

import grpc
from opentelemetry import trace
from opentelemetry.trace import Tracer

from radixfair.auth import ApiKeyAuthenticator, Principal, RegistrationAuthenticator
from radixfair.errors import InvalidRequestError, NotFoundError, RadixfairError
from radixfair.metrics import rejection_reason
from radixfair.tokenization import PromptEncoder
from radixfair.tracing import extract_context
from radixfair.v1 import router_pb2, router_pb2_grpc
from radixfair_router.ledger import Ledger
from radixfair_router.prompt_encoding import validate_off_loop
from radixfair_router.request_router import RequestRouter
from radixfair_router.router_metrics import RouterMetrics
from radixfair_router.worker_registry import WorkerEndpoint, WorkerRegistry

log = logging.getLogger(__name__)

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        router: RequestRouter,
        registry: WorkerRegistry,
        ledger: Ledger,
        authenticator: ApiKeyAuthenticator,
        encoder: PromptEncoder,
        model_name: str,
        tracer: Tracer,
        metrics: RouterMetrics,
        registration: RegistrationAuthenticator,
    ) -> None:
        self._router = router
        self._registry = registry
        self._ledger = ledger
        self._auth = authenticator
        self._encoder = encoder
        self._model_name = model_name
        self._tracer = tracer
        self._metrics = metrics
        self._registration = registration

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        started = time.monotonic()
        # Until the call ends otherwise, it ends because the caller went away.
        outcome = "cancelled"
        parent = extract_context(context.invocation_metadata())
        span = self._tracer.start_span("router.generate", context=parent, kind=trace.SpanKind.SERVER)
        span.set_attribute("gen_ai.operation.name", "text_completion")
        span.set_attribute("gen_ai.system", "radixfair")
        span.set_attribute("gen_ai.request.model", request.model or self._model_name)
        if request.sampling.HasField("max_tokens"):
            span.set_attribute("gen_ai.request.max_tokens", request.sampling.max_tokens)
        span.set_attribute("gen_ai.request.temperature", request.sampling.temperature)
        try:
            principal = self._auth.authenticate_metadata(context.invocation_metadata())
            span.set_attribute("radixfair.client_id", principal.client_id)
            validated = await validate_off_loop(
                request, self._encoder, self._model_name, self._router.max_prompt_bytes
            )
            self._check_model_served(validated.model)
            span.set_attribute("radixfair.request_id", validated.request_id)
            if validated.label:
                span.set_attribute("radixfair.request_label", validated.label)
            span.set_attribute("gen_ai.usage.input_tokens", len(validated.token_ids))
            async for message in self._router.generate(validated, principal, span):
                yield message
            outcome = "ok"
        except RadixfairError as error:
            outcome = "error"
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
            self._metrics.rejected.labels(rejection_reason(error)).inc()
            await context.abort(error.code, str(error))
        except Exception as error:  # noqa: BLE001 - a bug in one request must not take the router down
            outcome = "error"
            log.exception("Generate failed unexpectedly")
            span.set_status(trace.Status(trace.StatusCode.ERROR, repr(error)))
            self._metrics.rejected.labels(rejection_reason(error)).inc()
            await context.abort(grpc.StatusCode.INTERNAL, f"router error: {type(error).__name__}")
        finally:
            span.end()
            if outcome == "cancelled":
                self._metrics.cancelled.inc()
            self._metrics.request_duration.labels(outcome).observe(time.monotonic() - started)

    async def RegisterWorker(self, request, context: grpc.aio.ServicerContext):
        try:
            self._registration.check(context.invocation_metadata())
            _check_registration(request)
            ttl = self._registry.register(request.worker_id, request.address, request.model)
        except RadixfairError as error:
            await context.abort(error.code, str(error))
        return router_pb2.RegisterWorkerResponse(ttl_seconds=max(1, round(ttl)))

    async def GetStatus(self, request, context: grpc.aio.ServicerContext):
        try:
            principal = self._auth.authenticate_metadata(context.invocation_metadata())
        except RadixfairError as error:
            await context.abort(error.code, str(error))
        workers = [_worker_status(w, principal) for w in self._registry.all()]
        weights = self._auth.client_weights()
        records = {r.client_id: r for r in await self._ledger.snapshot()}
        # A tenant sees its own usage only: another tenant's volume is that tenant's business.
        visible = set(weights) | set(records) if principal.operator else {principal.client_id}
        clients = [
            router_pb2.ClientStatus(
                client_id=cid,
                weight=records[cid].weight if cid in records else weights.get(cid, 1.0),
                service=records[cid].service if cid in records else 0.0,
                requests=records[cid].requests if cid in records else 0,
            )
            for cid in sorted(visible)
        ]
        return router_pb2.GetStatusResponse(
            policy=self._router.policy_name,
            workers=workers,
            clients=clients,
            shared_state_connected=self._ledger.shared,
        )

    def _check_model_served(self, model: str) -> None:
        """A model no known worker serves is answered at once, not after waiting for a worker."""
        served = self._registry.served_models()
        if model and served is not None and model not in served:
            raise NotFoundError(f"no worker serves model {model!r}; served here: {', '.join(sorted(served))}")


# Bounds on what a registration may claim (the id shows up in metrics labels and logs).
_MAX_WORKER_ID_CHARS = 128
_MAX_ADDRESS_CHARS = 256


def _check_registration(request: router_pb2.RegisterWorkerRequest) -> None:
    worker_id, address = request.worker_id, request.address
    if not worker_id.strip() or not address.strip():
        raise InvalidRequestError("worker_id and address are required")
    if len(worker_id) > _MAX_WORKER_ID_CHARS or not worker_id.isprintable():
        raise InvalidRequestError(
            f"worker_id must be printable and at most {_MAX_WORKER_ID_CHARS} characters"
        )
    host, _, port = address.rpartition(":")
    if len(address) > _MAX_ADDRESS_CHARS or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequestError(f"address must be host:port, got {address[:_MAX_ADDRESS_CHARS]!r}")


def _worker_status(worker: WorkerEndpoint, principal: Principal) -> router_pb2.WorkerStatus:
    """An operator sees where each worker is and what it caches; a tenant sees only id, model and health."""
    if not principal.operator:
        return router_pb2.WorkerStatus(worker_id=worker.worker_id, model=worker.model, healthy=worker.healthy)
    return router_pb2.WorkerStatus(
        worker_id=worker.worker_id,
        address=worker.address,
        model=worker.model,
        healthy=worker.healthy,
        last_report=worker.last_report,
    )
