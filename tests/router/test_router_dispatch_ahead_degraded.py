"""Dispatch ahead when Redis stops answering during the admission.

The forecast names the worker where alice still has credit as this router last read it back, and the
call starts there. Redis answers nothing (CLIENT PAUSE WRITE holds every script), so the admission
times out and the ledger decides from local state, which knows none of alice's history: another
worker. The early call is cancelled, the request is served whole by the worker the local admission
chose, and once Redis is back the ledger holds the service on that worker, not on the forecast's.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.dispatch_ahead_checks import dispatch_ahead_counts, finished_once_idle
from support.router_stack import (
    client_for,
    metered_workers,
    router_config,
    running_router,
    wait_until,
)

from radixfair_router.config import CostConfig

PREFIX = list(range(34_000, 34_048))
QUANTUM = 100.0
TOKENS = 32


def test_an_admission_redis_never_answers_decides_locally_and_cancels_the_early_call(
    tiny_model_dir: Path, tmp_path: Path, redis_url: str
):
    with metered_workers(tiny_model_dir, tmp_path) as (workers, urls):
        spans = InMemorySpanExporter()
        first, second, ahead, record, finished = asyncio.run(
            _scenario(workers, urls, tiny_model_dir, redis_url, spans)
        )
    # Alice's first request spent her credit on her first worker; the forecast then named the other.
    other = next(w for w in urls if w != first.worker_id)
    assert ahead == {"hit": 1.0, "miss": 1.0}
    # The local admission knows no history: the longest match, her first worker, served all of it.
    assert second.result.worker_id == first.worker_id
    assert len(second.token_ids) == TOKENS
    # The early call ran while the admission waited for Redis' timeout, so it may have finished on
    # the other worker: a miss costs what the worker did during the admission, never the client's text.
    assert finished[first.worker_id] == 2.0
    # Three forward spans, all ended: the two served, and the early call, marked abandoned.
    forwards = [s for s in spans.get_finished_spans() if s.name == "router.forward"]
    abandoned = [s for s in forwards if "radixfair.abandoned" in s.attributes]
    assert len(forwards) == 3
    assert [s.attributes["radixfair.worker_id"] for s in abandoned] == [other]
    # What Redis holds once it is back: both requests, served and booked on her first worker only.
    costs = CostConfig()
    served = [first, second.result]
    assert record.requests == 2 and record.inflight == 0
    assert record.deficits.get(other, QUANTUM) == QUANTUM
    assert record.service == pytest.approx(
        sum(
            costs.input_token_weight * (r.usage.prompt_tokens - r.usage.cached_tokens)
            + costs.output_token_weight * r.usage.completion_tokens
            for r in served
        )
    )


async def _scenario(workers, urls: dict[str, str], tiny_model_dir: Path, redis_url: str, spans):
    config = router_config(
        tiny_model_dir, workers, redis_url, policy="d2lpm", quantum=QUANTUM, balance_abs_threshold=64
    )
    config = replace(config, ledger=replace(config.ledger, redis_timeout_s=0.5))
    async with running_router(config, spans) as running:
        async with client_for(running, "alice") as alice:
            first = (await alice.generate(PREFIX, max_tokens=TOKENS, ignore_eos=True)).result
            await running.router.drain()
            pauser = aioredis.Redis.from_url(redis_url)
            await pauser.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            try:
                second = await alice.generate(PREFIX + [34_900] * 8, max_tokens=TOKENS, ignore_eos=True)
                assert not running.ledger.shared
            finally:
                await pauser.execute_command("CLIENT", "UNPAUSE")
                await pauser.aclose()
        await wait_until(lambda: running.ledger.shared, "the ledger back on Redis")
        await running.router.drain()
        ahead = dispatch_ahead_counts(running)
        (record,) = [r for r in await running.ledger.snapshot() if r.client_id == "alice"]

        finished = await finished_once_idle(urls, "alice")
    return first, second, ahead, record, finished
