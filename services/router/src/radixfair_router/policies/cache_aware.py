"""Cache-aware routing, after the SGLang router's algorithm.

1. If the load is imbalanced (max - min > balance_abs_threshold and
   max > balance_rel_threshold * min), send the request to the least loaded
   worker: balance wins over locality.
2. Otherwise find the worker with the longest estimated prefix match. If it
   covers more than ``cache_threshold`` of the prompt, send it there.
3. Otherwise the prompt is new to everyone: send it to the worker whose
   approximate cache is smallest, so new prefixes spread over free capacity.

Fairness plays no part in the choice; the ledger still books the service.
"""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_router.policies.base import (
    DispatchAhead,
    PolicyBase,
    RoutingDecision,
    RoutingRequest,
    WorkerState,
    admit_fixed,
    is_imbalanced,
    least_loaded,
)


class CacheAwarePolicy(PolicyBase):
    name = "cache_aware"
    local_policy = "lpm"

    def choose(self, request: RoutingRequest, workers: Sequence[WorkerState]) -> tuple[WorkerState, str]:
        cfg = self._config
        if is_imbalanced([w.load for w in workers], cfg.balance_abs_threshold, cfg.balance_rel_threshold):
            return least_loaded(workers), "balance"
        best = min(workers, key=lambda w: (-w.prefix_match, w.load, w.worker_id))
        if best.prefix_match > cfg.cache_threshold * max(request.prompt_tokens, 1):
            return best, "longest_match"
        return min(workers, key=lambda w: (w.cache_size, w.load, w.worker_id)), "smallest_cache"

    async def route(
        self, request: RoutingRequest, workers: Sequence[WorkerState], ahead: DispatchAhead | None = None
    ) -> RoutingDecision:
        worker, reason = self.choose(request, workers)
        return await admit_fixed(self._ledger, self._costs, request, worker, self.name, reason, ahead)
