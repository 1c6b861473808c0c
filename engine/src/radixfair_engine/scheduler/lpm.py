"""Longest prefix match first, as SGLang's cache-aware scheduling does."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.request import Request
from radixfair_engine.scheduler.base import Clock, PrefixMatcher
from radixfair_engine.scheduler.ordered import OrderedPolicy
from radixfair_engine.scheduler.queue_order import PrefixMatchQueue


class LPMPolicy(OrderedPolicy):
    """Admits the waiting requests with the longest cached prefix first, ties by arrival.

    Maximises cache reuse, and so throughput, with no regard for fairness: a
    client whose requests share a hot prefix can starve everyone else. The
    order holds at any queue depth (``PrefixMatchQueue``); there is no
    fallback to arrival order on long queues.
    """

    name = "lpm"
    defers_to_shared_prefix = True

    def __init__(self, config: SchedulerConfig, clock: Clock = time.monotonic) -> None:
        super().__init__(config, clock)
        self._queue = PrefixMatchQueue()

    def order(self, waiting: Sequence[Request], cache: PrefixMatcher) -> Iterator[Request]:
        return (request for _, request in self._queue.ordered(waiting, cache))

    def on_arrival(self, request: Request) -> None:
        self._queue.joined(request)

    def on_finished(self, request: Request) -> None:
        self._queue.left(request)

    def admitted(self, requests: list[Request]) -> None:
        self._queue.admitted(requests)
