"""Global VTC: fairness by one virtual token counter per client, shared by all replicas.

The counters live in the ledger (Redis), grow with every token of service
divided by the client's weight, and a client returning from idle is lifted
to the lowest active counter (VTC's rule). The worker choice itself is
least-load and blind to the cache, as in the paper's VTC baseline. Which
waiting request goes first is VTC's order: the router holds requests back
once every worker has ``vtc_slots_per_worker`` of them in flight, and each
freed slot goes to the lowest counter (admission_gate.py). With the gate
off (0 slots) it dispatches at once and the counters only record service.
"""

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


class GlobalVtcPolicy:
    name = "global_vtc"

    def __init__(self, ledger: Ledger, costs: CostConfig) -> None:
        self._ledger = ledger
        self._costs = costs

    async def route(self, request: RoutingRequest, workers: Sequence[WorkerState]) -> RoutingDecision:
        worker = least_loaded(workers)
        return await admit_fixed(self._ledger, self._costs, request, worker, self.name, "least_load")
