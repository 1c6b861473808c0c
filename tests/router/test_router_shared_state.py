"""Two routers on one Redis: one ledger, exact totals, and D2LPM spreading a hot client over workers."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from support.router_stack import CLIENTS, client_for, router_config, running_router, wait_until, worker_id

from radixfair_router.config import CostConfig

_starts = itertools.count(20_000, 1000)


def hot_prompts(count: int) -> list[list[int]]:
    """Prompts sharing a 48-token prefix, each with its own 4-token tail."""
    start = next(_starts)
    prefix = list(range(start, start + 48))
    return [prefix + [start + 900 + n] * 4 for n in range(count)]


def cold_prompts(count: int) -> list[list[int]]:
    start = next(_starts)
    return [list(range(start + 40 * n, start + 40 * n + 24)) for n in range(count)]


def test_two_routers_on_one_redis_keep_one_ledger_whose_totals_match_the_tokens_served(
    two_workers, tiny_model_dir, redis_url
):
    workload = {"alice": hot_prompts(8), "bob": cold_prompts(8), "carol": hot_prompts(8)}

    async def scenario():
        config = router_config(tiny_model_dir, two_workers, redis_url, policy="d2lpm", quantum=64.0)
        async with running_router(config) as first, running_router(config) as second:
            routers = [first, second]

            async def one(client_id: str, n: int, prompt: list[int]):
                async with client_for(routers[n % 2], client_id) as client:
                    return client_id, await client.generate(prompt, max_tokens=3 + n % 3, ignore_eos=True)

            calls = [one(cid, n, p) for cid, prompts in workload.items() for n, p in enumerate(prompts)]
            outputs = await asyncio.gather(*calls)
            await asyncio.gather(first.router.drain(), second.router.drain())
            # A Redis hiccup under load would have been reconciled by now; wait for it if so.
            await wait_until(lambda: first.ledger.shared and second.ledger.shared, "both ledgers shared")
            # Either router reads the same ledger.
            return outputs, await first.ledger.snapshot(), await second.ledger.snapshot()

    outputs, ledger, ledger_again = asyncio.run(scenario())
    assert ledger == ledger_again
    costs = CostConfig()
    for record in ledger:
        mine = [o.result for cid, o in outputs if cid == record.client_id]
        assert record.requests == len(mine) == 8 and record.inflight == 0
        assert record.prompt_tokens == sum(r.usage.prompt_tokens for r in mine)
        assert record.cached_tokens == sum(r.usage.cached_tokens for r in mine)
        assert record.completion_tokens == sum(r.usage.completion_tokens for r in mine)
        served = sum(
            costs.input_token_weight * (r.usage.prompt_tokens - r.usage.cached_tokens)
            + costs.output_token_weight * r.usage.completion_tokens
            for r in mine
        )
        assert record.service == pytest.approx(served)
        # No (client, worker) deficit ever holds more than one quantum of credit.
        credit = 64.0 * CLIENTS[record.client_id][1]
        assert set(record.deficits) == {worker_id(w) for w in two_workers}
        assert all(q <= credit + 1e-9 for q in record.deficits.values())


@pytest.mark.parametrize(
    "quantum, spreads", [(1e9, False), (40.0, True)], ids=["huge-Q-is-LPM", "small-Q-spreads"]
)
def test_d2lpm_keeps_a_hot_client_local_under_a_large_quantum_and_spreads_it_under_a_small_one(
    two_workers, tiny_model_dir, redis_url, quantum: float, spreads: bool
):
    prompts = hot_prompts(10)

    async def scenario():
        # A balance threshold above the burst, so only the quantum decides whether the client spreads.
        config = router_config(
            tiny_model_dir, two_workers, redis_url, policy="d2lpm", quantum=quantum, balance_abs_threshold=64
        )
        async with running_router(config) as running:
            async with client_for(running, "alice") as client:
                first = await client.generate(prompts[0], max_tokens=2, ignore_eos=True)
                rest = await asyncio.gather(
                    *(client.generate(p, max_tokens=2, ignore_eos=True) for p in prompts[1:])
                )
        return [o.result for o in [first, *rest]]

    results = asyncio.run(scenario())
    per_worker = {w: sum(r.worker_id == w for r in results) for w in {r.worker_id for r in results}}
    if spreads:
        assert len(per_worker) == 2 and min(per_worker.values()) >= 2, per_worker
    else:
        assert len(per_worker) == 1, per_worker
        assert all(r.usage.cached_tokens >= 48 for r in results[1:])
