"""Faults with real processes: workers dying, full queues, Redis going away, heartbeats stopping."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import grpc
import pytest
from support.router_stack import client_for, router_config, running_router, wait_until, worker_id

from radixfair.auth import bearer_metadata
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer
from radixfair.v1 import router_pb2, router_pb2_grpc
from radixfair_router.config import RegistryConfig


@pytest.mark.parametrize("transport", ["per_request", "multiplexed"])
def test_a_worker_dying_mid_stream_gives_unavailable_and_leaves_rotation_within_seconds(
    spawn_workers, tiny_model_dir, transport
):
    workers = spawn_workers(2)
    by_id = {worker_id(w): w for w in workers}
    config = router_config(tiny_model_dir, workers, policy="round_robin")
    config = replace(config, forward=replace(config.forward, worker_transport=transport))

    async def scenario():
        async with running_router(config) as running:
            async with client_for(running, "alice") as client:
                stream = client.stream("a long story", max_tokens=900, ignore_eos=True)
                received = 0
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    async for message in stream:
                        received += len(message.delta.token_ids)
                        if received >= 2 and by_id:
                            [victim] = [w for w in running.registry.all() if w.inflight]
                            by_id.pop(victim.worker_id).kill()
                            by_id.clear()
                await wait_until(lambda: len(running.registry.healthy()) == 1, "dead worker out", timeout_s=5)
                after = [await client.generate("next", max_tokens=2, ignore_eos=True) for _ in range(3)]
            return failure.value, victim.worker_id, after, received

    error, victim, after, received = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"worker {victim} failed after" in error.details() and "retry the request" in error.details()
    assert received >= 2
    assert all(o.result.worker_id != victim and o.result.usage.completion_tokens == 2 for o in after)


def test_a_worker_failing_before_the_first_token_is_retried_on_another(
    spawn_workers, two_workers, tiny_model_dir, redis_url
):
    # One worker refuses everything with RESOURCE_EXHAUSTED (a queue of zero), the other serves
    # (one of the session's workers: this test never stops it).
    [full] = spawn_workers(1, **{"engine.max_waiting_requests": 0})
    good = two_workers[0]

    async def scenario():
        config = router_config(tiny_model_dir, [full, good], redis_url, policy="round_robin")
        async with running_router(config) as running:
            async with client_for(running, "bob") as client:
                outputs = [
                    await client.generate(f"request {n}", max_tokens=2, ignore_eos=True) for n in range(4)
                ]
            await running.router.drain()
            retries = running.metrics.retries._value.get()
            return outputs, retries, await running.ledger.snapshot()

    outputs, retries, ledger = asyncio.run(scenario())
    assert {o.result.worker_id for o in outputs} == {worker_id(good)}
    assert retries >= 2  # round robin keeps offering the full worker; each refusal moved on
    [bob] = [r for r in ledger if r.client_id == "bob"]
    # Refused attempts are taken back: the ledger counts served requests only.
    assert (bob.requests, bob.completion_tokens, bob.inflight) == (4, 8, 0)


def test_a_killed_worker_that_still_looked_healthy_is_retried_without_the_caller_noticing(
    spawn_workers, two_workers, tiny_model_dir
):
    # Only the killed worker is the test's own; the one that serves is one of the session's.
    workers = [*spawn_workers(1), two_workers[0]]

    async def scenario():
        config = router_config(tiny_model_dir, workers, policy="round_robin")
        # Slow health checks: the router routes to the dead worker before it notices.
        config = replace(config, registry=replace(config.registry, health_check_interval_s=30.0))
        async with running_router(config) as running:
            workers[0].kill()
            async with client_for(running, "carol") as client:
                outputs = [await client.generate(f"try {n}", max_tokens=2, ignore_eos=True) for n in range(2)]
            return outputs, [w.worker_id for w in running.registry.healthy()]

    outputs, healthy = asyncio.run(scenario())
    assert {o.result.worker_id for o in outputs} == {worker_id(workers[1])}
    assert healthy == [worker_id(workers[1])]  # the failed call took it out of rotation at once


def test_no_healthy_worker_gives_a_clear_unavailable(tiny_model_dir):
    async def scenario():
        config = router_config(tiny_model_dir, [])
        config = replace(config, forward=replace(config.forward, wait_for_worker_s=0.3))
        async with running_router(config, healthy_workers=0) as running:
            async with client_for(running, "alice", max_attempts=1) as client:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await client.generate("anyone?", max_tokens=2)
        return failure.value

    error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "no healthy worker" in error.details()


@pytest.mark.parametrize("persistent", [True, False], ids=["redis-with-aof", "redis-restarts-empty"])
def test_redis_restart_loses_no_request_and_the_ledger_is_reconciled(
    two_workers, tiny_model_dir, persistent: bool, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    redis = RedisServer(RedisLaunchConfig(persistent=persistent)).start()
    try:

        async def scenario():
            async with running_router(router_config(tiny_model_dir, two_workers, redis.url)) as running:
                async with client_for(running, "alice") as client:
                    served = [await client.generate("before the outage", max_tokens=3, ignore_eos=True)]
                    await running.router.drain()
                    redis.stop_process()
                    served += [
                        await client.generate(f"during {n}", max_tokens=3, ignore_eos=True) for n in range(3)
                    ]
                    status_during = await client.status()
                    redis.start()  # same port and data directory
                    served.append(await client.generate("after the outage", max_tokens=3, ignore_eos=True))
                    await running.router.drain()
                    await wait_until(lambda: running.ledger.shared, "ledger reconnected", timeout_s=10)
                    status_after = await client.status()
                ledger = {r.client_id: r for r in await running.ledger.snapshot()}
            return served, status_during, status_after, ledger

        served, status_during, status_after, ledger = asyncio.run(scenario())
    finally:
        redis.stop()
    assert all(o.result.usage.completion_tokens == 3 for o in served)
    assert not status_during.shared_state_connected and status_after.shared_state_connected
    assert "routing on local state" in caplog.text and "reconciled 1 client(s)" in caplog.text
    alice = ledger["alice"]
    # With an append-only file Redis kept the request before the outage; without
    # one it came back empty. Either way the outage's requests were replayed.
    expected = served if persistent else served[1:]
    assert alice.requests == len(expected) and alice.inflight == 0
    assert alice.completion_tokens == sum(o.result.usage.completion_tokens for o in expected)
    assert alice.prompt_tokens == sum(o.result.usage.prompt_tokens for o in expected)


def test_workers_register_with_the_shared_token_and_leave_when_heartbeats_stop(spawn_workers, tiny_model_dir):
    async def scenario():
        config = router_config(tiny_model_dir, [])
        registry = RegistryConfig(
            heartbeat_ttl_s=1.5, health_check_interval_s=0.2, registration_token="join-secret"
        )
        config = replace(config, registry=registry)
        async with running_router(config, healthy_workers=0) as running:
            address = f"127.0.0.1:{running.port}"
            async with grpc.aio.insecure_channel(address) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                good = router_pb2.RegisterWorkerRequest(worker_id="x", address="127.0.0.1:1")
                refused = []
                for metadata in (None, bearer_metadata("wrong-secret")):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.RegisterWorker(good, metadata=metadata)
                    refused.append(caught.value)
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.RegisterWorker(
                        router_pb2.RegisterWorkerRequest(worker_id="x", address="nowhere"),
                        metadata=bearer_metadata("join-secret"),
                    )
            assert not running.registry.all()
            [worker] = await asyncio.to_thread(
                spawn_workers, 1, router_address=address, heartbeat_seconds=0.3, router_token="join-secret"
            )
            await wait_until(lambda: len(running.registry.healthy()) == 1, "worker registered")
            async with client_for(running, "bob") as client:
                served = await client.generate("hello", max_tokens=2, ignore_eos=True)
            worker.kill()
            await wait_until(lambda: not running.registry.all(), "registration expired", timeout_s=6)
            return refused, bad.value, served, worker_id(worker)

    refused, bad, served, wid = asyncio.run(scenario())
    assert [e.code() for e in refused] == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "host:port" in bad.details()
    assert served.result.worker_id == wid
