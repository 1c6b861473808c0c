"""The router's dispatch rule, route -> book -> settle, with no transport in it.

One request's life in the ledger, wherever it is served from:

1. ``decide``: estimate each candidate worker's prefix match (CacheView),
   let the routing policy pick one (the policy admits the request into the
   ledger at its estimated input cost), record the route in the router's
   tree, and count the dispatch against the worker's load. Decisions are
   taken one at a time per router, so each sees the ones before it as load
   and as prefixes (requests arriving together would otherwise all see the
   same loads and tree: the demo's 3 clients all went to one worker).
2. ``output_charge``: output tokens at ``output_token_weight``, booked as
   they stream (the caller decides when: write-ahead, on a timer, or every
   so many tokens in virtual time).
3. ``settlement``: the final booking. A request nobody served (a retry
   elsewhere, or refused by its worker before any output) takes its
   admission back. A served one books its remaining output and corrects the
   input charge to the tokens the worker actually computed: the prompt is
   what the router forwarded, only the cache credit comes from the worker,
   clamped to the prompt (issue 12, point 2).

The gRPC server (``request_router.RequestRouter``) and the simulator
(``bench/simulator/sim_router.py``) both call this class, so a change to
booking reaches production and evaluation together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from radixfair_router.cache_view import CacheView
from radixfair_router.config import CostConfig
from radixfair_router.ledger import Ledger
from radixfair_router.ledger_state import Charge
from radixfair_router.policies import RoutingDecision, RoutingPolicy, RoutingRequest, WorkerState
from radixfair_router.policies.base import DispatchAhead, input_cost

# (worker id, load): a candidate worker and its requests queued or running, as the caller counts them.
WorkerLoad = tuple[str, int]


def output_charge(
    client_id: str, weight: float, worker_id: str, tokens: int, output_token_weight: float
) -> Charge:
    """Output tokens relayed (or generated, in the simulator) and not yet booked."""
    return Charge(client_id, weight, worker_id, output_token_weight * tokens, completion_tokens=tokens)


def settlement(
    decision: RoutingDecision,
    client_id: str,
    weight: float,
    prompt_tokens: int,
    costs: CostConfig,
    *,
    served: bool,
    completion_tokens: int = 0,
    cached_tokens: int | None = None,
) -> Charge:
    """The final charge of one dispatched request.

    ``completion_tokens`` is the output not yet booked (negative when output was booked ahead and
    never relayed). ``served=False``: no worker served it (the router retries it elsewhere, or the
    worker refused it before any output, e.g. a prompt longer than its context): the admission is taken
    back with any output booked ahead, and a retry admits again. Otherwise ``cached_tokens`` is the
    worker's cache credit, None when no result arrived (the admission's estimate then stands).
    """
    worker = decision.worker_id
    service = costs.output_token_weight * completion_tokens
    if not served:
        # completion_tokens: output booked ahead for a stream that relayed none (negative), taken back.
        return Charge(
            client_id,
            weight,
            worker,
            service - decision.charged,
            completion_tokens=completion_tokens,
            finished=True,
            requests=-1,
        )
    cached = 0
    if cached_tokens is not None:
        cached = min(max(cached_tokens, 0), prompt_tokens)
        service = service + input_cost(prompt_tokens, cached, costs) - decision.charged
    return Charge(
        client_id,
        weight,
        worker,
        service,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached,
        completion_tokens=completion_tokens,
        finished=True,
    )


class DispatchCore:
    """Routes, books and settles requests against one ledger; the transport is the caller's.

    ``on_dispatch(worker_id)`` is called inside the decision, before the next decision can start, so
    the caller's load count of that worker already includes the request when the next one is decided.
    """

    def __init__(
        self,
        policy: RoutingPolicy,
        cache_view: CacheView,
        ledger: Ledger,
        costs: CostConfig,
        on_dispatch: Callable[[str], None],
    ) -> None:
        self.policy = policy
        self.cache_view = cache_view
        self.ledger = ledger
        self.costs = costs
        self._on_dispatch = on_dispatch
        # An uncontended asyncio.Lock never suspends, so the simulator can drive decide() synchronously.
        self._deciding = asyncio.Lock()

    async def decide(
        self,
        client_id: str,
        weight: float,
        token_ids: Sequence[int],
        workers: Sequence[WorkerLoad],
        now: float | None = None,
        ahead: DispatchAhead | None = None,
    ) -> RoutingDecision:
        """Picks one of ``workers`` (never empty) and admits the request into the ledger.

        ``now`` is the time the route is recorded at in the tree (the simulator's virtual clock;
        None: monotonic time). ``ahead`` is told the admission's likely worker before its Redis round
        trip (policies.base.DispatchAhead); the returned decision is what counts.
        """
        async with self._deciding:
            view = self.cache_view
            matches = view.estimate(token_ids, [worker_id for worker_id, _ in workers])
            tree = view.tree
            states = [
                WorkerState(worker_id, load, matches[worker_id], tree.worker_tokens(worker_id))
                for worker_id, load in workers
            ]
            request = RoutingRequest(client_id, weight, len(token_ids))
            decision = await self.policy.route(request, states, ahead)
            view.record_routed(token_ids, decision.worker_id, now)
            self._on_dispatch(decision.worker_id)
        return decision

    def output_charge(self, client_id: str, weight: float, worker_id: str, tokens: int) -> Charge:
        return output_charge(client_id, weight, worker_id, tokens, self.costs.output_token_weight)

    def settlement(
        self,
        decision: RoutingDecision,
        client_id: str,
        weight: float,
        prompt_tokens: int,
        *,
        served: bool,
        completion_tokens: int = 0,
        cached_tokens: int | None = None,
    ) -> Charge:
        return settlement(
            decision,
            client_id,
            weight,
            prompt_tokens,
            self.costs,
            served=served,
            completion_tokens=completion_tokens,
            cached_tokens=cached_tokens,
        )

    async def book(self, charge: Charge) -> float:
        """Books one charge (output or settlement); returns the worker's deficit after it."""
        return await self.ledger.charge(charge)
