"""forward.worker_transport "multiplexed": a router's requests to a worker on one GenerateMultiplexed call.

Real routers (one per transport) in front of real worker processes over loopback. What a client gets
must not depend on the transport: the same text, the same errors, the same retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.router_stack import (
    client_for,
    router_config,
    running_router,
    start_worker_process,
    stream_text,
    wait_until,
    worker_id,
)
from support.router_thread import RoutersInThread, routers_in_thread

from radixfair.caller_identity import identity_signature
from radixfair.v1 import generation_pb2, worker_pb2
from radixfair_router.config import ForwardConfig, RouterConfig
from radixfair_router.live_streams import StreamBook
from radixfair_router.multiplexed_worker_call import MultiplexedConnection, MultiplexedRequest
from radixfair_router.worker_stream import CallCancelledError

SECRET = "mux-router-secret"


def with_transport(config: RouterConfig, transport: str, **forward: Any) -> RouterConfig:
    return replace(config, forward=replace(config.forward, worker_transport=transport, **forward))


def test_the_transport_setting_is_validated():
    assert ForwardConfig(worker_transport="multiplexed").worker_transport == "multiplexed"
    with pytest.raises(ValueError, match="worker_transport"):
        ForwardConfig(worker_transport="carrier-pigeon")


@pytest.fixture(scope="module")
def own_worker(tiny_model_dir, tmp_path_factory):
    # The module's own worker (with an identity secret), so no other test's requests share its batches.
    worker = start_worker_process(
        tiny_model_dir, tmp_path_factory.mktemp("mux-worker"), identity_secret=SECRET
    )
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def two_routers(tiny_model_dir, own_worker) -> Iterator[RoutersInThread]:
    base = router_config(tiny_model_dir, [own_worker])
    configs = {
        transport: with_transport(base, transport, identity_secret=SECRET)
        for transport in ("per_request", "multiplexed")
    }
    with routers_in_thread(configs) as started:
        yield started


sampling = st.fixed_dictionaries(
    {
        "max_tokens": st.integers(1, 24),
        "temperature": st.sampled_from([0.0, 0.7, 1.3]),
        "seed": st.integers(0, 2**32 - 1),
    },
    optional={
        "top_p": st.sampled_from([0.5, 0.9]),
        "top_k": st.sampled_from([5, 50]),
        "stop": st.lists(st.sampled_from(["e", "th", " ", "\n", "a b"]), max_size=2),
        "ignore_eos": st.booleans(),
    },
)


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.lists(st.integers(200, 40000), min_size=3, max_size=20), options=sampling)
def test_both_transports_stream_byte_identical_text(two_routers, prompt, options):
    routers = two_routers.routers
    # Warmed first, so both runs find the same prefix cached and compute the same prefill.
    two_routers.call(stream_text(routers["per_request"], prompt, max_tokens=1))
    per_request = two_routers.call(stream_text(routers["per_request"], prompt, **options))
    multiplexed = two_routers.call(stream_text(routers["multiplexed"], prompt, **options))
    assert multiplexed[0] == per_request[0] == per_request[1].text == multiplexed[1].text
    assert multiplexed[1].finish_reason == per_request[1].finish_reason
    assert multiplexed[1].usage.completion_tokens == per_request[1].usage.completion_tokens


def test_many_concurrent_streams_share_one_call_and_each_gets_its_own_tokens(two_routers):
    running = two_routers.routers["multiplexed"]

    async def scenario():
        outputs = await asyncio.gather(
            *(
                stream_text(running, [300 + n, 301, 302, 303], max_tokens=5 + n % 7, ignore_eos=True)
                for n in range(24)
            )
        )
        connections = list(running.router._connections.values())
        return outputs, connections

    outputs, connections = two_routers.call(scenario())
    for n, (text, result) in enumerate(outputs):
        assert result.usage.completion_tokens == 5 + n % 7 and text == result.text
    # One connection (one call) to the one worker, with no request left open on it.
    assert len(connections) == 1 and len(connections[0]) == 0


def test_a_caller_leaving_mid_stream_cancels_its_request_and_frees_its_pages(two_routers, own_worker):
    running = two_routers.routers["multiplexed"]
    endpoint = running.registry.all()[0]

    async def load() -> worker_pb2.LoadReport:
        return (await endpoint.stub.GetLoadReport(worker_pb2.GetLoadReportRequest(), timeout=10)).report

    async def scenario():
        before = await load()
        async with client_for(running, "alice") as client:
            received = 0
            async for message in client.stream(list(range(500, 540)), max_tokens=450, ignore_eos=True):
                received += len(message.delta.token_ids)
                if received >= 2:
                    break  # the client hangs up
        reports = []

        async def idle() -> bool:
            reports.append(await load())
            return reports[-1].running_requests == 0

        for _ in range(200):
            if await idle():
                break
            await asyncio.sleep(0.05)
        return before, reports[-1], len(running.router._connections[endpoint.channel])

    before, after, open_on_call = two_routers.call(scenario())
    assert after.running_requests == 0 and after.running_tokens == 0
    assert after.free_pages >= before.free_pages - (40 // 4 + 2)
    assert open_on_call == 0


def test_a_request_the_worker_refuses_fails_alone_while_others_on_the_call_finish(two_routers):
    running = two_routers.routers["multiplexed"]

    async def scenario():
        good = [stream_text(running, [700 + n, 701, 702], max_tokens=6, ignore_eos=True) for n in range(4)]
        # Longer than the worker's context: refused by the worker with INVALID_ARGUMENT.
        bad = stream_text(running, list(range(1000, 1000 + 3000)), max_tokens=4)
        return await asyncio.gather(*good, bad, return_exceptions=True)

    *good, bad = two_routers.call(scenario())
    assert all(text == result.text and result.usage.completion_tokens == 6 for text, result in good)
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


def test_a_killed_worker_that_still_looked_healthy_is_retried_before_the_first_token(
    spawn_workers, tiny_model_dir
):
    workers = spawn_workers(2)
    config = with_transport(router_config(tiny_model_dir, workers, policy="round_robin"), "multiplexed")
    # Slow health checks: the router routes to the dead worker before it notices.
    config = replace(config, registry=replace(config.registry, health_check_interval_s=30.0))

    async def scenario():
        async with running_router(config) as running:
            async with client_for(running, "carol") as client:
                # Both calls open before the kill, so the dead worker's call breaks under a request.
                warm = [await client.generate(f"warm {n}", max_tokens=1, ignore_eos=True) for n in range(2)]
                workers[0].kill()
                outputs = [await client.generate(f"try {n}", max_tokens=2, ignore_eos=True) for n in range(2)]
            return warm, outputs, [w.worker_id for w in running.registry.healthy()]

    warm, outputs, healthy = asyncio.run(scenario())
    assert {o.result.worker_id for o in warm} == {worker_id(w) for w in workers}
    assert {o.result.worker_id for o in outputs} == {worker_id(workers[1])}
    assert healthy == [worker_id(workers[1])]


def test_the_worker_refuses_a_multiplexed_router_without_the_identity_secret(own_worker, tiny_model_dir):
    config = with_transport(router_config(tiny_model_dir, [own_worker]), "multiplexed", max_attempts=1)

    async def scenario():
        async with running_router(config) as running:
            async with client_for(running, "bob", max_attempts=1) as client:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await client.generate([900, 901, 902], max_tokens=2)
        return failure.value

    error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "signed" in error.details()


def signed_request(request_id: str, max_tokens: int) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=request_id,
        client_id="alice",
        client_weight=1.0,
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=[800, 801, 802, 803, 804])),
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


def start_signed(connection: MultiplexedConnection, request_id: str, max_tokens: int) -> MultiplexedRequest:
    request = signed_request(request_id, max_tokens)
    signature = identity_signature(SECRET, "alice", 1.0, request_id)
    return connection.start(request, signature, {})


def test_a_request_read_after_the_worker_finished_gets_everything_as_one_delta(own_worker):
    async def scenario():
        async with grpc.aio.insecure_channel(own_worker.address) as channel:
            connection = MultiplexedConnection(channel, "own")
            stream = start_signed(connection, "behind-1", 24).stream(StreamBook("alice", 1.0, None, 0))  # type: ignore[arg-type]
            await wait_until(lambda: stream.complete, "the request's result read")
            delta, result = await stream.take()
            connection.close()
            return delta, result

    delta, result = asyncio.run(scenario())
    assert len(delta.delta.token_ids) == 24 == result.result.usage.completion_tokens
    assert delta.delta.text == result.result.text


async def read_to_end(request: MultiplexedRequest):
    """The request's result, reading every delta before it; raises the request's end instead."""
    while True:
        _, result = await request.take()
        if result is not None:
            return result


def test_cancelling_one_request_or_closing_the_connection_ends_them_as_a_cancelled_call_would(own_worker):
    async def scenario():
        async with grpc.aio.insecure_channel(own_worker.address) as channel:
            connection = MultiplexedConnection(channel, "own")
            cancelled = start_signed(connection, "cancel-1", 400)
            finishing = start_signed(connection, "cancel-2", 6)
            left_open = start_signed(connection, "cancel-3", 400)
            await cancelled.take()
            assert cancelled.cancel() and cancelled.done()
            assert not cancelled.cancel()  # once
            with pytest.raises(CallCancelledError):
                await read_to_end(cancelled)
            result = await read_to_end(finishing)
            await left_open.take()
            connection.close()  # as when the endpoint leaves the pool
            with pytest.raises(CallCancelledError):
                await read_to_end(left_open)
            with pytest.raises(grpc.aio.UsageError):
                start_signed(connection, "cancel-4", 2)
            return result, len(connection)

    result, still_open = asyncio.run(scenario())
    assert result.result.usage.completion_tokens == 6 and still_open == 0


def test_starts_larger_together_than_a_grpc_message_may_be_each_get_their_own_answer(own_worker):
    # 12 starts of ~450 KB each (150,000 three-byte token ids): together past gRPC's 4 MiB receive
    # limit, which would fail the whole call; split into messages, each is answered on its own (the
    # worker refuses each prompt as longer than its context).
    async def scenario():
        async with grpc.aio.insecure_channel(own_worker.address) as channel:
            connection = MultiplexedConnection(channel, "own")
            requests = []
            for n in range(12):
                request = signed_request(f"big-{n}", 2)
                request.prompt.token_ids.ids[:] = [40000 + n] * 150_000
                requests.append(
                    connection.start(request, identity_signature(SECRET, "alice", 1.0, f"big-{n}"), {})
                )
            errors = []
            for request in requests:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await read_to_end(request)
                errors.append(failure.value)
            connection.close()
            return errors

    errors = asyncio.run(scenario())
    assert {error.code() for error in errors} == {grpc.StatusCode.INVALID_ARGUMENT}, errors[0]
