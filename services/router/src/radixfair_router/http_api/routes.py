"""The OpenAI-compatible endpoints as a Starlette app: HTTP in, the router's one dispatch path, JSON/SSE out.

POST /v1/chat/completions and /v1/completions (streamed or not), GET /v1/models (the models the
healthy workers serve), plus /health and /metrics as the other ports have them. Handlers only
translate; every decision is the router's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from radixfair.errors import InvalidRequestError, NotFoundError, RadixfairError
from radixfair.v1 import generation_pb2, router_pb2
from radixfair_router.front_door import DispatchParts, Generation
from radixfair_router.http_api.errors import HttpError, error_body, error_event, error_response
from radixfair_router.http_api.schemas import ChatCompletionRequest, CompletionRequest, _Sampling, parse_body
from radixfair_router.http_api.streaming import (
    DONE_EVENT,
    ClientGoneError,
    EventStreamResponse,
    sse_event,
    unless_client_leaves,
)
from radixfair_router.http_api.translation import (
    ReplyShape,
    chat_request,
    completion_request,
    finish_reason,
)

log = logging.getLogger(__name__)

# Room for the JSON around a prompt of forward.max_prompt_bytes (escapes can double its text).
_BODY_OVERHEAD_BYTES = 64 * 1024
# What a reply to a caller that already left carries (nginx's convention; nobody reads it).
_CLIENT_CLOSED = 499

_Body = ChatCompletionRequest | CompletionRequest
_ToRequest = Callable[[Any], router_pb2.RouterServiceGenerateRequest]


class OpenAiApi:
    """Handlers of the OpenAI-compatible API over the router's shared dispatch parts."""

    def __init__(self, parts: DispatchParts) -> None:
        self._parts = parts
        self._max_body_bytes = 2 * parts.router.max_prompt_bytes + _BODY_OVERHEAD_BYTES

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
            ],
            exception_handlers={HTTPException: _http_exception},
        )

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, ChatCompletionRequest, chat_request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, CompletionRequest, completion_request, chat=False)

    async def models(self, request: Request) -> Response:
        try:
            self._parts.authenticator.authenticate_metadata(_headers(request))
        except Exception as error:
            return error_response(error)
        return JSONResponse({"object": "list", "data": [_model_card(m) for m in self._served()]})

    async def model(self, request: Request) -> Response:
        try:
            self._parts.authenticator.authenticate_metadata(_headers(request))
            name = request.path_params["model"]
            if name not in self._served():
                raise NotFoundError(f"no healthy worker serves model {name!r}")
        except Exception as error:
            return error_response(error)
        return JSONResponse(_model_card(name))

    async def health(self, request: Request) -> Response:
        # As the gRPC health service: serving once started, whatever the workers do; the body
        # says how many are in rotation, for a person looking.
        healthy = len(self._parts.registry.healthy())
        return JSONResponse({"status": "serving", "healthy_workers": healthy})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _reply_model(self, asked: str) -> str:
        """The model a reply names: the one asked for, else the one the healthy workers serve.

        A request without ``model`` (and a router without ``model_name``, as ``radixfair up``
        runs it) goes to any worker; OpenAI's replies always name a model, so name the only one
        served. With several served and none asked for, which one answered is not known here.
        """
        if asked:
            return asked
        served = self._served()
        return served[0] if len(served) == 1 else ""

    def _served(self) -> list[str]:
        return sorted({w.model for w in self._parts.registry.healthy() if w.model})

    async def _generate(
        self, request: Request, schema: type[_Body], to_request: _ToRequest, chat: bool
    ) -> Response:
        generation = Generation(
            self._parts, "chat" if chat else "text_completion", _headers(request), front_door="http"
        )
        try:
            principal = generation.authenticate()
            body = parse_body(schema, await self._read_json(request))
            validated = await unless_client_leaves(request, generation.validate(to_request(body)))
        except (ClientGoneError, ClientDisconnect):  # gone while sending its body, or while it was checked
            generation.abandon()
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as error:
            if not isinstance(error, RadixfairError):  # a bug here: seen in the log, answered 500
                log.exception("HTTP request failed before reaching the router")
            generation.fail(error)
            return error_response(error)
        stream = generation.messages(validated, principal)
        shape = ReplyShape(validated.request_id, int(time.time()), self._reply_model(validated.model), chat)
        headers = {"x-request-id": validated.request_id}
        try:
            if body.stream:
                # The first message comes before the status line, so a request refused by every
                # worker (queue full, no worker) still gets its 429 or 503, not a 200 and an error.
                first = await unless_client_leaves(request, stream.__anext__())
                return EventStreamResponse(_events(shape, first, stream, body), headers)
            text, result = await unless_client_leaves(request, _collect(stream))
        except ClientGoneError:
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as error:  # the generation recorded it; here it only gets its status
            await stream.aclose()
            return error_response(error)
        return JSONResponse(shape.completion(text, result), headers=headers)

    async def _read_json(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body_bytes:
            raise InvalidRequestError(f"request body is {declared} bytes; at most {self._max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body_bytes:
                raise InvalidRequestError(f"request body exceeds {self._max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InvalidRequestError(f"request body is not valid JSON: {error}") from None
        except RecursionError:  # arrays or objects nested deeper than the decoder's stack allows
            raise InvalidRequestError("request body nests arrays or objects too deeply") from None


async def _collect(
    stream: AsyncIterator[router_pb2.RouterServiceGenerateResponse],
) -> tuple[str, generation_pb2.GenerationResult]:
    result = None
    # Read to the end (not just to the result): the router books the request as served there.
    async for message in stream:
        if message.WhichOneof("event") == "result":
            result = message.result
    if result is None:  # the router never ends a stream without a result or an error
        raise RuntimeError("stream ended without a result")
    return result.text, result


async def _events(
    shape: ReplyShape,
    first: router_pb2.RouterServiceGenerateResponse,
    stream: AsyncIterator[router_pb2.RouterServiceGenerateResponse],
    body: _Sampling,
) -> AsyncIterator[bytes]:
    """The SSE body: an opening chunk (chat), a chunk per text delta, the finish, usage, [DONE]."""
    with_usage = body.include_usage
    try:
        if shape.chat:
            yield _event(shape.chunk(None, None, with_usage))
        result = None
        message: router_pb2.RouterServiceGenerateResponse | None = first
        while message is not None:
            if message.WhichOneof("event") == "result":
                result = message.result
            elif message.delta.text:
                yield _event(shape.chunk(message.delta.text, None, with_usage))
            # Read to the end, past the result: the router books the request as served there.
            message = await anext(stream, None)
        if result is None:
            raise RuntimeError("stream ended without a result")
        yield _event(shape.chunk("", finish_reason(result), with_usage))
        if with_usage:
            yield _event(shape.usage_chunk(result))
        yield sse_event(DONE_EVENT)
    except Exception as error:  # after the status line: the error travels as an event
        yield sse_event(error_event(error))


def _event(payload: dict[str, Any]) -> bytes:
    return sse_event(json.dumps(payload, separators=(",", ":")))


def _headers(request: Request) -> list[tuple[str, str]]:
    return [(key.decode("latin-1"), value.decode("latin-1")) for key, value in request.headers.raw]


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "radixfair"}


async def _http_exception(request: Request, error: Exception) -> Response:
    status = error.status_code if isinstance(error, HTTPException) else 500
    detail = error.detail if isinstance(error, HTTPException) else "internal error"
    kind = HttpError(status, "not_found_error" if status == 404 else "invalid_request_error")
    return JSONResponse(
        error_body(f"{request.method} {request.url.path}: {detail}", kind), status_code=status
    )
