"""VTC serves the backlogged client with the least weight-normalised service, with the lift rule."""

from __future__ import annotations

from scheduler_harness import CountingBudget, cache_holding, finish, preempt, request

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler.vtc import VTCPolicy

CONFIG = SchedulerConfig(policy="vtc", input_token_weight=1.0, output_token_weight=2.0)


def ids(requests):
    return [r.request_id for r in requests]


def test_vtc_interleaves_equal_clients_whatever_their_arrival_order():
    cache = cache_holding()
    policy = VTCPolicy(CONFIG)
    queue = [request(f"a{i}", "a", [1, 2, 3, 4], arrival=float(i)) for i in range(3)]
    queue += [request(f"b{i}", "b", [5, 6, 7, 8], arrival=10.0 + i) for i in range(3)]
    for r in queue:
        policy.on_arrival(r)

    admitted = policy.pick_next(queue, cache, CountingBudget(cache, limit=6))

    # Equal counters: the older head goes first, then each admission puts its client behind.
    assert ids(admitted) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_vtc_serves_the_client_with_the_smaller_counter_first():
    cache = cache_holding()
    policy = VTCPolicy(CONFIG)
    queue = [
        request("a0", "a", [1] * 4, arrival=0.0),
        request("a1", "a", [1] * 4, arrival=1.0),
        request("b0", "b", [2] * 4, arrival=2.0),
        request("b1", "b", [2] * 4, arrival=3.0),
    ]
    for r in queue:
        policy.on_arrival(r)
    (a0,) = policy.pick_next(queue, cache, CountingBudget(cache, limit=1))
    policy.on_output_tokens({(a0.client_id, a0.weight): 5})  # a: 4 + 5·2 = 14
    (b0,) = policy.pick_next(queue[1:], cache, CountingBudget(cache, limit=1))  # b: 4

    admitted = policy.pick_next([queue[1], queue[3]], cache, CountingBudget(cache, limit=1))

    # a1 arrived before b1, but b has received less service.
    assert [a0.request_id, b0.request_id, *ids(admitted)] == ["a0", "b0", "b1"]
    assert policy.counters() == {"a": 14.0, "b": 8.0}


def test_vtc_lifts_a_returning_client_to_the_smallest_backlogged_counter():
    cache = cache_holding()
    policy = VTCPolicy(CONFIG)
    a_old = request("a-old", "a", [1] * 4, arrival=0.0)
    policy.on_arrival(a_old)
    policy.pick_next([a_old], cache, CountingBudget(cache, limit=1))
    policy.on_output_tokens({(a_old.client_id, a_old.weight): 1})  # a: 4 + 2 = 6
    backlog = [request(f"a{i}", "a", [1, 2], arrival=1.0 + i) for i in range(2)]
    for r in backlog:
        policy.on_arrival(r)

    newcomer = request("b", "b", [3, 4], arrival=5.0)
    policy.on_arrival(newcomer)

    # b has never been served, but it joins at a's counter instead of 0, so it
    # cannot claim the service it "missed" while it was not there.
    assert policy.counters()["b"] == 6


def test_vtc_lifts_to_the_last_served_counter_when_nobody_waits():
    cache = cache_holding()
    policy = VTCPolicy(CONFIG)
    a = request("a", "a", [1] * 5, arrival=0.0)
    policy.on_arrival(a)
    policy.pick_next([a], cache, CountingBudget(cache, limit=1))  # a: 5

    policy.on_arrival(request("b", "b", [2, 3], arrival=1.0))

    assert policy.counters()["b"] == 5


def test_vtc_weights_divide_the_charge():
    cache = cache_holding()
    policy = VTCPolicy(CONFIG)
    queue = [
        request("a", "a", [1] * 8, arrival=0.0, weight=1.0),
        request("b", "b", [2] * 8, arrival=1.0, weight=4.0),
    ]
    for r in queue:
        policy.on_arrival(r)

    policy.pick_next(queue, cache, CountingBudget(cache, limit=2))

    assert policy.counters() == {"a": 8.0, "b": 2.0}
    assert policy.client_service() == {"a": 8.0, "b": 8.0}  # raw service is not divided


def test_vtc_charges_no_input_again_after_preemption():
    cache = cache_holding()
    policy = VTCPolicy(CONFIG)
    r = request("r", "a", [1] * 6, arrival=0.0)
    policy.on_arrival(r)
    policy.pick_next([r], cache, CountingBudget(cache, limit=1))
    policy.on_output_tokens({(r.client_id, r.weight): 1})
    preempt(r)
    policy.on_arrival(r)

    policy.pick_next([r], cache, CountingBudget(cache, limit=1))
    policy.on_output_tokens({(r.client_id, r.weight): 1})
    finish(r)
    policy.on_finished(r)

    assert policy.counters()["a"] == 6 + 2 + 2
