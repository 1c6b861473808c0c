"""The router's worker transports when one request, or the transport's own machinery, fails: exactly the
requests it affects end with a clear status, none hangs, the other tenants' requests on a shared call go
on where they can, the next request opens a fresh call, and no state is left behind (issue 12).

A real worker process over loopback; the router side is a real MultiplexedConnection or WorkerStream (or
a real router).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from router.test_router_multiplexed_transport import (
    SECRET,
    read_to_end,
    signed_request,
    start_signed,
    with_transport,
)
from support.router_stack import router_config, running_router, start_worker_process, wait_until

from radixfair.auth import bearer_metadata
from radixfair.caller_identity import IDENTITY_SIGNATURE_KEY, identity_signature
from radixfair.errors import FAILURE_SCOPE_KEY, REQUEST_SCOPE
from radixfair.v1 import router_pb2, router_pb2_grpc, worker_pb2
from radixfair_router.live_streams import StreamBook
from radixfair_router.multiplexed_worker_call import MultiplexedConnection
from radixfair_router.worker_stream import WorkerStream

# Bounds a request's end in these tests: far above the seconds they take, far below the idle limit a
# request left hanging would wait for.
ENDS_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def worker(tiny_model_dir, tmp_path_factory):
    service = start_worker_process(
        tiny_model_dir, tmp_path_factory.mktemp("mux-fault-worker"), identity_secret=SECRET
    )
    yield service
    service.stop()


def request_scoped(error: grpc.aio.AioRpcError) -> bool:
    return (FAILURE_SCOPE_KEY, REQUEST_SCOPE) in tuple(error.trailing_metadata() or ())


def test_a_start_larger_than_a_worker_receives_fails_alone_and_the_shared_call_goes_on(worker):
    # ~4.5 MB of token ids: past gRPC's default 4 MiB receive limit on the worker, which would end the
    # shared call (and every other tenant's request on it) if it were sent. Reachable where a deployment
    # raises forward.max_prompt_bytes.
    async def scenario():
        async with grpc.aio.insecure_channel(worker.address) as channel:
            connection = MultiplexedConnection(channel, "own")
            neighbour = start_signed(connection, "big-neighbour", 40)
            await neighbour.take()  # streaming on the call
            big = signed_request("too-big", 2)
            big.prompt.token_ids.ids[:] = [40000] * 1_500_000
            too_big = connection.start(big, identity_signature(SECRET, "alice", 1.0, "too-big"), {})
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await asyncio.wait_for(read_to_end(too_big), ENDS_WITHIN_S)
            result = await asyncio.wait_for(read_to_end(neighbour), ENDS_WITHIN_S)
            opens, still_open = connection.opens, len(connection)
            connection.close()
            return failure.value, result, opens, still_open

    error, result, opens, still_open = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and request_scoped(error), error
    assert "4194304" in error.details()
    assert result.result.usage.completion_tokens == 40
    assert opens == 1 and still_open == 0


def test_an_unexpected_failure_relaying_one_request_ends_it_alone_and_the_call_goes_on(worker):
    """No real fault reaches the reader's hand-over of an event (it copies protobuf messages), so one
    request's ``deliver`` is replaced on the real object to raise, as a bug there would."""

    async def scenario():
        async with grpc.aio.insecure_channel(worker.address) as channel:
            connection = MultiplexedConnection(channel, "own")
            broken = start_signed(connection, "relay-broken", 400)
            bystander = start_signed(connection, "relay-bystander", 40)

            def deliver(event, now):
                raise RuntimeError("a bug in the hand-over")

            broken.deliver = deliver  # type: ignore[method-assign]
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await asyncio.wait_for(read_to_end(broken), ENDS_WITHIN_S)
            result = await asyncio.wait_for(read_to_end(bystander), ENDS_WITHIN_S)
            opens, still_open = connection.opens, len(connection)
            connection.close()
            return failure.value, result, opens, still_open

    error, result, opens, still_open = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.INTERNAL and request_scoped(error), error
    assert "RuntimeError" in error.details()
    assert result.result.usage.completion_tokens == 40
    assert opens == 1 and still_open == 0


