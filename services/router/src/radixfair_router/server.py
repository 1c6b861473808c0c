"""gRPC adapter of the router: authenticates, validates, and calls into RequestRouter.

No routing logic lives here. Every failure leaves as a status with a
message through the one mapping in radixfair.errors; anything unexpected is
logged and answered INTERNAL, and the router keeps serving.
"""

from __future__ import annotations

import logging
import uuid

import grpc
from opentelemetry import trace
from opentelemetry.trace import Tracer

from radixfair.auth import ApiKeyAuthenticator, check_shared_token
from radixfair.errors import InvalidRequestError, RadixfairError
from radixfair.tokenization import PromptEncoder
from radixfair.tracing import extract_context
from radixfair.v1 import router_pb2, router_pb2_grpc
from radixfair_router.ledger import Ledger
from radixfair_router.request_router import RequestRouter
from radixfair_router.request_validation import validate_request
from radixfair_router.router_metrics import RouterMetrics
from radixfair_router.worker_registry import WorkerRegistry

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
        registration_token: str = "",
    ) -> None:
        self._router = router
        self._registry = registry
        self._ledger = ledger
        self._auth = authenticator
        self._encoder = encoder
        self._model_name = model_name
        self._tracer = tracer
        self._metrics = metrics
        self._registration_token = registration_token

    async def Generate(self, request, context: grpc.aio.ServicerContext):
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
            validated = validate_request(request, self._encoder, self._model_name, uuid.uuid4().hex)
            span.set_attribute("radixfair.request_id", validated.request_id)
            span.set_attribute("gen_ai.usage.input_tokens", len(validated.token_ids))
            async for message in self._router.generate(validated, principal, span):
                yield message
        except RadixfairError as error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
            await context.abort(error.code, str(error))
        except Exception as error:  # noqa: BLE001 - a bug in one request must not take the router down
            log.exception("Generate failed unexpectedly")
            span.set_status(trace.Status(trace.StatusCode.ERROR, repr(error)))
            await context.abort(grpc.StatusCode.INTERNAL, f"router error: {type(error).__name__}")
        finally:
            span.end()

    async def RegisterWorker(self, request, context: grpc.aio.ServicerContext):
        try:
            check_shared_token(context.invocation_metadata(), self._registration_token)
            if not request.worker_id.strip() or not request.address.strip():
                raise InvalidRequestError("worker_id and address are required")
            if ":" not in request.address:
                raise InvalidRequestError(f"address must be host:port, got {request.address!r}")
            ttl = self._registry.register(request.worker_id, request.address, request.model)
        except RadixfairError as error:
            await context.abort(error.code, str(error))
        return router_pb2.RegisterWorkerResponse(ttl_seconds=max(1, round(ttl)))

    async def GetStatus(self, request, context: grpc.aio.ServicerContext):
        try:
            self._auth.authenticate_metadata(context.invocation_metadata())
        except RadixfairError as error:
            await context.abort(error.code, str(error))
        workers = [
            router_pb2.WorkerStatus(
                worker_id=w.worker_id,
                address=w.address,
                model=w.model,
                healthy=w.healthy,
                last_report=w.last_report,
            )
            for w in self._registry.all()
        ]
        weights = self._auth.client_weights()
        records = {r.client_id: r for r in await self._ledger.snapshot()}
        clients = [
            router_pb2.ClientStatus(
                client_id=cid,
                weight=records[cid].weight if cid in records else weights.get(cid, 1.0),
                service=records[cid].service if cid in records else 0.0,
                requests=records[cid].requests if cid in records else 0,
            )
            for cid in sorted(set(weights) | set(records))
        ]
        self._metrics.shared_state.set(1 if self._ledger.shared else 0)
        return router_pb2.GetStatusResponse(
            policy=self._router.policy_name,
            workers=workers,
            clients=clients,
            shared_state_connected=self._ledger.shared,
        )
