"""DLPM on hand-built queues: LPM order gated by deficits, its charges, refill and idle cap."""

from __future__ import annotations

import pytest
from scheduler_harness import CountingBudget, cache_holding, finish, preempt, request

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler.dlpm import DLPMPolicy
from radixfair_engine.scheduler.registry import build_policy

DOC = list(range(100, 116))  # 16 tokens = 4 pages of 4
Q = 10.0


def config(**overrides) -> SchedulerConfig:
    # "cap" starts every new client at one quantum, which these mechanics tests count on;
    # the default "lift" rule has its own tests in test_scheduler_dlpm_idle.py. Rule 7 (a returning
    # client's turn) is off by default; its tests below turn it on.
    settings = {
        "policy": "dlpm",
        "quantum": Q,
        "input_token_weight": 1.0,
        "output_token_weight": 2.0,
        "idle_deficit": "cap",
    }
    return SchedulerConfig(**{**settings, **overrides})


def arrive(policy, *requests):
    for r in requests:
        policy.on_arrival(r)
    return list(requests)


def ids(requests):
    return [r.request_id for r in requests]


def test_dlpm_follows_lpm_order_while_clients_have_credit():
    cache = cache_holding(DOC)
    policy = DLPMPolicy(config(quantum=1000.0))
    queue = arrive(
        policy,
        request("cold", "a", [1, 2, 3], arrival=0.0),
        request("hot", "b", DOC + [1], arrival=1.0),
    )

    admitted = policy.pick_next(queue, cache, CountingBudget(cache, limit=10))

    assert ids(admitted) == ["hot", "cold"]


def returned_after_a_hot_backlog(policy: DLPMPolicy, cache, late):
    """Client b has two hot requests waiting, one admitted (so b's turn is over); then ``late`` of client a
    arrives: a has returned. Returns the next step's admissions."""
    queue = arrive(
        policy, request("hot1", "b", DOC + [1], arrival=0.0), request("hot2", "b", DOC + [2], arrival=1.0)
    )
    assert ids(policy.pick_next(queue, cache, CountingBudget(cache, limit=1))) == ["hot1"]
    return policy.pick_next([queue[1], *arrive(policy, late)], cache, CountingBudget(cache, limit=10))


def test_a_returning_clients_cold_request_takes_its_turn_before_the_hot_ones():
    cache = cache_holding(DOC)
    policy = DLPMPolicy(
        config(quantum=1000.0, returning_turns=True, max_client_passes=0)
    )  # VTC's order for a return

    admitted = returned_after_a_hot_backlog(policy, cache, request("cold", "a", [1, 2, 3], arrival=2.0))

    assert ids(admitted) == ["cold", "hot2"]


def test_a_returning_clients_cached_request_takes_its_turn_before_older_equally_hot_ones():
    cache = cache_holding(DOC)
    policy = DLPMPolicy(config(quantum=1000.0, returning_turns=True, max_client_passes=0))

    admitted = returned_after_a_hot_backlog(policy, cache, request("warm", "a", DOC + [7], arrival=2.0))

    assert ids(admitted) == ["warm", "hot2"]  # prefix order alone: a tie, broken by arrival


def test_without_turns_the_returning_request_waits_in_prefix_order():
    cache = cache_holding(DOC)
    policy = DLPMPolicy(config(quantum=1000.0))

    admitted = returned_after_a_hot_backlog(policy, cache, request("cold", "a", [1, 2, 3], arrival=2.0))

    assert ids(admitted) == ["hot2", "cold"]


def test_a_returning_client_takes_one_turn_per_return():
    cache = cache_holding(DOC)
    policy = DLPMPolicy(config(quantum=1000.0, returning_turns=True, max_client_passes=0))
    queue = arrive(
        policy,
        request("hot1", "b", DOC + [1], arrival=0.0),
        request("cold1", "a", [1, 2, 3], arrival=1.0),
        request("cold2", "a", [4, 5, 6], arrival=2.0),
    )

    admitted = policy.pick_next(queue, cache, CountingBudget(cache, limit=2))

    assert ids(admitted) == ["cold1", "hot1"]  # cold2 is not a return: a's queue never emptied


