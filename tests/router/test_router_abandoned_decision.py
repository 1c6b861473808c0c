"""A caller who hangs up while its request is being admitted (a Redis round trip) leaves nothing booked.

Redis is stalled (DEBUG SLEEP) below the router's Redis timeout, so the admission waits in flight
and then runs; the caller cancels during the stall. Nobody was served: once Redis answers, the
admission is taken back, and the client is neither in flight nor charged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import redis
from support.router_stack import client_for, router_config, running_router

STALL_S = 4.0
CANCEL_AFTER_S = 1.0


def test_a_caller_leaving_during_its_admission_leaves_no_request_in_flight_or_charged(
    two_workers, tiny_model_dir, redis_url
):
    config = router_config(tiny_model_dir, two_workers, redis_url)
    # Redis answering within its timeout: the stall is a slow admission, not an outage.
    config = replace(config, ledger=replace(config.ledger, redis_timeout_s=4 * STALL_S))

    async def scenario():
        async with running_router(config) as running:
            stall = threading.Thread(
                target=lambda: redis.Redis.from_url(redis_url).execute_command("DEBUG", "SLEEP", STALL_S)
            )
            async with client_for(running, "alice", max_attempts=1) as client:

                async def ask() -> None:
                    async for _ in client.stream(list(range(41000, 41010)), max_tokens=3):
                        pass

                stall.start()
                await asyncio.sleep(0.1)  # the stall has begun: the admission will wait behind it
                asking = asyncio.create_task(ask())
                await asyncio.sleep(CANCEL_AFTER_S)
                asking.cancel()
                await asyncio.gather(asking, return_exceptions=True)
            await asyncio.to_thread(stall.join)
            deadline = time.monotonic() + 30.0
            while True:
                await running.router.drain()
                alice = next((r for r in await running.ledger.snapshot() if r.client_id == "alice"), None)
                if alice is not None and alice.inflight == 0 or time.monotonic() > deadline:
                    return alice, running.ledger.degraded_transitions

    alice, degraded = asyncio.run(scenario())
    assert degraded == 0
    assert alice is not None  # the admission did reach Redis
    assert (alice.inflight, alice.requests, alice.prompt_tokens, alice.completion_tokens) == (0, 0, 0, 0)
    assert alice.service == 0.0
