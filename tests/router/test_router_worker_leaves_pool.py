"""A worker that leaves the pool mid-stream (its heartbeats lapse, the router closes its channel).

Closing a channel cancels every call on it, which the relay used to take for the caller hanging up
(review finding 2): a request with no token yet was not retried, and a stream with tokens ended
CANCELLED. Here the worker is a real process, frozen (SIGSTOP) so its stream is silent, registered by
heartbeat and then left to lapse. The silent-stream and idle limits are set far above the test's
bounds, so only the channel closing can end these streams.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

import grpc
import pytest
from support.router_stack import client_for, router_config, running_router, wait_until, worker_id

from radixfair.auth import bearer_metadata
from radixfair.v1 import router_pb2, router_pb2_grpc

TOKEN = "join-token-for-the-leaving-test"
TTL_S = 3.0
# Health checks time out slowly, so the frozen worker stays in rotation long enough to be routed to;
# its registration lapses after TTL_S regardless.
CHECK_TIMEOUT_S = 5.0
ENDS_WITHIN_S = 90.0


def leaving_config(tiny_model_dir):
    config = router_config(tiny_model_dir, [], policy="round_robin")
    registry = replace(
        config.registry,
        registration_token=TOKEN,
        heartbeat_ttl_s=TTL_S,
        health_check_timeout_s=CHECK_TIMEOUT_S,
    )
    forward = replace(config.forward, stream_idle_timeout_s=600.0, unhealthy_stream_silence_s=600.0)
    return replace(config, registry=registry, forward=forward)


async def register(port: int, worker_id: str, address: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.RegisterWorkerRequest(worker_id=worker_id, address=address)
        await stub.RegisterWorker(request, metadata=bearer_metadata(TOKEN))


async def heartbeat(port: int, worker_id: str, address: str) -> None:
    while True:
        await register(port, worker_id, address)
        await asyncio.sleep(TTL_S / 4)


def test_a_worker_leaving_the_pool_retries_its_unstarted_stream_and_fails_its_started_one(
    spawn_workers, two_workers, tiny_model_dir
):
    # The frozen worker is the test's own; the one staying is one of the session's (never frozen).
    [leaving], staying = spawn_workers(1), two_workers[0]
    frozen: list[bool] = []

    def freeze() -> None:
        leaving.process.send_signal(signal.SIGSTOP)
        frozen.append(True)

    async def scenario():
        async with running_router(leaving_config(tiny_model_dir), healthy_workers=0) as running:
            port = running.port
            beats = asyncio.create_task(heartbeat(port, "b-staying", staying.address))
            await register(port, "a-leaving", leaving.address)  # once: it lapses after TTL_S
            await wait_until(lambda: len(running.registry.healthy()) == 2, "both workers healthy")
            async with client_for(running, "alice", max_attempts=1) as client:
                # 1. No token yet: round robin sends the first request to a-leaving, which is frozen.
                freeze()
                unstarted = await asyncio.wait_for(
                    client.generate("left before a token", max_tokens=3, ignore_eos=True), ENDS_WITHIN_S
                )
                await wait_until(lambda: running.registry.get("a-leaving") is None, "a-leaving dropped")

                # 2. Tokens flowed: a-leaving back, heartbeating, takes the next turn; frozen mid-stream.
                leaving.process.send_signal(signal.SIGCONT)
                frozen.clear()
                leaving_beats = asyncio.create_task(heartbeat(port, "a-leaving", leaving.address))
                await wait_until(lambda: len(running.registry.healthy()) == 2, "a-leaving back")
                received = 0

                async def read() -> None:
                    nonlocal received
                    async for message in client.stream("a long story", max_tokens=100_000, ignore_eos=True):
                        received += len(message.delta.token_ids)
                        if received and not frozen:
                            assert running.registry.get("a-leaving").inflight == 1
                            leaving_beats.cancel()
                            freeze()

                with pytest.raises(grpc.aio.AioRpcError) as started:
                    await asyncio.wait_for(read(), ENDS_WITHIN_S)
            beats.cancel()
            retries = running.metrics.retries._value.get()
            return unstarted, retries, started.value, received

    try:
        unstarted, retries, error, received = asyncio.run(scenario())
    finally:
        if frozen:
            leaving.process.send_signal(signal.SIGCONT)
    assert unstarted.result.worker_id == worker_id(staying)
    assert unstarted.result.usage.completion_tokens == 3 and retries >= 1
    assert received > 0
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "left the pool" in error.details() and "retry the request" in error.details()