@pytest.mark.parametrize("task", ["reader", "writer"])
def test_a_failure_in_the_calls_reader_or_writer_ends_its_requests_and_the_next_opens_a_fresh_call(
    worker, task
):
    """No real fault reaches the call's ``read`` or ``write`` with an error other than the call's own
    end (which both tasks already handle), so the real call's method is replaced to raise, as a bug
    there would."""

    async def scenario():
        async with grpc.aio.insecure_channel(worker.address) as channel:
            connection = MultiplexedConnection(channel, "own")
            bystander = start_signed(connection, f"{task}-bystander", 400)
            await bystander.take()  # the call is open and answered

            async def broken(*_):
                raise RuntimeError(f"a bug in the {task}")

            setattr(connection._call, "read" if task == "reader" else "write", broken)
            second = start_signed(connection, f"{task}-second", 5)
            ends = []
            for request in (second, bystander):
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await asyncio.wait_for(read_to_end(request), ENDS_WITHIN_S)
                ends.append(failure.value)
            after = await asyncio.wait_for(read_to_end(start_signed(connection, f"{task}-after", 3)), 60)
            opens, still_open = connection.opens, len(connection)
            connection.close()
            return ends, after, opens, still_open

    ends, after, opens, still_open = asyncio.run(scenario())
    for error in ends:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert f"a bug in the {task}" in error.details(), error.details()
    assert after.result.usage.completion_tokens == 3
    assert opens == 2 and still_open == 0


def test_an_unexpected_failure_reading_a_per_request_call_ends_its_request_instead_of_leaving_it_hanging(
    worker,
):
    """The per-request transport's reader (WorkerStream). No real fault reaches its ``call.read`` with
    an error other than the call's own end, so the real call's ``read`` is replaced to raise."""

    async def scenario():
        async with grpc.aio.insecure_channel(worker.address) as channel:
            generate = channel.unary_stream(
                "/radixfair.v1.WorkerService/Generate",
                request_serializer=worker_pb2.GenerateRequest.SerializeToString,
                response_deserializer=router_pb2.RouterServiceGenerateResponse.FromString,
            )
            signature = identity_signature(SECRET, "alice", 1.0, "stream-broken")
            call = generate(
                signed_request("stream-broken", 5), metadata=((IDENTITY_SIGNATURE_KEY, signature),)
            )

            async def read():
                raise RuntimeError("a bug in the reader")

            call.read = read  # type: ignore[method-assign]
            stream = WorkerStream(call, StreamBook("alice", 1.0, None, 0))  # type: ignore[arg-type]
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await asyncio.wait_for(stream.take(), ENDS_WITHIN_S)
            complete = stream.complete
            call.cancel()
            return failure.value, complete

    error, complete = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.INTERNAL and request_scoped(error), error
    assert "RuntimeError" in error.details()
    assert complete


TOKEN = "join-token-for-the-connection-test"


def test_an_endpoint_that_left_the_pool_gets_no_connection_and_leaves_no_entry(tiny_model_dir):
    """A request decided for a worker that leaves the pool before its call starts asks for that
    endpoint's connection after the close listener dropped it; a connection made then was kept for good
    (one entry per such race). Here the request's ask comes after the removal, as in that race."""
    config = with_transport(router_config(tiny_model_dir, [], policy="round_robin"), "multiplexed")
    config = replace(config, registry=replace(config.registry, registration_token=TOKEN, heartbeat_ttl_s=1.0))

    async def scenario():
        async with running_router(config, healthy_workers=0) as running:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as router_channel:
                stub = router_pb2_grpc.RouterServiceStub(router_channel)
                join = router_pb2.RegisterWorkerRequest(worker_id="lapsing", address="127.0.0.1:9")
                await stub.RegisterWorker(join, metadata=bearer_metadata(TOKEN))
            endpoint = running.registry.get("lapsing")
            await wait_until(lambda: running.registry.get("lapsing") is None, "the registration lapsed")
            with pytest.raises(grpc.aio.UsageError):
                running.router._connection(endpoint)
            return dict(running.router._connections)

    kept = asyncio.run(scenario())
    assert kept == {}
