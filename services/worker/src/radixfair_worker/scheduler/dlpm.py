"""Deficit Longest Prefix Match (Cao et al., arXiv 2501.14312), one worker.

Rules (see /work/shared/reference/dlpm.md):
  1. Order the waiting queue by longest prefix match, ties by arrival (arrival
     order beyond ``LPM_MAX_SORTED_QUEUE`` waiting requests, as LPM does).
  2. Walk it; admit a request only if its client's deficit ``q_i > 0`` and
     ``budget.try_admit`` accepts it. Requests of spent clients are skipped,
     and the walk goes on. The first budget refusal ends admission for this
     step: the batch is full, and the walk order is the priority.
  3. At admission, ``q_i -= w_in · computed + cached_token_weight · w_in ·
     cached`` prompt tokens; per generated token, ``q_i -= w_out``. A request
     re-admitted after preemption is not charged its input again.
  4. When a pass admits nothing, is not cut short by the budget, and requests
     still wait, every waiting client (all then have ``q_i <= 0``) gets
     ``q_i += Q · weight_i``; then walk again.
  5. A client that goes idle (nothing waiting, nothing running) is capped at
     ``Q · weight_i``, keeping any debt; with ``idle_deficit: reset`` it is set
     to ``Q · weight_i``, debt forgiven. New clients start there. The bound
     below is about continuously backlogged clients, so it holds either way.

Fairness bound. Let ``C_i`` be client i's cumulative charge (rule 3) and
``s_i = C_i / weight_i``. Take an interval in which clients A and B both have
a waiting request at every instant, and weights do not change.
  (a) Equal refills: a refill happens only when no waiting client has credit,
      and reaches every waiting client, so A and B get the same number k.
      Hence ``s_i(t2) - s_i(t1) = k·Q + (q_i(t1) - q_i(t2)) / weight_i``.
  (b) ``q_i <= Q · weight_i`` always (rules 4, 5).
  (c) ``q_i > -D_i``: take the last instant q_i was positive. From then on
      client i is admitted nothing, so the charges since are at most one
      admission (``<= w_in · L_i``, as cached_token_weight <= 1) plus the
      outputs of its requests running then: at most R_i requests of at most
      M_i tokens each. Refills only add. So ``D_i = w_in · L_i + w_out · M_i · R_i``.
Therefore, for any such interval,

    |Δs_A - Δs_B| < 2·Q + D_A / weight_A + D_B / weight_B

where L_i is client i's longest prompt, M_i its largest max_tokens and R_i
the most of its requests running at once (at most max_running_requests).
With one running request per client and unit weights this is 2·(Q + U), U
being the largest single-request cost: the digest's "Q plus the largest
single-request cost". Several running requests widen it, because a client
keeps paying for their outputs after its deficit is spent.
tests/worker/test_scheduler_dlpm_fairness.py checks it through the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_worker.config import SchedulerConfig
from radixfair_worker.request import Request
from radixfair_worker.scheduler.base import AdmissionBudget, PrefixMatcher
from radixfair_worker.scheduler.client_activity import ClientActivity
from radixfair_worker.scheduler.deficit_ledger import DeficitLedger
from radixfair_worker.scheduler.queue_order import prefix_match_order
from radixfair_worker.scheduler.service_meter import ServiceMeter


class DLPMPolicy:
    """LPM order gated by per-client deficits; ``Q`` trades fairness (small) for locality (large)."""

    name = "dlpm"

    def __init__(self, config: SchedulerConfig) -> None:
        self._meter = ServiceMeter(config)
        self._activity = ClientActivity()
        self._ledger = DeficitLedger(config.quantum, forgive_debt=config.idle_deficit == "reset")

    @property
    def quantum(self) -> float:
        return self._ledger.quantum

    @property
    def refill_count(self) -> int:
        """Refills so far; many refills per admission mean Q is small for the load."""
        return self._ledger.refills

    def deficits(self) -> dict[str, float]:
        return self._ledger.deficits()

    def on_arrival(self, request: Request) -> None:
        self._ledger.set_weight(request.client_id, request.weight)
        self._activity.arrived(request)

    def pick_next(
        self, waiting: Sequence[Request], cache: PrefixMatcher, budget: AdmissionBudget
    ) -> list[Request]:
        remaining = prefix_match_order(waiting, cache)
        admitted: list[Request] = []
        while remaining:
            passed, budget_full = self._walk(remaining, budget)
            admitted += passed
            if budget_full:
                break
            taken = {r.request_id for r in passed}
            remaining = [r for r in remaining if r.request_id not in taken]
            if not passed and remaining:
                self._ledger.refill({r.client_id for r in remaining})
        return admitted

    def on_output_tokens(self, request: Request, count: int) -> None:
        self._ledger.charge(request.client_id, self._meter.charge_output(request, count))

    def on_finished(self, request: Request) -> None:
        self._activity.finished(request)
        if self._activity.is_idle(request.client_id):
            self._ledger.on_idle(request.client_id)

    def client_service(self) -> dict[str, float]:
        return self._meter.client_service()

    def _walk(self, order: Sequence[Request], budget: AdmissionBudget) -> tuple[list[Request], bool]:
        """One pass over ``order``; returns those admitted and whether the budget refused one."""
        admitted = []
        for request in order:
            client = request.client_id
            if not self._ledger.has_credit(client):
                continue
            if not budget.try_admit(request):
                return admitted, True
            self._activity.admitted(request)
            self._ledger.charge(client, self._meter.charge_admission(request))
            admitted.append(request)
        return admitted, False
