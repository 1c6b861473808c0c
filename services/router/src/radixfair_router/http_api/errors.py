"""radixfair's errors in OpenAI's JSON error shape, with the HTTP status that matches each gRPC code.

The gRPC code of a typed error (radixfair.errors) or of a worker's verdict passed through decides
the HTTP status, so both front doors answer one failure the same way: 400 for a bad request, 401
for a bad key, 404 for a model nobody serves, 429 with Retry-After when queues are full, 503 when
no worker can serve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.responses import JSONResponse

from radixfair.errors import RadixfairError

# Seconds a client should wait before retrying a 429 or 503: queues drain and workers come back
# on the scale of the health checks (about a second), not minutes.
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class HttpError:
    status: int
    type: str
    code: str | None = None


_BY_GRPC_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: HttpError(400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: HttpError(400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: HttpError(400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: HttpError(401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: HttpError(403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: HttpError(404, "not_found_error", "model_not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: HttpError(429, "rate_limit_error", "queue_full"),
    grpc.StatusCode.UNAVAILABLE: HttpError(503, "service_unavailable", "no_worker_available"),
    grpc.StatusCode.DEADLINE_EXCEEDED: HttpError(504, "timeout"),
    grpc.StatusCode.CANCELLED: HttpError(499, "cancelled"),
}
_INTERNAL = HttpError(500, "server_error")


def http_error_of(error: BaseException) -> HttpError:
    code = getattr(error, "code", None)
    if isinstance(error, RadixfairError) and isinstance(code, grpc.StatusCode):
        return _BY_GRPC_CODE.get(code, _INTERNAL)
    return _INTERNAL


def error_body(message: str, kind: HttpError, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind.type, "param": param, "code": kind.code}}


def error_message(error: BaseException) -> str:
    # Anything untyped is a bug here: its text stays in the log, the caller gets its kind only.
    return str(error) if isinstance(error, RadixfairError) else f"router error: {type(error).__name__}"


def error_response(error: BaseException) -> JSONResponse:
    kind = http_error_of(error)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if kind.status in (429, 503) else None
    # A refused body field (http_api.schemas.InvalidFieldError) names itself in ``param``.
    param = getattr(error, "param", None) if isinstance(error, RadixfairError) else None
    body = error_body(error_message(error), kind, param)
    return JSONResponse(body, status_code=kind.status, headers=headers)


def error_event(error: BaseException) -> str:
    """An error after the stream began (its status already sent): one SSE event the SDKs raise on."""
    return json.dumps(error_body(error_message(error), http_error_of(error)))
