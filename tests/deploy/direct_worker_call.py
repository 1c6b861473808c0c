"""Run inside a container of the compose network (`python - ADDRESS` with this file on stdin): calls a
worker's Generate directly, bypassing the routers, three ways, and prints one JSON line
{"unsigned": CODE, "wrong_secret": CODE, "signed": CODE} where CODE is "OK" or the gRPC status name.

"signed" signs the identity with the secret the container's router holds
(RADIXFAIR_FORWARD__IDENTITY_SECRET), as a router does, so the refusals are shown to be about the
signature and not about the request. Uses only what the router image holds: grpcio and the stubs.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import grpc

from radixfair.caller_identity import IDENTITY_SIGNATURE_KEY, identity_signature
from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc


def call(stub: worker_pb2_grpc.WorkerServiceStub, secret: str | None) -> str:
    request = worker_pb2.GenerateRequest(
        request_id=f"direct-{uuid.uuid4().hex}",
        client_id="alice",
        client_weight=1.0,
        prompt=generation_pb2.Prompt(text="Hello"),
        sampling=generation_pb2.SamplingParams(max_tokens=2),
    )
    metadata = []
    if secret is not None:
        signature = identity_signature(secret, request.client_id, request.client_weight, request.request_id)
        metadata.append((IDENTITY_SIGNATURE_KEY, signature))
    try:
        for _ in stub.Generate(request, metadata=metadata, timeout=120):
            pass
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


def main() -> None:
    secret = os.environ["RADIXFAIR_FORWARD__IDENTITY_SECRET"]
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        codes = {
            "unsigned": call(stub, None),
            "wrong_secret": call(stub, secret + "-not-it"),
            "signed": call(stub, secret),
        }
    print(json.dumps(codes))


if __name__ == "__main__":
    main()
