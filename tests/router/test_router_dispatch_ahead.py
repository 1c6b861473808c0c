"""Dispatch ahead of the admission, through real routers, real workers and a real Redis.

Router A starts each worker call on the worker its forecast names while the admission runs. Router B
spends the client's credit on that worker meanwhile, which A cannot see: A's next forecast is wrong.
The admission still decides: the request is served, whole, by the worker the admission chose; the
early call is cancelled before it finishes (the worker it reached never completes that request); and
the ledger books exactly what was served.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.dispatch_ahead_checks import dispatch_ahead_counts, finished_once_idle
from support.router_stack import (
    client_for,
    metered_workers,
    router_config,
    running_router,
)

from radixfair_router.config import CostConfig

PREFIX = list(range(31_000, 31_048))
QUANTUM = 100.0
# Long enough that an early call left running would finish this many decode steps on its worker
# (and count as finished there) long after the cancel, which leaves one event-loop turn after Redis
# answers.
MISSED_TOKENS = 64


def prompt(n: int) -> list[int]:
    return PREFIX + [31_900 + n] * 4


def test_a_wrong_forecast_is_cancelled_and_the_admission_decides(
    tiny_model_dir: Path, tmp_path: Path, redis_url: str
):
    with metered_workers(tiny_model_dir, tmp_path) as (workers, urls):
        outcome = asyncio.run(_scenario(workers, urls, tiny_model_dir, redis_url))
    results, missed, ahead, ledger, finished = outcome
    first_worker = results[0].worker_id
    other = next(r.worker_id for r in results if r.worker_id != first_worker)
    # The admission sent the last request elsewhere than A's forecast (A's first worker), and the
    # client got all of it from there.
    assert missed.result.worker_id == other
    assert missed.result.usage.completion_tokens == MISSED_TOKENS
    assert len(missed.token_ids) == MISSED_TOKENS
    assert ahead == {"hit": 1.0, "miss": 1.0}
    # The worker the early call reached finished only the requests the ledger placed there.
    assert finished[first_worker] == sum(r.worker_id == first_worker for r in results)
    assert finished[other] == sum(r.worker_id == other for r in results) + 1
    # The ledger booked what was served, nothing for the cancelled call.
    (record,) = [r for r in ledger if r.client_id == "alice"]
    served = [*results, missed.result]
    costs = CostConfig()
    assert record.requests == len(served) and record.inflight == 0
    assert record.completion_tokens == sum(r.usage.completion_tokens for r in served)
    assert record.service == pytest.approx(
        sum(
            costs.input_token_weight * (r.usage.prompt_tokens - r.usage.cached_tokens)
            + costs.output_token_weight * r.usage.completion_tokens
            for r in served
        )
    )


async def _scenario(workers, urls: dict[str, str], tiny_model_dir: Path, redis_url: str):
    # A balance threshold above anything here, so only deficits decide where alice goes.
    config = router_config(
        tiny_model_dir, workers, redis_url, policy="d2lpm", quantum=QUANTUM, balance_abs_threshold=64
    )
    async with running_router(config) as router_a, running_router(config) as router_b:
        async with client_for(router_a, "alice") as via_a, client_for(router_b, "alice") as via_b:
            results = [(await via_a.generate(prompt(0), max_tokens=2, ignore_eos=True)).result]
            first_worker = results[0].worker_id
            # B spends alice's credit on that worker until its admission sends her elsewhere.
            for n in range(1, 40):
                results.append((await via_b.generate(prompt(n), max_tokens=2, ignore_eos=True)).result)
                if results[-1].worker_id != first_worker:
                    break
            else:
                raise AssertionError("router B never moved alice off her first worker")
            # It extends A's first prompt, so A's first worker matches it longest whatever the other
            # worker has cached since: A's forecast names that worker, where alice has no credit left.
            missed = await via_a.generate(prompt(0) + [31_990] * 8, max_tokens=MISSED_TOKENS, ignore_eos=True)
        await asyncio.gather(router_a.router.drain(), router_b.router.drain())
        ahead = dispatch_ahead_counts(router_a)
        ledger = await router_a.ledger.snapshot()

        finished = await finished_once_idle(urls, "alice")
    return results, missed, ahead, ledger, finished
