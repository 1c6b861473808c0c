"""Answers undecodable request bytes with INVALID_ARGUMENT instead of gRPC's UNKNOWN.

grpcio fails a call whose bytes do not parse before any handler runs, with
status UNKNOWN. This interceptor swaps each method's deserializer for one
that records the parse error, and the wrapped behaviour then aborts with
INVALID_ARGUMENT and the parser's message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class _Malformed:
    reason: str


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Malformed(str(error))

    return parse


async def _reject(context: grpc.aio.ServicerContext, request: _Malformed) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.reason}")


def _wrap_unary(behavior):
    async def handle(request, context):
        if isinstance(request, _Malformed):
            await _reject(context, request)
        return await behavior(request, context)

    return handle


def _wrap_stream(behavior):
    if not inspect.isasyncgenfunction(behavior):
        # A handler that writes with context.write (grpc.health.v1 Watch) is a coroutine, not a generator.
        return _wrap_unary(behavior)

    async def handle(request, context):
        if isinstance(request, _Malformed):
            await _reject(context, request)
        async for message in behavior(request, context):
            yield message

    return handle


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        deserializer = _safe(handler.request_deserializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
