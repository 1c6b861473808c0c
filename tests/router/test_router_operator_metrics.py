"""The router's operator metrics, read from its real /metrics endpoint after real requests."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from support.metrics_scrape import Scrape, scrape
from support.ports import free_port
from support.router_stack import client_for, router_config, running_router, wait_until

from radixfair.client import ClientConfig, RouterClient
from radixfair.metrics import MetricsConfig
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer
from radixfair_router.config import ForwardConfig, StaticWorker

TTFT = "radixfair_router_time_to_first_token_seconds_count"
INTER_TOKEN = "radixfair_router_inter_token_seconds_count"
DURATION = "radixfair_router_request_duration_seconds_count"
REJECTED = "radixfair_router_rejected_requests_total"


def metrics_config(config, max_client_labels: int = 64):
    port = free_port()
    return replace(config, metrics_port=port, metrics=MetricsConfig(max_client_labels)), (
        f"http://127.0.0.1:{port}/metrics"
    )


async def scrape_now(url: str) -> Scrape:
    return await asyncio.to_thread(scrape, url)


def test_served_requests_are_timed_end_to_end_and_latency_labels_stop_at_the_client_bound(
    two_workers, tiny_model_dir, redis_url
):
    config, url = metrics_config(router_config(tiny_model_dir, two_workers, redis_url), max_client_labels=1)

    async def scenario():
        async with running_router(config) as running:
            for client_id in ("alice", "bob", "carol"):
                async with client_for(running, client_id) as client:
                    await client.generate(f"hello from {client_id}", max_tokens=3, ignore_eos=True)
            # The loop-lag watcher samples every 50 ms: two of its intervals, whatever the requests took.
            await asyncio.sleep(0.1)
            return await scrape_now(url)

    metrics = asyncio.run(scenario())
    assert metrics.value(DURATION, outcome="ok") == 3
    # The first client keeps its label; the second and third share "other".
    assert metrics.label_values(TTFT, "client") == {"alice", "other"}
    assert metrics.value(TTFT, client="alice") == 1 and metrics.value(TTFT, client="other") == 2
    assert metrics.label_values(INTER_TOKEN, "client") <= {"alice", "other"}
    assert metrics.value("radixfair_router_healthy_workers") == 2
    # Current without anyone calling GetStatus.
    assert metrics.value("radixfair_router_shared_state_connected") == 1
    assert metrics.value(REJECTED, reason="invalid_argument") == 0
    assert metrics.value("radixfair_router_event_loop_lag_seconds_count") >= 1


def test_rejected_requests_are_counted_by_reason(two_workers, tiny_model_dir):
    config, url = metrics_config(router_config(tiny_model_dir, two_workers))

    async def scenario():
        async with running_router(config) as running:
            async with client_for(running, "alice") as client:
                for sampling in ({"max_tokens": -1}, {"temperature": -2.0}):
                    with pytest.raises(grpc.aio.AioRpcError) as bad:
                        await client.generate("bad", **sampling)
                    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            address = f"127.0.0.1:{running.port}"
            async with RouterClient(ClientConfig(address, "no-such-key", max_attempts=1)) as stranger:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stranger.generate("let me in", max_tokens=2)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            return await scrape_now(url)

    metrics = asyncio.run(scenario())
    assert metrics.value(REJECTED, reason="invalid_argument") == 2
    assert metrics.value(REJECTED, reason="unauthenticated") == 1
    assert metrics.value(DURATION, outcome="error") == 3
    assert metrics.value("radixfair_router_cancelled_requests_total") == 0


def test_no_healthy_worker_is_a_no_worker_rejection_and_the_gauge_says_zero(tiny_model_dir):
    base = router_config(tiny_model_dir, [])
    config, url = metrics_config(
        replace(
            base,
            registry=replace(base.registry, workers=(StaticWorker("gone", f"127.0.0.1:{free_port()}"),)),
            forward=ForwardConfig(wait_for_worker_s=0.2),
        )
    )

    async def scenario():
        async with running_router(config, healthy_workers=0) as running:
            async with client_for(running, "alice", max_attempts=1) as client:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await client.generate("anyone?", max_tokens=2)
            return failure.value, await scrape_now(url)

    error, metrics = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert metrics.value(REJECTED, reason="no_worker") == 1
    assert metrics.value("radixfair_router_healthy_workers") == 0


def test_a_caller_hanging_up_mid_stream_is_counted_cancelled(two_workers, tiny_model_dir):
    config, url = metrics_config(router_config(tiny_model_dir, two_workers))

    async def scenario():
        async with running_router(config) as running:
            async with client_for(running, "carol") as client:
                stream = client.stream("talk for a long time", max_tokens=900, ignore_eos=True)
                async for message in stream:
                    if message.delta.token_ids:
                        break
                await stream.aclose()
            await wait_until(
                lambda: scrape(url).value("radixfair_router_cancelled_requests_total") == 1,
                "the cancelled request counted",
            )
            return await scrape_now(url)

    metrics = asyncio.run(scenario())
    assert metrics.value(DURATION, outcome="cancelled") == 1
    assert metrics.value(DURATION, outcome="ok") == 0
    assert sum(v for (name, _), v in metrics.samples.items() if name == REJECTED) == 0


def test_shared_state_connected_follows_redis_without_anyone_asking_for_status(two_workers, tiny_model_dir):
    redis = RedisServer(RedisLaunchConfig(persistent=False)).start()
    try:
        config, url = metrics_config(router_config(tiny_model_dir, two_workers, redis.url))

        async def scenario():
            async with running_router(config) as running:
                async with client_for(running, "alice") as client:
                    await client.generate("before the outage", max_tokens=2, ignore_eos=True)
                    await running.router.drain()
                    before = await scrape_now(url)
                    redis.stop_process()
                    await client.generate("during the outage", max_tokens=2, ignore_eos=True)
                    during = await scrape_now(url)
                    redis.start()
                    await client.generate("after the outage", max_tokens=2, ignore_eos=True)
                    await wait_until(lambda: running.ledger.shared, "ledger reconnected", timeout_s=10)
                    after = await scrape_now(url)
            return before, during, after

        before, during, after = asyncio.run(scenario())
    finally:
        redis.stop()
    connected = "radixfair_router_shared_state_connected"
    assert [s.value(connected) for s in (before, during, after)] == [1, 0, 1]
    assert during.value("radixfair_router_shared_state_degraded_transitions") == 1
