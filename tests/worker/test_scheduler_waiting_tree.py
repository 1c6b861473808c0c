"""The waiting tree orders any queue exactly as one cache match per request would, at any depth."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler_harness import PAGE, CountingBudget, cache_holding, request

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler.dlpm import DLPMPolicy
from radixfair_engine.scheduler.queue_order import PrefixMatchQueue

# Tokens from a small alphabet over few pages, so prompts and cached prefixes share pages often.
DOC = list(range(100, 116))
pages = st.lists(st.sampled_from([(1, 1, 1, 1), (2, 2, 2, 2), (1, 2, 1, 2)]), min_size=0, max_size=5)
prompts = st.builds(
    lambda ps, tail: [t for p in ps for t in p] + tail,
    pages,
    st.lists(st.integers(1, 3), min_size=1, max_size=PAGE + 1),
)


def brute_force(waiting, cache):
    """The definition: one ``match_length`` per request (of all but the last fill token), then sort."""
    matched = [(cache.match_length(r.fill_ids[:-1]), r) for r in waiting]
    return sorted(matched, key=lambda pair: (-pair[0], pair[1].arrival_time))


@settings(max_examples=100, deadline=None)
@given(
    cached=st.lists(pages, max_size=4),
    steps=st.lists(
        st.tuples(st.lists(prompts, max_size=6), st.sets(st.integers(0, 20))), min_size=1, max_size=4
    ),
)
def test_prefix_match_queue_orders_like_one_match_per_request(cached, steps):
    cache = cache_holding(*[[t for p in ps for t in p] for ps in cached])
    queue, waiting, arrival = PrefixMatchQueue(), [], 0.0
    for joining, leaving in steps:
        # Told as the engine tells a policy: each request that leaves, and each that joins.
        for r in [r for i, r in enumerate(waiting) if i in leaving]:
            queue.left(r)
        waiting = [r for i, r in enumerate(waiting) if i not in leaving]
        for prompt in joining:
            arrival += 1.0
            waiting.append(request(f"r{arrival}", "a", prompt, arrival=arrival))
            queue.joined(waiting[-1])

        ordered = list(queue.ordered(waiting, cache))

        assert [(m, r.request_id) for m, r in ordered] == [
            (m, r.request_id) for m, r in brute_force(waiting, cache)
        ]


def test_prefix_match_queue_rebuilds_from_the_waiting_list_when_it_was_not_told():
    cache = cache_holding(DOC)
    queue = PrefixMatchQueue()
    told = request("told", "a", [5, 5, 5], arrival=0.0)
    queue.joined(told)
    untold = request("untold", "b", DOC + [1], arrival=1.0)  # joined without the callback

    ordered = list(queue.ordered([told, untold], cache))

    assert [(m, r.request_id) for m, r in ordered] == [(16, "untold"), (0, "told")]


def test_dlpm_keeps_prefix_order_on_a_queue_of_500():
    # Until 2026-11, above 128 waiting requests DLPM fell back to arrival order and admitted cold0 here.
    cache = cache_holding(DOC)
    policy = DLPMPolicy(SchedulerConfig(policy="dlpm", quantum=1000.0))
    cold = [request(f"cold{i}", f"light{i % 30}", [i + 1, 1, 2, 3, 4], arrival=float(i)) for i in range(490)]
    hot = [request(f"hot{i}", "flood", DOC + [i, 7], arrival=1e6 + i) for i in range(10)]
    for r in [*hot, *cold]:
        policy.on_arrival(r)

    admitted = policy.pick_next([*hot, *cold], cache, CountingBudget(cache, limit=10))

    assert [r.request_id for r in admitted] == [f"hot{i}" for i in range(10)]
