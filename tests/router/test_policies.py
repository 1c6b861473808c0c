"""Each routing policy's choice on constructed worker states (explicit in-process ledger)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radixfair_router.config import CostConfig, LedgerConfig, PolicyConfig
from radixfair_router.ledger import Ledger
from radixfair_router.policies import RoutingRequest, WorkerState, build_policy

COSTS = CostConfig(input_token_weight=1.0, output_token_weight=2.0)


def route_all(policy_name: str, requests, states_per_request, **options) -> list:
    """Routes each (request, states) in order on a fresh policy; returns the decisions."""

    async def run():
        config = PolicyConfig(name=policy_name, **options)
        ledger = Ledger(LedgerConfig(store="memory"), config.quantum)
        policy = build_policy(config, COSTS, ledger)
        return [await policy.route(r, s) for r, s in zip(requests, states_per_request)]

    return asyncio.run(run())


def req(client: str = "a", prompt: int = 100, weight: float = 1.0) -> RoutingRequest:
    return RoutingRequest(client, weight, prompt)


def w(worker_id: str, load: int = 0, match: int = 0, cache: int = 0) -> WorkerState:
    return WorkerState(worker_id, load, match, cache)


def test_round_robin_takes_workers_in_turn_whatever_their_state():
    states = [w("w2", load=9, match=100), w("w1"), w("w3")]
    decisions = route_all("round_robin", [req()] * 4, [states] * 4)
    assert [d.worker_id for d in decisions] == ["w1", "w2", "w3", "w1"]


def test_least_load_takes_the_least_loaded_worker_even_against_a_cache_hit():
    decisions = route_all("least_load", [req()], [[w("w1", load=3, match=100), w("w2", load=1)]])
    assert decisions[0].worker_id == "w2"


def test_cache_aware_takes_the_longest_match_above_the_cache_threshold():
    states = [w("w1", load=2, match=80), w("w2", load=0, match=10)]
    [decision] = route_all("cache_aware", [req(prompt=100)], [states], cache_threshold=0.5)
    assert (decision.worker_id, decision.reason, decision.prefix_match) == ("w1", "longest_match", 80)


def test_cache_aware_sends_a_new_prefix_to_the_smallest_cache_below_the_threshold():
    states = [w("w1", match=20, cache=500), w("w2", match=0, cache=50), w("w3", cache=900)]
    [decision] = route_all("cache_aware", [req(prompt=100)], [states], cache_threshold=0.5)
    assert (decision.worker_id, decision.reason) == ("w2", "smallest_cache")


def test_cache_aware_balances_load_when_imbalanced_in_absolute_and_relative_terms():
    states = [w("w1", load=20, match=100), w("w2", load=2)]
    [decision] = route_all(
        "cache_aware", [req()], [states], balance_abs_threshold=8, balance_rel_threshold=1.5
    )
    assert (decision.worker_id, decision.reason) == ("w2", "balance")


def test_cache_aware_keeps_locality_when_the_gap_is_only_absolute():
    # 30 vs 22: more than 8 apart, but not 1.5x: not imbalanced, locality wins.
    states = [w("w1", load=30, match=100), w("w2", load=22)]
    [decision] = route_all(
        "cache_aware", [req()], [states], balance_abs_threshold=8, balance_rel_threshold=1.5
    )
    assert decision.worker_id == "w1"


def test_global_vtc_takes_the_least_loaded_worker_and_books_the_counter():
    [decision] = route_all("global_vtc", [req(prompt=40)], [[w("w1", load=1, match=40), w("w2")]])
    assert decision.worker_id == "w2" and decision.charged == pytest.approx(40)


def test_d2lpm_sends_a_hot_prefix_to_its_worker_until_the_quantum_is_spent_then_next_best():
    # Each request costs 60 uncached tokens on w1 (40 cached), 100 elsewhere; Q = 150.
    # Both matches are above the cache threshold (0.3 of the prompt).
    states = [w("w1", match=40), w("w2", match=35), w("w3")]
    decisions = route_all("d2lpm", [req(prompt=100)] * 4, [states] * 4, quantum=150)
    assert [(d.worker_id, d.reason) for d in decisions] == [
        ("w1", "longest_match"),  # q[w1]: 150 -> 90
        ("w1", "longest_match"),  # 90 -> 30
        ("w1", "longest_match"),  # 30 -> -30: spent
        ("w2", "next_best_match"),  # the next best match with credit
    ]
    assert decisions[2].deficit == pytest.approx(-30)


def test_d2lpm_skips_the_best_match_when_its_load_is_over_the_threshold():
    states = [w("w1", load=20, match=90), w("w2", load=1, match=30), w("w3", load=0)]
    [decision] = route_all("d2lpm", [req()], [states], balance_abs_threshold=8, balance_rel_threshold=1.5)
    assert (decision.worker_id, decision.reason, decision.prefix_match) == ("w2", "next_best_match", 30)


def test_d2lpm_falls_back_to_the_least_loaded_worker_when_no_eligible_one_has_credit():
    # w2 and w3 are over the load threshold, so only w1 is eligible; w2 and w3 keep
    # their credit, so no refill happens once w1 is spent: the least-loaded takes it.
    states = [w("w1", load=0), w("w2", load=30, match=100), w("w3", load=20)]
    decisions = route_all("d2lpm", [req(prompt=100)] * 3, [states] * 3, quantum=150)
    assert [(d.worker_id, d.reason) for d in decisions] == [
        ("w1", "no_useful_match"),
        ("w1", "no_useful_match"),  # 50 -> -50
        ("w1", "least_load"),  # spent, and no eligible worker has credit
    ]
    assert decisions[2].deficit == pytest.approx(-150) and decisions[2].refills == 0


def test_d2lpm_refills_once_every_candidate_is_spent_and_returns_to_the_best_match():
    states = [w("w1", match=10), w("w2")]
    decisions = route_all("d2lpm", [req(prompt=110)] * 3, [states] * 3, quantum=100)
    # w1: 100 -> 0 (cost 100); w2: 100 -> -10; none positive: refill -> w1 100, w2 90 -> w1.
    assert [d.worker_id for d in decisions] == ["w1", "w2", "w1"]
    assert (decisions[1].reason, decisions[2].refills) == ("no_useful_match", 1)


def test_d2lpm_deficits_are_per_client():
    states = [w("w1", match=50), w("w2")]
    requests = [req("a", 100), req("a", 100), req("b", 100)]
    decisions = route_all("d2lpm", requests, [states] * 3, quantum=60)
    # a spends w1 (60 -> 10 -> -40 would need a 2nd), b still has its own credit on w1.
    assert [d.worker_id for d in decisions] == ["w1", "w1", "w1"]


def test_d2lpm_weight_scales_the_credit_on_the_hot_worker():
    states = [w("w1", match=0), w("w2", load=1)]
    light = route_all("d2lpm", [req("a", 100, 1.0)] * 3, [states] * 3, quantum=150)
    heavy = route_all("d2lpm", [req("c", 100, 2.0)] * 3, [states] * 3, quantum=150)
    assert [d.worker_id for d in light] == ["w1", "w1", "w2"]
    assert [d.worker_id for d in heavy] == ["w1", "w1", "w1"]


def test_d2lpm_an_idle_worker_beats_a_trivial_prefix_match():
    # w1 holds 4 tokens of a 100-token prompt (a chat template's first tokens): below the
    # cache threshold that is no locality, so the idle worker takes the request.
    states = [w("w1", load=1, match=4), w("w2", load=0)]
    [decision] = route_all("d2lpm", [req(prompt=100)], [states], cache_threshold=0.3)
    assert (decision.worker_id, decision.reason) == ("w2", "no_useful_match")
    # The charge is still the real one on the worker chosen: the whole prompt, uncached.
    assert decision.charged == pytest.approx(100)


def test_d2lpm_keeps_a_long_shared_prefix_sticky_against_an_idle_worker():
    states = [w("w1", load=3, match=70), w("w2", load=0)]
    [decision] = route_all("d2lpm", [req(prompt=100)], [states], cache_threshold=0.3)
    assert (decision.worker_id, decision.reason, decision.charged) == ("w1", "longest_match", 30)


def test_d2lpm_sends_a_cold_prompt_to_the_smaller_cache_before_the_lighter_load():
    """A flooder's many requests on one cached document make its worker the busiest by count but
    leave its cache small; under the local DLPM a newcomer there competes with one client, not with
    its requests. Cold prompts go to the smaller cache (as the SGLang router's miss rule), so light
    clients do not all pile onto the one worker the flood has not reached (issue 13's traces)."""
    states = [w("flooded", 7, cache=600), w("idle", 0, cache=9000), w("quiet", 1, cache=4000)]
    [decision] = route_all("d2lpm", [req(prompt=100)], [states], balance_abs_threshold=8)
    assert (decision.worker_id, decision.reason) == ("flooded", "no_useful_match")


@given(
    prompt=st.integers(1, 400),
    specs=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 400)), min_size=2, max_size=5),
)
def test_d2lpm_never_prefers_a_busier_worker_for_a_match_below_the_cache_threshold(prompt, specs):
    """With fresh credit everywhere, loads under the balance threshold and equal caches, the choice
    is the longest useful match if there is one, else a least-loaded worker."""
    states = [w(f"w{i}", load=load, match=min(match, prompt)) for i, (load, match) in enumerate(specs)]
    [decision] = route_all("d2lpm", [req(prompt=prompt)], [states], cache_threshold=0.3)
    chosen = next(s for s in states if s.worker_id == decision.worker_id)
    useful = [s for s in states if s.prefix_match >= max(0.3 * prompt, 1)]
    if useful:
        assert chosen.prefix_match == max(s.prefix_match for s in useful)
    else:
        assert chosen.load == min(s.load for s in states)
