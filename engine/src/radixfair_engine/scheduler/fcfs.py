"""First come, first served."""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_engine.request import Request
from radixfair_engine.scheduler.base import PrefixMatcher
from radixfair_engine.scheduler.ordered import OrderedPolicy
from radixfair_engine.scheduler.queue_order import arrival_order


class FCFSPolicy(OrderedPolicy):
    """Admits in arrival order; a preempted request keeps its original arrival time."""

    name = "fcfs"

    def order(self, waiting: Sequence[Request], cache: PrefixMatcher) -> list[Request]:
        return arrival_order(waiting)