def test_dlpm_skips_a_spent_client_and_keeps_walking():
    cache = cache_holding(DOC)
    policy = DLPMPolicy(config())
    queue = arrive(
        policy,
        request("hot1", "a", DOC + [1] * 12, arrival=0.0),  # computes 12 > Q: a is spent after it
        request("hot2", "a", DOC + [2] * 4, arrival=1.0),
        request("cold", "b", [5] * 6, arrival=2.0),
        request("hot3", "a", DOC + [3] * 4, arrival=3.0),
    )

    admitted = policy.pick_next(queue, cache, CountingBudget(cache, limit=3))

    # hot2 and hot3 match longer than cold, but a's deficit is spent: the walk
    # passes them and admits b's request, then the refill lets hot2 in.
    assert ids(admitted) == ["hot1", "cold", "hot2"]
    assert policy.refill_count == 1


def test_dlpm_charges_computed_input_and_a_fraction_of_cached_input():
    cache = cache_holding(DOC)
    policy = DLPMPolicy(config(quantum=100.0, input_token_weight=2.0, cached_token_weight=0.25))
    (r,) = arrive(policy, request("r", "a", DOC + [1] * 5, arrival=0.0))

    policy.pick_next([r], cache, CountingBudget(cache, limit=1))

    # 5 computed tokens at w_in = 2, 16 cached tokens at 0.25 · w_in.
    assert r.num_cached_tokens == 16
    assert policy.deficits()["a"] == 100 - (2 * 5 + 0.25 * 2 * 16)
    assert policy.client_service()["a"] == 2 * 5  # raw service leaves out the cached fraction


def test_dlpm_charges_output_tokens_as_generated():
    cache = cache_holding()
    policy = DLPMPolicy(config(quantum=100.0))
    (r,) = arrive(policy, request("r", "a", [1, 2, 3], arrival=0.0))
    policy.pick_next([r], cache, CountingBudget(cache, limit=1))

    policy.on_output_tokens({(r.client_id, r.weight): 1})
    policy.on_output_tokens({(r.client_id, r.weight): 1})

    assert policy.deficits()["a"] == 100 - 3 - 2 * 2


def test_dlpm_refills_every_waiting_spent_client_when_nothing_is_admissible():
    cache = cache_holding()
    policy = DLPMPolicy(config())
    first = arrive(
        policy,
        request("a0", "a", [1] * 14, arrival=0.0, weight=1.0),  # a: 10 - 14 = -4
        request("b0", "b", [2] * 11, arrival=1.0, weight=2.0),  # b: 20 - 11 = 9
        request("c0", "c", [3] * 25, arrival=2.0, weight=1.0),  # c: 10 - 25 = -15
    )
    policy.pick_next(first, cache, CountingBudget(cache, limit=3))
    policy.on_output_tokens({(first[1].client_id, first[1].weight): 5})  # b: 9 - 10 = -1
    later = arrive(
        policy,
        request("a1", "a", [1, 2], arrival=3.0),
        request("c1", "c", [3, 4], arrival=4.0),
    )
    # Nothing is admissible, so a and c are refilled; b has nothing waiting and
    # is not. a1 then goes in; c is still spent, so the next pass refills c
    # again before the budget stops at c1.
    admitted = policy.pick_next(later, cache, CountingBudget(cache, limit=1))

    assert ids(admitted) == ["a1"]
    assert policy.refill_count == 2
    assert policy.deficits() == {"a": -4 + Q - 2, "b": -1, "c": -15 + 2 * Q}


