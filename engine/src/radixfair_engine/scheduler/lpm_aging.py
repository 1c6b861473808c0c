"""LPM with aging: a baseline that trades some cache locality for freedom from starvation."""

from __future__ import annotations

import time
from collections.abc import Sequence

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.request import Request
from radixfair_engine.scheduler.base import Clock, PrefixMatcher
from radixfair_engine.scheduler.ordered import OrderedPolicy
from radixfair_engine.scheduler.queue_order import PrefixMatchQueue


class LPMAgingPolicy(OrderedPolicy):
    """Orders by ``match_length + lpm_aging_rate · seconds waited``, highest first.

    The wait term grows without bound, so every request eventually outranks
    any cached prefix (at most the context length): no request waits longer
    than about ``context / lpm_aging_rate`` seconds behind hot-prefix traffic.
    It bounds waiting time, not service: it is not a fair-share policy.
    ``clock`` must be the clock ``Request.arrival_time`` comes from.
    """

    name = "lpm_aging"
    defers_to_shared_prefix = True

    def __init__(self, config: SchedulerConfig, clock: Clock = time.monotonic) -> None:
        super().__init__(config, clock)
        self._rate = config.lpm_aging_rate
        self._queue = PrefixMatchQueue()

    def order(self, waiting: Sequence[Request], cache: PrefixMatcher) -> list[Request]:
        now = self._clock()
        # The wait term reorders every match level, so this order lists the whole queue.
        ranked = [
            (match + self._rate * max(0.0, now - r.arrival_time), r)
            for match, r in self._queue.ordered(waiting, cache)
        ]
        ranked.sort(key=lambda pair: (-pair[0], pair[1].arrival_time))
        return [request for _, request in ranked]

    def on_arrival(self, request: Request) -> None:
        self._queue.joined(request)

    def on_finished(self, request: Request) -> None:
        self._queue.left(request)

    def admitted(self, requests: list[Request]) -> None:
        self._queue.admitted(requests)
