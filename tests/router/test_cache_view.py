"""Prefix-match estimates: the router's own tree corrected by the workers' reported page hashes."""

from __future__ import annotations

from radixfair.prefix_hash import page_hashes
from radixfair_router.cache_view import CacheView
from radixfair_router.config import ApproxTreeConfig

PROMPT = list(range(1000, 1016))  # 16 tokens: 4 pages of 4


def view(grace_s: float = 1.0) -> CacheView:
    return CacheView(ApproxTreeConfig(max_tokens=10_000, report_grace_s=grace_s))


def test_a_prefix_another_router_sent_is_learned_from_the_workers_report():
    cache = view()
    cache.update_report("w2", page_size=4, hashes=page_hashes(PROMPT[:12], 4))

    estimates = cache.estimate(PROMPT, ["w1", "w2"])

    assert estimates == {"w1": 0, "w2": 12}
    assert cache.tree.match(PROMPT)["w2"].tokens == 12  # and the tree now knows it


def test_a_fresh_route_stands_against_a_report_that_has_not_caught_up():
    cache = view(grace_s=5.0)
    cache.record_routed(PROMPT, "w1")
    cache.update_report("w1", page_size=4, hashes=[])

    assert cache.estimate(PROMPT, ["w1"]) == {"w1": 16}


def test_a_later_report_without_the_prefix_means_the_worker_evicted_it():
    cache = view(grace_s=0.0)
    cache.tree.insert(PROMPT, "w1", now=1.0)
    cache.update_report("w1", page_size=4, hashes=page_hashes(PROMPT[:4], 4), received_at=2.0)

    assert cache.estimate(PROMPT, ["w1"]) == {"w1": 4}
    assert cache.tree.match(PROMPT)["w1"].tokens == 4


def test_removing_a_worker_forgets_its_report_and_tree_entries():
    cache = view()
    cache.record_routed(PROMPT, "w1")
    cache.update_report("w1", page_size=4, hashes=page_hashes(PROMPT, 4))

    cache.remove_worker("w1")

    assert cache.estimate(PROMPT, ["w1"]) == {"w1": 0}