def test_dlpm_repeats_the_refill_until_someone_has_credit():
    cache = cache_holding()
    policy = DLPMPolicy(config())
    big = arrive(policy, request("big", "a", [1] * 33, arrival=0.0))  # a: 10 - 33 = -23
    policy.pick_next(big, cache, CountingBudget(cache, limit=1))
    (small,) = arrive(policy, request("small", "a", [1, 2], arrival=1.0))

    admitted = policy.pick_next([small], cache, CountingBudget(cache, limit=1))

    assert ids(admitted) == ["small"]
    assert policy.refill_count == 3  # -23 -> -13 -> -3 -> 7
    assert policy.deficits()["a"] == 7 - 2


def test_dlpm_does_not_refill_when_the_budget_is_what_stops_admission():
    cache = cache_holding()
    policy = DLPMPolicy(config())
    spent = arrive(policy, request("a0", "a", [1] * 12, arrival=0.0))
    policy.pick_next(spent, cache, CountingBudget(cache, limit=1))  # a: -2
    queue = arrive(policy, request("a1", "a", [1, 2], arrival=1.0), request("b0", "b", [2, 3], arrival=2.0))

    admitted = policy.pick_next(queue, cache, CountingBudget(cache, limit=0))

    assert admitted == []
    assert policy.refill_count == 0
    assert policy.deficits() == {"a": -2, "b": Q}


def test_dlpm_does_not_charge_input_again_after_preemption():
    cache = cache_holding()
    policy = DLPMPolicy(config(quantum=100.0))
    (r,) = arrive(policy, request("r", "a", [1] * 6, arrival=0.0))
    policy.pick_next([r], cache, CountingBudget(cache, limit=1))
    policy.on_output_tokens({(r.client_id, r.weight): 1})
    preempt(r)
    policy.on_arrival(r)

    admitted = policy.pick_next([r], cache, CountingBudget(cache, limit=1))

    assert ids(admitted) == ["r"]
    assert policy.deficits()["a"] == 100 - 6 - 2
    assert policy.client_service()["a"] == 6 + 2


def test_dlpm_caps_an_idle_client_at_one_quantum_of_its_weight():
    cache = cache_holding()
    policy = DLPMPolicy(config())
    heavy = request("heavy", "a", [1, 2], arrival=0.0, weight=3.0)  # a starts at 3·Q = 30
    light = request("light", "a", [1, 3], arrival=1.0, weight=1.0)  # a's weight drops to 1
    arrive(policy, heavy, light)
    policy.pick_next([heavy, light], cache, CountingBudget(cache, limit=2))  # a: 30 - 4 = 26
    finish(heavy)
    policy.on_finished(heavy)
    assert policy.deficits()["a"] == 26  # still running a request: not idle

    finish(light)
    policy.on_finished(light)

    assert policy.deficits()["a"] == Q


def test_dlpm_reset_forgives_an_idle_clients_debt_but_not_a_backlogged_ones():
    cache = cache_holding()
    policy = DLPMPolicy(config(idle_deficit="reset"))
    (first,) = arrive(policy, request("first", "a", [1] * 25, arrival=0.0))
    policy.pick_next([first], cache, CountingBudget(cache, limit=1))
    (second,) = arrive(policy, request("second", "a", [2] * 3, arrival=1.0))
    finish(first)
    policy.on_finished(first)
    assert policy.deficits()["a"] == Q - 25  # second still waits: not idle, the debt stands

    finish(second)  # cancelled before admission: now nothing waits or runs
    policy.on_finished(second)

    assert policy.deficits()["a"] == Q


def test_dlpm_rejects_an_unknown_idle_rule():
    with pytest.raises(ValueError, match="idle_deficit"):
        build_policy(config(idle_deficit="forget"))


def test_dlpm_keeps_an_idle_client_in_debt():
    cache = cache_holding()
    policy = DLPMPolicy(config())
    (r,) = arrive(policy, request("r", "a", [1] * 25, arrival=0.0))
    policy.pick_next([r], cache, CountingBudget(cache, limit=1))
    finish(r)

    policy.on_finished(r)

    assert policy.deficits()["a"] == Q - 25
