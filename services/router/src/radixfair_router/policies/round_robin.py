"""Round-robin: each request to the next worker in turn, blind to cache and load."""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_router.config import CostConfig, PolicyConfig
from radixfair_router.ledger import Ledger
from radixfair_router.policies.base import (
    DispatchAhead,
    PolicyBase,
    RoutingDecision,
    RoutingRequest,
    WorkerState,
    admit_fixed,
)


class RoundRobinPolicy(PolicyBase):
    name = "round_robin"
    local_policy = "lpm"

    def __init__(self, config: PolicyConfig, costs: CostConfig, ledger: Ledger) -> None:
        super().__init__(config, costs, ledger)
        self._turn = 0

    async def route(
        self, request: RoutingRequest, workers: Sequence[WorkerState], ahead: DispatchAhead | None = None
    ) -> RoutingDecision:
        ordered = sorted(workers, key=lambda w: w.worker_id)
        worker = ordered[self._turn % len(ordered)]
        self._turn += 1
        return await admit_fixed(self._ledger, self._costs, request, worker, self.name, "round_robin", ahead)
