"""Every registered local policy is built one way and reports its fairness state through the protocol."""

from __future__ import annotations

import pytest
from scheduler_harness import CountingBudget, cache_holding, request

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler.base import FairnessState
from radixfair_engine.scheduler.registry import POLICIES, build_policy, names

FIXED_CLOCK = 42.0


def test_each_registry_key_is_its_class_name():
    assert names() == tuple(POLICIES)
    for name, cls in POLICIES.items():
        assert cls.name == name  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", names())
def test_each_policy_is_built_from_config_and_clock_and_starts_with_no_fairness_state(name):
    policy = POLICIES[name](SchedulerConfig(policy=name), lambda: FIXED_CLOCK)

    assert policy.name == name
    assert policy.fairness_state() == FairnessState()


def admit_one_each(name: str) -> object:
    """Clients a (weight 1) and b (weight 2) each get one 8-token prompt admitted and 3 output tokens."""
    policy = build_policy(SchedulerConfig(policy=name, quantum=100.0, idle_deficit="cap"))
    cache = cache_holding()
    waiting = [request("a1", "a", range(1, 9), 0.0), request("b1", "b", range(11, 19), 1.0, weight=2.0)]
    for r in waiting:
        policy.on_arrival(r)
    admitted = policy.pick_next(waiting, cache, CountingBudget(cache, 2))
    for r in admitted:
        policy.on_output_tokens({(r.client_id, r.weight): 3})
    return policy


def test_vtc_reports_its_counters_as_its_fairness_state():
    policy = admit_one_each("vtc")

    # Charge 8 input + 2·3 output = 14 each, over the weight.
    assert policy.fairness_state() == FairnessState(virtual_counters={"a": 14.0, "b": 7.0})


def test_dlpm_reports_its_deficits_and_refills_as_its_fairness_state():
    policy = admit_one_each("dlpm")

    # Each client starts at Q · weight ("cap") and pays 14; no pass ran out of credit.
    assert policy.fairness_state() == FairnessState(deficits={"a": 100.0 - 14, "b": 200.0 - 14}, refills=0)


@pytest.mark.parametrize("name", ["fcfs", "lpm", "lpm_aging"])
def test_order_only_policies_keep_no_fairness_state_after_serving(name):
    policy = admit_one_each(name)

    assert policy.fairness_state() == FairnessState()
    assert policy.client_service() == {"a": 14.0, "b": 14.0}


def test_a_fairness_state_is_a_copy_the_caller_may_keep():
    policy = admit_one_each("vtc")
    kept = policy.fairness_state()
    a2 = request("a2", "a", [1], 2.0)
    policy.on_output_tokens({(a2.client_id, a2.weight): 5})

    assert kept.virtual_counters["a"] == 14.0
    assert policy.fairness_state().virtual_counters["a"] == 24.0
