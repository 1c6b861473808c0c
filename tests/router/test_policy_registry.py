"""The routing policy registry: one constructor for every policy, and each policy's own admission hook."""

from __future__ import annotations

import asyncio
import typing

import pytest

from radixfair_router.config import CostConfig, LedgerConfig, PolicyConfig, RouterConfig
from radixfair_router.ledger import Ledger
from radixfair_router.policies import RoutingRequest, WorkerState, build_policy
from radixfair_router.policies.base import LedgerRule
from radixfair_router.policies.registry import POLICIES, names

COSTS = CostConfig()
GATED = {"global_vtc", "d2lpm_gated"}


def built(name: str, **options) -> tuple[object, Ledger]:
    config = PolicyConfig(name=name, **options)
    ledger = Ledger(LedgerConfig(store="memory"), config.quantum)
    return POLICIES[name](config, COSTS, ledger), ledger


def test_each_registry_key_is_its_class_name_and_its_ledger_rule_is_one_the_ledger_runs():
    assert names() == tuple(POLICIES)
    for name, cls in POLICIES.items():
        assert cls.name == name
        assert cls.ledger_rule in typing.get_args(LedgerRule), name


@pytest.mark.parametrize("name", names())
def test_each_policy_routes_and_books_what_it_routes(name):
    policy, ledger = built(name)

    async def route():
        return await policy.route(
            RoutingRequest("a", 1.0, 40), [WorkerState("w1", 0, 0), WorkerState("w2", 1, 0)]
        )

    decision = asyncio.run(route())
    assert decision.policy == name and decision.worker_id in {"w1", "w2"}
    assert decision.charged == 40.0  # 40 uncached prompt tokens at w_in 1


@pytest.mark.parametrize("name", names())
def test_only_the_vtc_gated_policies_hold_requests_in_an_admission_gate(name):
    policy, _ = built(name)

    assert (policy.admission_gate(lambda: 2) is not None) == (name in GATED)


@pytest.mark.parametrize("name", sorted(GATED))
def test_zero_vtc_slots_turn_the_gate_off(name):
    policy, _ = built(name, vtc_slots_per_worker=0)

    assert policy.admission_gate(lambda: 2) is None


@pytest.mark.parametrize("name", sorted(GATED))
def test_the_gate_lets_slots_times_healthy_workers_into_flight_and_holds_the_rest(name):
    policy, _ = built(name, vtc_slots_per_worker=2)
    healthy = [3]

    async def scenario() -> tuple[int, int, int]:
        gate = policy.admission_gate(lambda: healthy[0])
        release = asyncio.Event()
        inside = []

        async def hold(client: str) -> None:
            async with gate.slot(client):
                inside.append(client)
                await release.wait()

        tasks = [asyncio.create_task(hold(f"c{i}")) for i in range(8)]
        for _ in range(20):  # the in-memory ledger never suspends: a few loop turns settle every task
            await asyncio.sleep(0)
        in_flight, waiting = len(inside), gate.waiting
        release.set()
        await asyncio.gather(*tasks)
        return in_flight, waiting, len(inside)

    assert asyncio.run(scenario()) == (6, 2, 8)  # 2 slots x 3 workers; all 8 pass once slots free


def test_build_policy_names_the_choices_for_an_unknown_policy():
    config = PolicyConfig(name="d2lmp")
    with pytest.raises(ValueError, match=r"unknown routing policy 'd2lmp'; did you mean 'd2lpm'\?"):
        build_policy(config, COSTS, Ledger(LedgerConfig(store="memory"), config.quantum))


def test_the_router_config_accepts_every_registered_name_and_lists_them_for_another():
    for name in names():
        RouterConfig(policy=PolicyConfig(name=name), ledger=LedgerConfig(store="memory"))
    with pytest.raises(ValueError, match=", ".join(names())):
        RouterConfig(policy=PolicyConfig(name="wfq"), ledger=LedgerConfig(store="memory"))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"quantum": 0.0}, "policy.quantum"), ({"output_book_ahead_tokens": -1}, "output_book_ahead_tokens")],
)
def test_the_policy_config_refuses_unusable_values_itself(options, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**options)
