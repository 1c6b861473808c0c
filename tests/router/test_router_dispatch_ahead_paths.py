"""Dispatch ahead on the paths a production stack takes besides the plain one, with a Redis ledger
(the admission is local, and nothing is dispatched ahead, with the in-process one): a worker whose
channel closed between the forecast and the call, and workers that serve only signed identities."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from support.router_stack import client_for, router_config, running_router

SECRET = "shared-between-routers-and-workers-ahead"


def test_a_forecast_onto_a_closed_channel_is_served_elsewhere_and_leaves_nothing_in_flight(
    two_workers, tiny_model_dir, redis_url
):
    async def scenario():
        # Round robin: a "fixed" admission, so every request is dispatched ahead onto its own turn.
        config = router_config(tiny_model_dir, two_workers, redis_url, policy="round_robin")
        async with running_router(config) as running:
            # What the registry does when a worker misses its heartbeats, minus taking it out of the
            # healthy list: the forecast names a worker whose channel is closed.
            closed = running.registry.healthy()[0]
            await closed.channel.close()
            async with client_for(running, "alice") as client:
                outputs = [
                    await client.generate([35_000, 35_001, n], max_tokens=2, ignore_eos=True)
                    for n in (1, 2, 3)
                ]
            await running.router.drain()  # waits for the settlements
            record = next(r for r in await running.ledger.snapshot() if r.client_id == "alice")
            counted = running.metrics.registry.get_sample_value
            hits = counted("radixfair_router_dispatch_ahead_total", {"outcome": "hit"})
            return closed.worker_id, outputs, record, hits

    closed_id, outputs, record, hits = asyncio.run(scenario())
    assert all(len(o.token_ids) == 2 for o in outputs)
    assert all(o.result.worker_id != closed_id for o in outputs)
    assert record.requests == 3 and record.inflight == 0
    # Every request served was dispatched ahead onto the worker it was served by.
    assert hits == 3.0


def test_a_signed_identity_is_served_from_the_call_dispatched_ahead(spawn_workers, tiny_model_dir, redis_url):
    [worker] = spawn_workers(1, identity_secret=SECRET)
    config = router_config(tiny_model_dir, [worker], redis_url, policy="d2lpm", quantum=10_000.0)
    config = replace(config, forward=replace(config.forward, identity_secret=SECRET))

    async def scenario():
        async with running_router(config) as running:
            async with client_for(running, "carol") as client:
                outputs = [
                    await client.generate([35_100, 35_101, n], max_tokens=3, ignore_eos=True) for n in (1, 2)
                ]
            counted = running.metrics.registry.get_sample_value
            return outputs, counted("radixfair_router_dispatch_ahead_total", {"outcome": "hit"})

    outputs, hits = asyncio.run(scenario())
    assert [len(o.token_ids) for o in outputs] == [3, 3]
    assert hits == 2.0
