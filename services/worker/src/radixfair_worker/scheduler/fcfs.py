"""First come, first served."""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_worker.request import Request
from radixfair_worker.scheduler.base import PrefixMatcher
from radixfair_worker.scheduler.ordered import OrderedPolicy
from radixfair_worker.scheduler.queue_order import arrival_order


class FCFSPolicy(OrderedPolicy):
    """Admits in arrival order; a preempted request keeps its original arrival time."""

    name = "fcfs"

    def order(self, waiting: Sequence[Request], cache: PrefixMatcher) -> list[Request]:
        return arrival_order(waiting)
