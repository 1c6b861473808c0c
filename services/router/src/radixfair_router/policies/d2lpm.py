"""D2LPM: Double Deficit Longest Prefix Match, the router half of locality-aware fairness.

Per (client i, worker w) the ledger keeps a deficit ``q[i][w]``; per worker
the router knows a load and an estimated prefix match for this prompt.

1. Candidates are the healthy workers, ordered by longest prefix match
   (ties: lower load, then id). A match shorter than ``cache_threshold`` of
   the prompt counts as no match for the order: such workers rank with the
   cold ones, by the smaller cache (tokens the router has sent there), then
   load, then id. A worker is *eligible* when its load is under
   the balance threshold: not (load - min_load > balance_abs_threshold and
   load > balance_rel_threshold * min_load).
2. Refill: if no candidate has ``q[i][w] > 0``, every candidate with
   ``q[i][w] <= 0`` gets ``+= Q * weight_i``, repeated until one has credit
   (DLPM's "a pass admits nothing: refill and repeat", per (client, worker)).
3. The request goes to the first eligible candidate with ``q[i][w] > 0`` in
   match order: the longest match if it has credit and room, else the next
   best. If none qualifies, it goes to the least-loaded worker.
4. The chosen ``q[i][w]`` is charged the request's cost: at routing, the
   uncached prompt tokens times w_in (cached ones at the configured fraction,
   default 0); then output tokens at w_out as they stream; and when the
   worker's usage arrives, the input charge is corrected to the tokens the
   worker actually computed.

Steps 1-3 run as one Lua script, so replicas sharing Redis never both spend
the same credit. A client with a hot prefix therefore stays on its worker
for about Q of service, then spreads to the next-best workers, while each
worker's local DLPM keeps fairness among the clients it holds.

Where this reading is ours (the paper states D2LPM at the level of the
digest in ../shared/reference/dlpm.md; we could not check its text line by
line here):
- The refill set is the client's *candidate* workers (healthy, serving the
  model), not all workers ever seen, so a dead worker's stale deficit does
  not block refills.
- New (client, worker) pairs start with one quantum of credit, and a refund
  (actual cost below the estimate) never lifts a deficit above Q * weight, so
  an idle client cannot bank credit (the digest's idle cap, applied always).
- The least-loaded fallback is charged too, so a client that only ever
  lands on fallbacks still spends and refills like any other.
- Load is requests queued plus running, as the worker reports and as the
  router itself has dispatched since the last report.
- Trivial matches are no locality. Read literally, "longest match first"
  sends every prompt to a worker that holds only the chat template's first
  tokens while an idle worker waits: with 2 workers and 3 light clients the
  README's demo sent all 9 requests to one worker. Like the SGLang router's
  cache threshold (0.3 of the prompt by default), a match below
  ``cache_threshold`` of the prompt does not rank a worker ahead of a less
  loaded one. A client's own long shared prefix (a system prompt, a
  document) is far above it and stays sticky. Its cost still counts the
  cached tokens, so the charge is the real one.
"""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_router.ledger_state import AdmitCandidate
from radixfair_router.policies.base import (
    DispatchAhead,
    PolicyBase,
    RoutingDecision,
    RoutingRequest,
    WorkerState,
    input_cost,
    least_loaded,
)


class D2lpmPolicy(PolicyBase):
    name = "d2lpm"
    local_policy = "dlpm"
    # Steps 1-3 above run in the ledger's admission (one Lua script with Redis).
    ledger_rule = "d2lpm"

    def rank(self, request: RoutingRequest, workers: Sequence[WorkerState]) -> list[AdmitCandidate]:
        """Candidates in match order (ties: lower load, then id), each marked eligible (load under
        the threshold) with its input cost.

        This runs for every worker on every request. Most workers match nothing useful of a
        prompt, so they are ordered by a C-level key and share one cost when they match nothing.
        """
        cfg, costs, prompt = self._config, self._costs, request.prompt_tokens
        min_load = min(w.load for w in workers)
        abs_limit, rel_limit = min_load + cfg.balance_abs_threshold, cfg.balance_rel_threshold * min_load
        # A match below the cache threshold ranks with the cold workers (at least one token, so
        # a cold worker is never "matched").
        useful = max(cfg.cache_threshold * prompt, 1)
        matched = sorted(
            (w for w in workers if w.prefix_match >= useful),
            key=lambda w: (-w.prefix_match, w.load, w.worker_id),
        )
        # Cold workers by the smaller cache, then load, then id: the SGLang router's rule for a cache
        # miss. Not load first: load counts requests, and a flooder's many requests on its cached
        # document cost little and say nothing about how long a newcomer waits there, since the local
        # DLPM serves clients, not requests, fairly. Ranked by load, every cold request of the light
        # clients went to the one worker the flood had not yet filled, which then held their long
        # uncached prompts while the flood had the rest (the traces of issue 13, dev seeds 1-5).
        # The cache size counts the distinct prefixes a worker holds: new ones spread over the
        # workers, and each client keeps its prefix where it landed.
        rest = sorted(
            (w for w in workers if w.prefix_match < useful), key=lambda w: (w.cache_size, w.load, w.worker_id)
        )
        cold_cost = input_cost(prompt, 0, costs)
        return [
            AdmitCandidate(
                w.worker_id,
                not (w.load > abs_limit and w.load > rel_limit),
                input_cost(prompt, w.prefix_match, costs) if w.prefix_match else cold_cost,
            )
            for w in (*matched, *rest)
        ]

    async def route(
        self, request: RoutingRequest, workers: Sequence[WorkerState], ahead: DispatchAhead | None = None
    ) -> RoutingDecision:
        ranked = self.rank(request, workers)
        fallback = least_loaded(workers).worker_id
        admission = await self._ledger.admit(
            request.client_id, request.weight, self.ledger_rule, ranked, fallback, ahead
        )
        match = next(w.prefix_match for w in workers if w.worker_id == admission.worker_id)
        if admission.by_fallback:
            reason = "least_load"
        elif match < self._config.cache_threshold * request.prompt_tokens:
            reason = "no_useful_match"  # the least loaded worker with credit
        elif admission.worker_id == ranked[0].worker_id:
            reason = "longest_match"
        else:
            reason = "next_best_match"
        return RoutingDecision(
            worker_id=admission.worker_id,
            policy=self.name,
            reason=reason,
            prefix_match=match,
            charged=admission.charged,
            deficit=admission.deficit,
            refills=admission.refills,
        )
