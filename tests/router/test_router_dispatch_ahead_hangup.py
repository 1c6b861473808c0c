"""A caller who hangs up while its decision waits for its turn starts no worker call.

Decisions are taken one at a time per router. Alice's admission is held in a paused Redis (CLIENT
PAUSE WRITE holds every script), so Bob's decision waits for its turn in its own task. Bob hangs up
there. When Redis answers, Bob's decision still runs (its admission is then refunded), and its
forecast is firm: the dispatch ahead must not start a worker call for a caller who has left. Such a
call would run to its last token on the worker with nobody to read it, under a forward span that
never ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import redis.asyncio as aioredis
from opentelemetry import trace
from support.metrics_scrape import scrape
from support.ports import free_port
from support.router_stack import client_for, router_config, running_router, wait_until

from radixfair.auth import Principal
from radixfair.v1 import generation_pb2
from radixfair_router.request_validation import ValidatedRequest

PREFIX = list(range(32_000, 32_040))
TOKENS = 16


def _request(request_id: str, tail: int) -> ValidatedRequest:
    sampling = generation_pb2.SamplingParams(temperature=0.0, max_tokens=TOKENS, ignore_eos=True)
    return ValidatedRequest(request_id, tuple(PREFIX + [tail] * 4), sampling, "")


async def _consume(router, request: ValidatedRequest, client_id: str, kept: list[BaseException]) -> None:
    try:
        async for _ in router.generate(request, Principal(client_id, 1.0), trace.INVALID_SPAN):
            pass
    except asyncio.CancelledError as error:
        # Held, as a server's handler may hold it a while: the frames it keeps must not keep a call.
        kept.append(error)
        raise


def test_a_caller_gone_while_its_decision_waits_starts_no_worker_call(
    spawn_workers, tiny_model_dir: Path, redis_url: str
):
    metrics_port = free_port()
    [worker] = spawn_workers(1, metrics_port=metrics_port)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    # Redis answers nothing while paused: the socket timeout must outlast the pause.
    config = router_config(tiny_model_dir, [worker], redis_url, policy="d2lpm", quantum=10_000.0)
    config = replace(config, ledger=replace(config.ledger, redis_timeout_s=60.0))

    async def scenario():
        async with running_router(config) as running:
            router, lock = running.router, running.router.core._deciding
            pauser = aioredis.Redis.from_url(redis_url)
            kept: list[BaseException] = []
            await pauser.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            try:
                alice = asyncio.create_task(_consume(router, _request("a-1", 1), "alice", kept))
                await wait_until(lock.locked, "alice's admission in Redis")
                bob = asyncio.create_task(_consume(router, _request("b-1", 2), "bob", kept))
                await wait_until(lambda: len(lock._waiters or ()) == 1, "bob's decision waiting its turn")
                bob.cancel()
                await asyncio.wait([bob])
            finally:
                await pauser.execute_command("CLIENT", "UNPAUSE")
                await pauser.aclose()
            await alice
            await wait_until(lambda: not lock.locked() and not lock._waiters, "bob's decision taken")
            await router.drain()
            # A later call on the same channel: the worker received anything sent before it first.
            async with client_for(running, "carol") as carol:
                await carol.generate(PREFIX + [3] * 4, max_tokens=TOKENS, ignore_eos=True)

            def idle() -> bool:
                metrics = scrape(url)
                return (
                    metrics.value("radixfair_worker_running_requests")
                    + metrics.value("radixfair_worker_queue_depth")
                    == 0
                )

            await wait_until(idle, "the worker idle")
            served = {c: _served(url, c) for c in ("alice", "bob", "carol")}
            ledger = {r.client_id: r for r in await running.ledger.snapshot()}
            return bob.cancelled(), served, ledger

    bob_cancelled, served, ledger = asyncio.run(scenario())
    assert bob_cancelled
    assert served == {"alice": 1.0, "bob": 0.0, "carol": 1.0}
    # Bob's admission, taken after he left, was refunded.
    assert ledger["bob"].requests == 0 and ledger["bob"].inflight == 0
    assert ledger["alice"].requests == 1 and ledger["alice"].inflight == 0


def _served(url: str, client: str) -> float:
    metrics = scrape(url)
    return sum(metrics.value("radixfair_worker_requests_total", client=client, finish_reason=r)
               for r in ("length", "stop"))  # fmt: skip
