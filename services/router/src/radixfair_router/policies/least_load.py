"""Least load: the worker with the fewest queued and running requests."""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_router.policies.base import (
    DispatchAhead,
    PolicyBase,
    RoutingDecision,
    RoutingRequest,
    WorkerState,
    admit_fixed,
    least_loaded,
)


class LeastLoadPolicy(PolicyBase):
    name = "least_load"
    local_policy = "lpm"

    async def route(
        self, request: RoutingRequest, workers: Sequence[WorkerState], ahead: DispatchAhead | None = None
    ) -> RoutingDecision:
        worker = least_loaded(workers)
        return await admit_fixed(self._ledger, self._costs, request, worker, self.name, "least_load", ahead)
