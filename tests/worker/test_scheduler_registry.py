"""build_policy builds each named policy and refuses unknown names and unusable parameters."""

from __future__ import annotations

import pytest
from scheduler_harness import CountingBudget, cache_holding, request

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler.registry import build_policy


@pytest.mark.parametrize("name", ["fcfs", "lpm", "lpm_aging", "vtc", "dlpm"])
def test_build_policy_builds_each_named_policy(name):
    policy = build_policy(SchedulerConfig(policy=name))

    assert policy.name == name
    assert policy.client_service() == {}


def test_build_policy_hands_its_clock_to_the_aging_policy():
    doc = list(range(100, 116))
    cache = cache_holding(doc)

    def order_at(now: float) -> list[str]:
        policy = build_policy(SchedulerConfig(policy="lpm_aging", lpm_aging_rate=1.0), clock=lambda: now)
        old_cold = request("old-cold", "a", [1, 2, 3], arrival=0.0)
        new_hot = request("new-hot", "b", doc + [1], arrival=990.0)
        for r in (old_cold, new_hot):
            policy.on_arrival(r)
        return [r.request_id for r in policy.pick_next([old_cold, new_hot], cache, CountingBudget(cache, 2))]

    # 16 cached tokens outrank 10 s of waiting; 1000 s of waiting outranks them.
    assert order_at(10.0) == ["new-hot", "old-cold"]
    assert order_at(1000.0) == ["old-cold", "new-hot"]


def test_build_policy_gives_fresh_state_each_time():
    first = build_policy(SchedulerConfig(policy="dlpm"))
    second = build_policy(SchedulerConfig(policy="dlpm"))

    assert first is not second


def test_build_policy_names_the_choices_for_an_unknown_policy():
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'wfq'.*fcfs, lpm, lpm_aging, vtc, dlpm"):
        build_policy(SchedulerConfig(policy="wfq"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quantum": 0.0}, "quantum"),
        ({"cached_token_weight": 1.5}, "cached_token_weight"),
        ({"output_token_weight": -1.0}, "output_token_weight"),
        ({"lpm_aging_rate": -1.0}, "lpm_aging_rate"),
    ],
)
def test_build_policy_refuses_unusable_parameters(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_policy(SchedulerConfig(policy="dlpm", **overrides))
