"""Least load: the worker with the fewest queued and running requests."""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_router.config import CostConfig
from radixfair_router.ledger import Ledger
from radixfair_router.policies.base import (
    RoutingDecision,
    RoutingRequest,
    WorkerState,
    admit_fixed,
    least_loaded,
)


class LeastLoadPolicy:
    name = "least_load"
    gates_admission = False

    def __init__(self, ledger: Ledger, costs: CostConfig) -> None:
        self._ledger = ledger
        self._costs = costs

    async def route(self, request: RoutingRequest, workers: Sequence[WorkerState]) -> RoutingDecision:
        worker = least_loaded(workers)
        return await admit_fixed(self._ledger, self._costs, request, worker, self.name, "least_load")
