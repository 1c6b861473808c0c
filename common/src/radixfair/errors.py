"""Typed errors raised inside the services and their one mapping to gRPC codes."""

from __future__ import annotations

import grpc


class RadixfairError(Exception):
    """Base class; ``code`` is the gRPC status a server answers with."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequestError(RadixfairError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFullError(RadixfairError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnauthenticatedError(RadixfairError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(RadixfairError):
    code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyExistsError(RadixfairError):
    code = grpc.StatusCode.ALREADY_EXISTS


class NoWorkerAvailableError(RadixfairError):
    code = grpc.StatusCode.UNAVAILABLE


class WorkerFailedError(RadixfairError):
    code = grpc.StatusCode.UNAVAILABLE


# Trailing metadata a worker sets when a failure belongs to one request, not to the worker: the router
# returns it to the caller and neither retries the request elsewhere nor takes the worker out of
# rotation (one bad request must not empty the pool).
FAILURE_SCOPE_KEY = "radixfair-failure-scope"
REQUEST_SCOPE = "request"


class RequestFailedError(RadixfairError):
    """This request failed inside an engine step (its own numerics or inputs); the worker is fine."""

    code = grpc.StatusCode.INTERNAL


class NotFoundError(RadixfairError):
    code = grpc.StatusCode.NOT_FOUND


class EngineStoppedError(RadixfairError):
    code = grpc.StatusCode.UNAVAILABLE


async def abort_with(context: grpc.aio.ServicerContext, error: RadixfairError) -> None:
    """Ends the call with the status that belongs to ``error``."""
    await context.abort(error.code, str(error))
