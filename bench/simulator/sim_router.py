"""The router's dispatch path in virtual time: its real DispatchCore, CacheView, policies and ledger.

Per request, the simulator calls the same ``DispatchCore`` that
``request_router.RequestRouter`` calls: ``decide`` (prefix estimates from the
approximate tree corrected by the workers' cache reports, the policy's route,
which admits into the ledger, the route recorded in the tree), output charged
in batches, and ``settlement`` correcting the input charge to what the worker
actually computed. Only the gRPC forwarding is left out, so booking cannot
drift between production and evaluation. The ledger is the router's
``LocalLedgerStore`` through ``Ledger(store="memory")``, whose coroutines
never suspend, so they are driven to completion synchronously here.

Load is the router's count of its requests in flight on each worker
(queued plus running), the same measure the router keeps per endpoint.

A policy with an admission gate (its ``admission_gate`` hook: global VTC, D2LPM
with late binding) holds requests back in the router's ``VtcAdmissionGate`` (at most
``vtc_slots_per_worker`` per worker in flight, freed slots going to the
lowest VTC counter). The gate is asyncio code, so the simulator runs it on
an event loop of its own: a held request is a task waiting in the real gate,
and the loop is pumped after every simulator event (``pump``) until the
gate's hand-offs have settled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from radixfair_router.admission_gate import VtcAdmissionGate
from radixfair_router.cache_view import CacheView
from radixfair_router.config import ApproxTreeConfig, CostConfig, LedgerConfig, PolicyConfig
from radixfair_router.dispatch_core import DispatchCore
from radixfair_router.ledger import Ledger
from radixfair_router.policies import RoutingDecision, build_policy

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine that never awaits anything pending (the in-process ledger's)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine suspended; only the in-process ledger can be driven synchronously")


class SimRouter:
    def __init__(
        self,
        policy: PolicyConfig,
        costs: CostConfig,
        worker_ids: Sequence[str],
        tree: ApproxTreeConfig | None = None,
        charge_batch_tokens: int | None = None,
    ) -> None:
        self.worker_ids = list(worker_ids)
        self.ledger = Ledger(LedgerConfig(store="memory"), policy.quantum)
        self.policy = build_policy(policy, costs, self.ledger)
        self.cache_view = CacheView(tree or ApproxTreeConfig())
        self.costs = costs
        self.inflight = dict.fromkeys(self.worker_ids, 0)
        self.core = DispatchCore(self.policy, self.cache_view, self.ledger, costs, self._dispatched)
        # The router books output every policy.output_charge_interval_s of wall time; in virtual
        # time, every this many tokens of a request stands in for that interval.
        self._batch = self.charge_batch_tokens = max(1, charge_batch_tokens or 16)
        self._decisions: dict[str, RoutingDecision] = {}
        self._uncharged: dict[str, int] = {}
        self.reasons: dict[str, int] = {}
        # Most requests in flight on all workers at once (the gate's limit shows here).
        self.max_inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: dict[str, asyncio.Event] = {}
        # Requests of each client dispatched and not yet finished, and the most at once (F_i of the
        # late-binding bound, docs/cluster-fairness.md).
        self.client_inflight: dict[str, int] = {}
        self.max_client_inflight: dict[str, int] = {}
        self.gate: VtcAdmissionGate | None = self.policy.admission_gate(lambda: len(self.worker_ids))
        if self.gate is not None:
            self._loop = asyncio.new_event_loop()

    # -- the admission gate (global VTC) -------------------------------------

    def hold(self, request_id: str, client_id: str, dispatch: Callable[[], None]) -> None:
        """Queues the request in the gate; ``dispatch`` runs when the gate lets it go."""
        assert self._loop is not None and self.gate is not None
        gate = self.gate
        done = self._done[request_id] = asyncio.Event()

        async def held() -> None:
            async with gate.slot(client_id):
                dispatch()
                await done.wait()

        self._loop.create_task(held())
        self.pump()

    def release(self, request_id: str) -> None:
        """The request finished: its slot goes back to the gate."""
        done = self._done.pop(request_id, None)
        if done is not None:
            done.set()
            self.pump()

    def pump(self, rounds: int = 6) -> None:
        """Runs the loop until the gate's hand-offs (a few task hops each) have happened."""
        if self._loop is None:
            return

        async def settle() -> None:
            for _ in range(rounds):
                await asyncio.sleep(0)

        self._loop.run_until_complete(settle())

    def close(self) -> None:
        if self._loop is not None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    def _dispatched(self, worker_id: str) -> None:
        self.inflight[worker_id] += 1

    def route(self, client_id: str, weight: float, token_ids: list[int], now: float, request_id: str) -> str:
        workers = [(w, self.inflight[w]) for w in self.worker_ids]
        decision = run_sync(self.core.decide(client_id, weight, token_ids, workers, now=now))
        self.max_inflight = max(self.max_inflight, sum(self.inflight.values()))
        self._decisions[request_id] = decision
        self._uncharged[request_id] = 0
        inflight = self.client_inflight[client_id] = self.client_inflight.get(client_id, 0) + 1
        if inflight > self.max_client_inflight.get(client_id, 0):
            self.max_client_inflight[client_id] = inflight
        self.reasons[decision.reason] = self.reasons.get(decision.reason, 0) + 1
        return decision.worker_id

    def decision(self, request_id: str) -> RoutingDecision:
        """The routing decision of a request in flight (placed and not yet finished)."""
        return self._decisions[request_id]

    def report(self, worker_id: str, page_size: int, hashes: list[int], now: float) -> None:
        self.cache_view.update_report(worker_id, page_size, hashes, received_at=now)

    def output(self, request_id: str, client_id: str, weight: float, tokens: int) -> None:
        pending = self._uncharged[request_id] + tokens
        if pending >= self._batch:
            worker_id = self._decisions[request_id].worker_id
            run_sync(self.core.book(self.core.output_charge(client_id, weight, worker_id, pending)))
            pending = 0
        self._uncharged[request_id] = pending

    def finished(self, request_id: str, client_id: str, weight: float, prompt: int, cached: int) -> None:
        decision = self._decisions.pop(request_id)
        pending = self._uncharged.pop(request_id)
        charge = self.core.settlement(
            decision, client_id, weight, prompt, served=True, completion_tokens=pending, cached_tokens=cached
        )
        run_sync(self.core.book(charge))
        self.inflight[decision.worker_id] -= 1
        self.client_inflight[client_id] -= 1

    def rejected(self, request_id: str, client_id: str, weight: float, prompt: int) -> None:
        """The worker refused the request before any output: nobody served it, so it costs nothing
        (issue 12, point 10), as the router settles it."""
        decision = self._decisions.pop(request_id)
        self._uncharged.pop(request_id)
        run_sync(self.core.book(self.core.settlement(decision, client_id, weight, prompt, served=False)))
        self.inflight[decision.worker_id] -= 1
        self.client_inflight[client_id] -= 1
