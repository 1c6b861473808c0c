"""Serves Generate only to callers that prove their tenant identity (radixfair.caller_identity).

With ``identity_secret`` configured, a Generate call must carry the router's
signature over its client id, weight and request id; a call without one, or
with one that does not match (another tenant, another weight), is answered
UNAUTHENTICATED before it reaches the engine. Without a secret every caller
is trusted, and only mutual TLS (``tls.require_client_cert``) keeps direct
callers out. A server interceptor, so the servicer stays a translation layer.
GenerateMultiplexed carries a signature per start, so its call checks each
start with ``identity_problem`` and answers a bad one with an error event.
"""

from __future__ import annotations

import grpc

from radixfair.caller_identity import IDENTITY_SIGNATURE_KEY, identity_valid
from radixfair.v1 import worker_pb2

_REFUSAL = (
    "this worker serves only requests whose tenant identity a router signed "
    f"({IDENTITY_SIGNATURE_KEY} missing or not matching)"
)
_GENERATE = "/" + worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name + "/Generate"


class CallerIdentityInterceptor(grpc.aio.ServerInterceptor):
    """Rejects Generate calls whose identity signature is missing or wrong."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != _GENERATE or handler.unary_stream is None:
            return handler
        behavior, secret = handler.unary_stream, self._secret

        async def generate(request, context):
            signature = next(
                (v for k, v in context.invocation_metadata() or () if k == IDENTITY_SIGNATURE_KEY), None
            )
            # A request the malformed-request interceptor flagged has no fields: it is answered there.
            if getattr(request, "client_id", None) is not None:
                problem = identity_problem(secret, request, signature)
                if problem is not None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
            async for message in behavior(request, context):
                yield message

        return grpc.unary_stream_rpc_method_handler(
            generate,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def identity_problem(secret: str, request: worker_pb2.GenerateRequest, signature: object) -> str | None:
    """Why ``request`` may not be served under ``signature`` (None: it may, or no secret is set).

    The one check of a signature: Generate's interceptor and each GenerateMultiplexed start use it.
    """
    if not secret:
        return None
    if not isinstance(signature, str) or not identity_valid(
        secret, request.client_id, request.client_weight, request.request_id, signature
    ):
        return _REFUSAL
    return None
