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


class NotFoundError(RadixfairError):
    code = grpc.StatusCode.NOT_FOUND


class EngineStoppedError(RadixfairError):
    code = grpc.StatusCode.UNAVAILABLE


async def abort_with(context: grpc.aio.ServicerContext, error: RadixfairError) -> None:
    """Ends the call with the status that belongs to ``error``."""
    await context.abort(error.code, str(error))
