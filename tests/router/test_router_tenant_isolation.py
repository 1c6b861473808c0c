"""No tenant can see, cross or be charged for another's requests (issue 12, points 1, 4, 10: router side)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

import grpc
import pytest
from support.router_stack import client_for, router_config, running_router, worker_id

from radixfair.auth import ApiKeyConfig
from radixfair.client import ClientConfig, RouterClient

_prompt_ids = itertools.count(40_000, 700)
OPERATOR_KEY = "key-operator"


def fresh_prompt(length: int) -> list[int]:
    """Token ids no other test sends, so no cache is shared between tests."""
    start = next(_prompt_ids)
    return list(range(start, start + length))


def test_the_same_caller_request_id_from_three_clients_gives_three_separate_requests(
    two_workers, tiny_model_dir, redis_url
):
    # One worker, so the three requests meet in one engine with one caller-chosen id.
    prompts = {"alice": fresh_prompt(20), "bob": fresh_prompt(33), "carol": fresh_prompt(47)}

    async def one(running, client_id: str):
        async with client_for(running, client_id, timeout_s=120) as client:
            return await client.generate(prompts[client_id], request_id="same", max_tokens=8, ignore_eos=True)

    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers[:1], redis_url)) as running:
            outputs = await asyncio.gather(*(one(running, c) for c in prompts))
            await running.router.drain()
            return dict(zip(prompts, outputs, strict=True)), {
                r.client_id: r for r in await running.ledger.snapshot()
            }

    outputs, ledger = asyncio.run(scenario())
    for client_id, prompt in prompts.items():
        output, record = outputs[client_id], ledger[client_id]
        assert output.result.worker_id == worker_id(two_workers[0])
        # Each stream carries its own request: its own prompt, all of its tokens and no one else's.
        assert output.result.usage.prompt_tokens == len(prompt), client_id
        assert len(output.token_ids) == output.result.usage.completion_tokens == 8, client_id
        cached = output.result.usage.cached_tokens
        assert (record.requests, record.inflight, record.prompt_tokens, record.completion_tokens) == (
            1,
            0,
            len(prompt),
            8,
        )
        assert record.service == pytest.approx(1.0 * (len(prompt) - cached) + 2.0 * 8), client_id


def test_a_tenant_sees_only_its_own_state_and_an_operator_sees_every_tenant_and_worker(
    two_workers, tiny_model_dir, redis_url
):
    config = router_config(tiny_model_dir, two_workers, redis_url)
    operator = ApiKeyConfig(OPERATOR_KEY, "ops", operator=True)
    config = replace(config, auth=replace(config.auth, api_keys=(*config.auth.api_keys, operator)))

    async def scenario():
        async with running_router(config) as running:
            for client_id in ("alice", "bob"):
                async with client_for(running, client_id) as client:
                    await client.generate(fresh_prompt(8), max_tokens=2, ignore_eos=True)
            await running.router.drain()
            async with client_for(running, "alice") as client:
                tenant_view = await client.status()
            async with RouterClient(ClientConfig(f"127.0.0.1:{running.port}", OPERATOR_KEY)) as client:
                operator_view = await client.status()
            return tenant_view, operator_view

    tenant, operator_view = asyncio.run(scenario())
    assert [c.client_id for c in tenant.clients] == ["alice"]
    assert tenant.clients[0].requests == 1 and tenant.clients[0].service > 0
    # Which workers exist and whether they serve, but not where they are or what they cache.
    assert sorted(w.worker_id for w in tenant.workers) == sorted(worker_id(w) for w in two_workers)
    assert all(w.healthy and not w.address and not w.HasField("last_report") for w in tenant.workers)
    assert {"alice", "bob", "carol", "ops"} <= {c.client_id for c in operator_view.clients}
    assert {w.address for w in operator_view.workers} == {w.address for w in two_workers}
    assert all(w.HasField("last_report") for w in operator_view.workers)


def test_prompts_the_worker_rejects_cost_nothing(two_workers, tiny_model_dir, redis_url):
    # The tiny model's context holds 1,024 tokens; the router does not know that, the worker refuses.
    too_long = fresh_prompt(1_100)

    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers, redis_url)) as running:
            errors = []
            async with client_for(running, "bob") as client:
                for _ in range(3):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await client.generate(too_long, max_tokens=4)
                    errors.append(caught.value)
                await running.router.drain()
                after_rejects = {r.client_id: r for r in await running.ledger.snapshot()}.get("bob")
                served = await client.generate(fresh_prompt(20), max_tokens=4, ignore_eos=True)
            await running.router.drain()
            return errors, after_rejects, served, {r.client_id: r for r in await running.ledger.snapshot()}

    errors, after_rejects, served, ledger = asyncio.run(scenario())
    assert [e.code() for e in errors] == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    assert all("context" in e.details() for e in errors)
    if after_rejects is not None:
        assert after_rejects.service == pytest.approx(0.0)
        assert (after_rejects.requests, after_rejects.prompt_tokens, after_rejects.inflight) == (0, 0, 0)
    bob = ledger["bob"]
    assert (bob.requests, bob.prompt_tokens, bob.completion_tokens, bob.inflight) == (1, 20, 4, 0)
    assert bob.service == pytest.approx(1.0 * (20 - served.result.usage.cached_tokens) + 2.0 * 4)
