"""A worker with an identity secret serves only the tenant identity a router signed (review finding 6).

Without it, anyone who reaches a worker's port could claim any client_id and weight. The worker here
is a real process started with ``identity_secret``; the router shares the secret.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
from hypothesis import given
from hypothesis import strategies as st
from support.router_stack import client_for, router_config, running_router

from radixfair.caller_identity import IDENTITY_SIGNATURE_KEY, identity_signature, identity_valid
from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc

SECRET = "shared-between-routers-and-workers"

texts = st.text(max_size=40)
weights = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@given(secret=texts.filter(bool), client=texts, weight=weights, request_id=texts, other=texts, w2=weights)
def test_a_signature_holds_for_its_own_identity_only(secret, client, weight, request_id, other, w2):
    signature = identity_signature(secret, client, weight, request_id)
    assert identity_valid(secret, client, weight, request_id, signature)
    assert identity_valid(secret, other, weight, request_id, signature) == (other == client)
    assert identity_valid(secret, client, w2, request_id, signature) == (w2 == weight)
    assert identity_valid(secret, client, weight, other, signature) == (other == request_id)
    assert not identity_valid(secret + "x", client, weight, request_id, signature)


def direct_request(client_id: str, weight: float, request_id: str) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=request_id,
        client_id=client_id,
        client_weight=weight,
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=list(range(40000, 40008)))),
        sampling=generation_pb2.SamplingParams(max_tokens=2, ignore_eos=True),
    )


async def call_directly(address: str, request, metadata) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        try:
            async for _ in stub.Generate(request, metadata=metadata, timeout=60):
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


def test_the_worker_serves_the_routers_signed_requests_and_refuses_direct_callers_posing_as_tenants(
    spawn_workers, tiny_model_dir
):
    [worker] = spawn_workers(1, identity_secret=SECRET)
    config = router_config(tiny_model_dir, [worker])
    config = replace(config, forward=replace(config.forward, identity_secret=SECRET))

    async def scenario():
        async with running_router(config) as running:
            async with client_for(running, "carol") as client:
                through_router = await client.generate(
                    list(range(40100, 40110)), max_tokens=3, ignore_eos=True
                )
        address = worker.address
        alice = direct_request("alice", 1.0, "direct-1")
        signed_for_alice = [(IDENTITY_SIGNATURE_KEY, identity_signature(SECRET, "alice", 1.0, "direct-1"))]
        return through_router, {
            "unsigned": await call_directly(address, alice, []),
            "garbage": await call_directly(address, alice, [(IDENTITY_SIGNATURE_KEY, "00" * 32)]),
            "alice's signature, bob's id": await call_directly(
                address, direct_request("bob", 1.0, "direct-1"), signed_for_alice
            ),
            "alice's signature, weight 100": await call_directly(
                address, direct_request("alice", 100.0, "direct-1"), signed_for_alice
            ),
            "signed with the secret": await call_directly(address, alice, signed_for_alice),
        }

    through_router, direct = asyncio.run(scenario())
    assert through_router.result.usage.completion_tokens == 3
    assert direct == {
        "unsigned": grpc.StatusCode.UNAUTHENTICATED,
        "garbage": grpc.StatusCode.UNAUTHENTICATED,
        "alice's signature, bob's id": grpc.StatusCode.UNAUTHENTICATED,
        "alice's signature, weight 100": grpc.StatusCode.UNAUTHENTICATED,
        "signed with the secret": grpc.StatusCode.OK,
    }
