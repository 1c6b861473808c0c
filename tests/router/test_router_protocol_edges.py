"""Standard gRPC tooling and odd metadata get proper answers (issue 12, point 11).

Health Watch (Kubernetes, grpcurl-style tools), reflection v1 as well as
v1alpha, an unknown model name, and binary metadata holding any bytes.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.router_stack import client_for, router_config, running_router

from radixfair.auth import bearer_metadata
from radixfair.v1 import generation_pb2, router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from radixfair_router.server import SERVICE_NAME

WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


async def first_watch_status(address: str, service: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=20
        )
        reply = await call.read()
        call.cancel()
        return reply.status


async def reflect(address: str, request: reflection_pb2.ServerReflectionRequest, v1: bool):
    async with grpc.aio.insecure_channel(address) as channel:
        if v1:
            # v1 and v1alpha messages are wire-identical, so v1alpha's classes speak v1 too.
            method = channel.stream_stream(
                REFLECTION_V1,
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
        else:
            method = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        return [reply async for reply in method(iter([request]), timeout=20)]


def test_health_watch_streams_serving_from_the_router_and_a_worker(two_workers, tiny_model_dir):
    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers)) as running:
            router = f"127.0.0.1:{running.port}"
            return [
                await first_watch_status(router, ""),
                await first_watch_status(router, SERVICE_NAME),
                await first_watch_status(two_workers[0].address, ""),
                await first_watch_status(two_workers[0].address, WORKER_SERVICE),
                await first_watch_status(router, "no.such.Service"),
            ]

    statuses = asyncio.run(scenario())
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 4 + [
        health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    ]


def test_reflection_v1_and_v1alpha_list_and_describe_the_services(two_workers, tiny_model_dir):
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    describe_v1 = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"
    )
    describe_router = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)

    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers)) as running:
            router = f"127.0.0.1:{running.port}"
            return {
                "router v1alpha": await reflect(router, listing, v1=False),
                "router v1": await reflect(router, listing, v1=True),
                "worker v1": await reflect(two_workers[0].address, listing, v1=True),
                "describe v1": await reflect(router, describe_v1, v1=True),
                "describe router": await reflect(router, describe_router, v1=True),
            }

    replies = asyncio.run(scenario())
    for name in ("router v1alpha", "router v1"):
        [reply] = replies[name]
        services = {s.name for s in reply.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= services, (
            name
        )
        assert "grpc.reflection.v1alpha.ServerReflection" in services, name
    [worker] = replies["worker v1"]
    assert WORKER_SERVICE in {s.name for s in worker.list_services_response.service}
    for name in ("describe v1", "describe router"):
        [reply] = replies[name]
        assert not reply.HasField("error_response"), (name, reply.error_response)
        assert reply.file_descriptor_response.file_descriptor_proto, name


def test_an_unknown_model_is_not_found_at_once_and_the_served_one_is_served(two_workers, tiny_model_dir):
    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers)) as running:
            served_model = running.registry.all()[0].model
            async with client_for(running, "alice", max_attempts=1) as client:
                try:
                    await client.generate("hello", model="no-such-model", max_tokens=2)
                    unknown = None
                except grpc.aio.AioRpcError as error:
                    unknown = error
                served = await client.generate("hello", model=served_model, max_tokens=2, ignore_eos=True)
            return unknown, served_model, served

    unknown, served_model, served = asyncio.run(scenario())
    assert served_model
    assert unknown is not None and unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in unknown.details() and served_model in unknown.details()
    assert served.result.usage.completion_tokens == 2


def test_binary_metadata_with_any_bytes_gets_a_clean_status_on_every_rpc(two_workers, tiny_model_dir):
    binary = ("x-anything-bin", b"\xff\xfe\x80 not utf-8")
    request = router_pb2.RouterServiceGenerateRequest(
        prompt=generation_pb2.Prompt(text="hi"), sampling=generation_pb2.SamplingParams(max_tokens=2)
    )

    async def generate(stub, metadata):
        try:
            return [m async for m in stub.Generate(request, metadata=metadata, timeout=30)]
        except grpc.aio.AioRpcError as error:
            return error

    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers)) as running:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                anonymous = await generate(stub, (binary,))
                served = await generate(stub, (binary, *bearer_metadata("key-alice")))
                try:
                    await stub.GetStatus(router_pb2.GetStatusRequest(), metadata=(binary,), timeout=10)
                except grpc.aio.AioRpcError as error:
                    status = error
            # The worker reads trace context from the same metadata.
            async with grpc.aio.insecure_channel(two_workers[0].address) as channel:
                direct = worker_pb2.GenerateRequest(
                    client_id="direct",
                    prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=[7, 8, 9])),
                    sampling=generation_pb2.SamplingParams(max_tokens=2, ignore_eos=True),
                )
                calls = worker_pb2_grpc.WorkerServiceStub(channel).Generate(
                    direct, metadata=(binary,), timeout=30
                )
                worker = [m async for m in calls]
            return anonymous, served, status, worker

    anonymous, served, status, worker = asyncio.run(scenario())
    assert worker[-1].result.usage.completion_tokens == 2
    for error in (anonymous, status):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in error.details() and "Error" not in error.details()
    assert not isinstance(served, grpc.aio.AioRpcError), served
    assert served[-1].result.usage.completion_tokens == 2
