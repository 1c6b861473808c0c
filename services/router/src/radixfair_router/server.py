"""gRPC adapter of the router: Generate goes through front_door.Generation into RequestRouter.

Three identities call it: tenants (API keys) generate and read their own
state; operators (API keys marked operator) also read every tenant's state
and the workers' addresses; workers register with the registration token,
never with a tenant's key. No routing logic lives here. Every failure
leaves as a status with a message through the one mapping in
radixfair.errors; anything unexpected is logged and answered INTERNAL, and
the router keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from opentelemetry.trace import Tracer

from radixfair.auth import ApiKeyAuthenticator, Principal, RegistrationAuthenticator
from radixfair.errors import InvalidRequestError, RadixfairError
from radixfair.tokenization import PromptEncoder
from radixfair.v1 import router_pb2, router_pb2_grpc
from radixfair_router.front_door import DispatchParts, Generation
from radixfair_router.ledger import Ledger
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
        self._registration = registration
        self._parts = DispatchParts(router, registry, authenticator, encoder, model_name, tracer, metrics)

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        # The span, the metrics and the checks are front_door.Generation's, shared with the HTTP API;
        # here only the gRPC side: metadata in, messages out, errors to status codes.
        generation = Generation(self._parts, "text_completion", context.invocation_metadata())
        generation.describe(request)
        try:
            principal = generation.authenticate()
            validated = await generation.validate(request)
        except asyncio.CancelledError:
            generation.abandon()
            raise
        except Exception as error:  # noqa: BLE001 - a bug in one request must not take the router down
            if not isinstance(error, RadixfairError):
                log.exception("Generate failed unexpectedly")
            generation.fail(error)
            await _abort(context, error)
        try:
            async with contextlib.aclosing(generation.messages(validated, principal)) as messages:
                async for message in messages:
                    yield message
        except Exception as error:  # noqa: BLE001 - recorded by the generation; here only its status
            await _abort(context, error)

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


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    """Ends the call with the error's status (typed errors: their own; anything else: INTERNAL)."""
    if isinstance(error, RadixfairError):
        await context.abort(error.code, str(error))
    await context.abort(grpc.StatusCode.INTERNAL, f"router error: {type(error).__name__}")


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
