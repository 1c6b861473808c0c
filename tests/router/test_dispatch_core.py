"""One dispatch core: the gRPC router and the simulator decide and book the same requests the same way."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from support.router_stack import client_for, router_config, running_router, wait_until, worker_id

from radixfair_router.config import ApproxTreeConfig, CostConfig, PolicyConfig
from radixfair_router.dispatch_core import DispatchCore

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the bench package lives at the repository root

from bench.simulator.sim_router import SimRouter, run_sync  # noqa: E402

PAGE = 4
# A small quantum, so the sequence below spends credit, refills and moves to next-best workers.
POLICY = PolicyConfig(name="d2lpm", quantum=40.0, balance_abs_threshold=1000)
# Reports never override a route the router made (grace longer than the test), so the estimate is a
# function of the routes and the reports, not of when a report happened to arrive.
TREE = ApproxTreeConfig(report_grace_s=3600.0)


def conversation() -> list[tuple[str, list[int], int]]:
    """(client, prompt token ids, max_tokens): three clients, two with a long shared prefix each."""
    alice_doc, bob_doc = list(range(31000, 31032)), list(range(32000, 32024))
    requests = []
    for turn in range(5):
        requests.append(("alice", alice_doc + [31500 + turn, 31600 + turn], 3 + turn % 2))
        requests.append(("bob", bob_doc + [32500 + turn], 4))
        if turn % 2 == 0:
            requests.append(("carol", [33000 + 10 * turn + i for i in range(6)], 2))
    return requests


def test_the_router_and_the_simulator_take_the_same_decisions_and_book_the_same_ledger(
    two_workers, tiny_model_dir
):
    workers = sorted(worker_id(w) for w in two_workers)
    config = router_config(tiny_model_dir, two_workers)
    config = replace(config, policy=POLICY, tree=TREE)
    sim = SimRouter(POLICY, config.costs, workers, TREE)
    weights = {"alice": 1.0, "bob": 1.0, "carol": 2.0}

    async def scenario():
        served, simulated = [], []
        async with running_router(config) as running:
            endpoints = [running.registry.get(w) for w in workers]

            def idle_and_reported() -> bool:
                # A report taken after the last request finished: both loads are 0, as in the simulator.
                return all(
                    e.last_report is not None
                    and e.dispatched_since_report == 0
                    and e.last_report.running_requests + e.last_report.queue_length == 0
                    for e in endpoints
                )

            for index, (client, tokens, max_tokens) in enumerate(conversation()):
                await wait_until(idle_and_reported, "workers idle and reported")
                for endpoint in endpoints:  # the simulator gets the reports the router holds
                    report = endpoint.last_report
                    sim.report(endpoint.worker_id, PAGE, list(report.cached_prefix_hashes), float(index))
                request_id = f"r{index}"
                simulated.append(sim.route(client, weights[client], tokens, float(index), request_id))
                async with client_for(running, client) as caller:
                    stream = caller.stream(tokens, max_tokens=max_tokens, ignore_eos=True)
                    messages = [m async for m in stream]
                result = messages[-1].result
                served.append(result.worker_id)
                sim.output(request_id, client, weights[client], result.usage.completion_tokens)
                sim.finished(request_id, client, weights[client], len(tokens), result.usage.cached_tokens)
            await running.router.drain()
            return served, simulated, await running.ledger.snapshot()

    served, simulated, ledger = asyncio.run(scenario())
    assert served == simulated
    assert len(set(served)) == 2  # both workers were chosen at some point: the decisions were not trivial
    expected = {r.client_id: r for r in run_sync(sim.ledger.snapshot())}
    assert {r.client_id for r in ledger} == set(expected)
    for record in ledger:
        mine = expected[record.client_id]
        counts = (record.requests, record.prompt_tokens, record.cached_tokens, record.completion_tokens)
        assert counts == (mine.requests, mine.prompt_tokens, mine.cached_tokens, mine.completion_tokens)
        assert record.inflight == mine.inflight == 0
        # The same bookings, grouped differently (timer batches against per-request batches).
        assert record.service == pytest.approx(mine.service, rel=1e-12, abs=1e-9)
        assert record.deficits == pytest.approx(mine.deficits, rel=1e-12, abs=1e-9)


def test_the_server_and_the_simulator_hold_the_one_dispatch_core():
    """Structural half of the rule: the simulator's router books through DispatchCore, never a copy."""
    sim = SimRouter(POLICY, CostConfig(), ["w0", "w1"], TREE)
    assert isinstance(sim.core, DispatchCore)
    assert sim.core.ledger is sim.ledger and sim.core.cache_view is sim.cache_view
    sim.route("a", 1.0, [1, 2, 3, 4, 5], 0.0, "r0")
    before = run_sync(sim.ledger.snapshot())
    assert [r.requests for r in before] == [1]
    source = Path(ROOT, "bench/simulator/sim_router.py").read_text()
    assert "input_cost" not in source and "Charge(" not in source  # booking is DispatchCore's alone


def test_a_request_its_worker_refused_costs_nothing_in_the_simulator_as_in_the_router():
    sim = SimRouter(POLICY, CostConfig(), ["w0", "w1"], TREE)
    sim.route("a", 1.0, list(range(20)), 0.0, "r0")
    sim.rejected("r0", "a", 1.0, 20)
    [record] = run_sync(sim.ledger.snapshot())
    assert (record.requests, record.inflight, record.service, record.prompt_tokens) == (0, 0, 0.0, 0)
    assert sim.inflight == {"w0": 0, "w1": 0}
