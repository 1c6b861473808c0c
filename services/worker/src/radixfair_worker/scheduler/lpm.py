"""Longest prefix match first, as SGLang's cache-aware scheduling does."""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_worker.request import Request
from radixfair_worker.scheduler.base import PrefixMatcher
from radixfair_worker.scheduler.ordered import OrderedPolicy
from radixfair_worker.scheduler.queue_order import prefix_match_order


class LPMPolicy(OrderedPolicy):
    """Admits the waiting requests with the longest cached prefix first, ties by arrival.

    Maximises cache reuse, and so throughput, with no regard for fairness: a
    client whose requests share a hot prefix can starve everyone else. Falls
    back to arrival order on very long queues (``LPM_MAX_SORTED_QUEUE``).
    """

    name = "lpm"

    def order(self, waiting: Sequence[Request], cache: PrefixMatcher) -> list[Request]:
        return prefix_match_order(waiting, cache)
