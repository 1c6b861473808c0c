"""With no router killed, the ledger books exactly the output tokens each client received.

Issue 12's rule (notes/DECISIONS.md): a router books each message before relaying it, so the
ledger is never below what a client got; only a router killed between a booking and its socket
write can leave it above, by one message per stream cut. With the router alive, the ledger in a
real redis-server must equal, per client, the tokens counted in the stream deltas the client read,
whatever else happens: concurrent clients on two workers, and a worker killed (SIGKILL) while
streams on it are mid-way, so they end UNAVAILABLE after some tokens.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack

import grpc
from support.router_stack import client_for, router_config, running_router, wait_until, worker_id

# Long enough that every stream is still decoding when the worker is killed.
LONG_STREAM_TOKENS = 80
SHORT_STREAM_TOKENS = 5


def test_the_ledger_books_exactly_the_tokens_each_client_received_when_no_router_is_killed(
    spawn_workers, two_workers, tiny_model_dir, redis_url
):
    # The killed worker is the test's own; the other is one of the session's (never killed).
    [victim], survivor = spawn_workers(1), two_workers[0]
    workers = [victim, survivor]

    async def scenario():
        config = router_config(tiny_model_dir, workers, redis_url, policy="round_robin")
        received: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        flowing = {"streams": 0}
        async with running_router(config) as running, AsyncExitStack() as opened:
            # No retry by the client: a stream that fails stays failed, with what it got.
            clients = {
                cid: await opened.enter_async_context(client_for(running, cid, max_attempts=1))
                for cid in ("alice", "bob", "carol")
            }

            async def stream(client_id: str, prompt: str, max_tokens: int) -> None:
                got = 0
                try:
                    async for message in clients[client_id].stream(
                        prompt, max_tokens=max_tokens, ignore_eos=True
                    ):
                        count = len(message.delta.token_ids) if message.HasField("delta") else 0
                        received[client_id] += count
                        if got == 0 and count:
                            flowing["streams"] += 1
                        got += count
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1

            shorts = [
                stream(cid, f"ledger short {cid} {n}", SHORT_STREAM_TOKENS)
                for cid in clients
                for n in range(2)
            ]
            await asyncio.gather(*shorts)
            flowing["streams"] = 0
            long = [
                asyncio.create_task(stream(cid, f"ledger long {cid} {n}", LONG_STREAM_TOKENS))
                for cid in ("alice", "bob")
                for n in range(2)
            ]
            await wait_until(lambda: flowing["streams"] == len(long), "every long stream flowing")
            # Round robin alternates, so the victim holds half the long streams, mid-way.
            assert running.registry.get(worker_id(victim)).inflight >= 1
            victim.kill()
            await asyncio.gather(*long)
            await running.router.drain()
            await wait_until(lambda: running.ledger.shared, "the ledger on Redis")
            return received, outcomes, await running.ledger.snapshot()

    received, outcomes, ledger = asyncio.run(scenario())
    # The kill cut at least one stream mid-way (the case where booking could go wrong).
    assert outcomes["UNAVAILABLE"] >= 1 and outcomes["OK"] >= 6, outcomes
    booked = {record.client_id: record.completion_tokens for record in ledger}
    assert booked == dict(received)
