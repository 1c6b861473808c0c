"""FCFS, LPM and LPM-with-aging admit hand-built queues in the documented order."""

from __future__ import annotations

from scheduler_harness import CountingBudget, cache_holding, request

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler.fcfs import FCFSPolicy
from radixfair_engine.scheduler.lpm import LPMPolicy
from radixfair_engine.scheduler.lpm_aging import LPMAgingPolicy

DOC = list(range(100, 116))  # 16 tokens = 4 pages
SYSTEM = list(range(200, 208))  # 8 tokens = 2 pages


def arrive(policy, requests):
    for r in requests:
        policy.on_arrival(r)
    return requests


def test_fcfs_admits_in_arrival_order_whatever_the_queue_position_or_cache():
    cache = cache_holding(DOC)
    policy = FCFSPolicy(SchedulerConfig(policy="fcfs"))
    queue = arrive(
        policy,
        [
            request("late", "a", DOC + [1, 2], arrival=3.0),
            request("first", "b", [7, 8, 9], arrival=1.0),
            request("second", "a", [5, 6], arrival=2.0),
        ],
    )
    budget = CountingBudget(cache, limit=10)

    admitted = policy.pick_next(queue, cache, budget)

    assert [r.request_id for r in admitted] == ["first", "second", "late"]


def test_fcfs_stops_at_the_first_refusal():
    cache = cache_holding()
    policy = FCFSPolicy(SchedulerConfig(policy="fcfs"))
    queue = arrive(policy, [request(f"r{i}", "a", [i + 1, 9], arrival=float(i)) for i in range(4)])
    budget = CountingBudget(cache, limit=2)

    admitted = policy.pick_next(queue, cache, budget)

    assert [r.request_id for r in admitted] == ["r0", "r1"]


def test_lpm_admits_longest_cached_prefix_first_ties_by_arrival():
    cache = cache_holding(DOC, SYSTEM)
    policy = LPMPolicy(SchedulerConfig(policy="lpm"))
    queue = arrive(
        policy,
        [
            request("cold", "a", [1, 2, 3, 4, 5], arrival=0.0),
            request("system-late", "b", SYSTEM + [9, 9, 9], arrival=2.0),
            request("doc", "c", DOC + [1], arrival=3.0),
            request("system-early", "c", SYSTEM + [8, 8], arrival=1.0),
        ],
    )
    budget = CountingBudget(cache, limit=10)

    admitted = policy.pick_next(queue, cache, budget)

    assert [r.request_id for r in admitted] == ["doc", "system-early", "system-late", "cold"]


def test_lpm_keeps_prefix_order_on_a_queue_of_500():
    # Until 2026-11, above 128 waiting requests LPM fell back to arrival order and admitted cold0 here.
    cache = cache_holding(DOC)
    policy = LPMPolicy(SchedulerConfig(policy="lpm"))
    cold = [request(f"cold{i}", "a", [i + 1, 1, 2, 3, 4], arrival=float(i)) for i in range(490)]
    hot = [request(f"hot{i}", "b", DOC + [i, 7], arrival=1e6 + i) for i in range(10)]
    queue = arrive(policy, [*hot, *cold])
    budget = CountingBudget(cache, limit=10)

    admitted = policy.pick_next(queue, cache, budget)

    assert [r.request_id for r in admitted] == [f"hot{i}" for i in range(10)]


def test_lpm_aging_lets_a_long_wait_outrank_a_cached_prefix():
    cache = cache_holding(DOC)
    # 1 token of priority per second: the 16-token cached prefix is worth 16 s of waiting.
    policy = LPMAgingPolicy(SchedulerConfig(policy="lpm_aging", lpm_aging_rate=1.0), clock=lambda: 100.0)
    queue = arrive(
        policy,
        [
            request("hot-fresh", "a", DOC + [1], arrival=99.0),  # 16 + 1
            request("cold-old", "b", [5, 6, 7], arrival=80.0),  # 0 + 20
            request("cold-recent", "c", [5, 6, 8], arrival=95.0),  # 0 + 5
        ],
    )
    budget = CountingBudget(cache, limit=10)

    admitted = policy.pick_next(queue, cache, budget)

    assert [r.request_id for r in admitted] == ["cold-old", "hot-fresh", "cold-recent"]


def test_lpm_aging_without_waiting_time_is_lpm():
    cache = cache_holding(DOC)
    policy = LPMAgingPolicy(SchedulerConfig(policy="lpm_aging", lpm_aging_rate=1.0), clock=lambda: 10.0)
    queue = arrive(
        policy,
        [
            request("cold", "b", [5, 6, 7], arrival=10.0),
            request("hot", "a", DOC + [1], arrival=10.0),
        ],
    )
    budget = CountingBudget(cache, limit=10)

    admitted = policy.pick_next(queue, cache, budget)

    assert [r.request_id for r in admitted] == ["hot", "cold"]


def test_ordered_policies_report_raw_service_per_client():
    cache = cache_holding(DOC)
    policy = LPMPolicy(SchedulerConfig(policy="lpm", input_token_weight=1.0, output_token_weight=2.0))
    hot = request("hot", "a", DOC + [1, 2, 3, 4, 5], arrival=0.0)  # 16 cached, 5 computed
    cold = request("cold", "b", [1, 2, 3], arrival=1.0)
    arrive(policy, [hot, cold])
    policy.pick_next([hot, cold], cache, CountingBudget(cache, limit=10))

    policy.on_output_tokens({(hot.client_id, hot.weight): 1})
    policy.on_output_tokens({(hot.client_id, hot.weight): 1})
    policy.on_output_tokens({(cold.client_id, cold.weight): 1})

    assert policy.client_service() == {"a": 5 + 2 * 2, "b": 3 + 2 * 1}
