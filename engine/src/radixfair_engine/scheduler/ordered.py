"""Policies that admit the waiting queue in one fixed order: FCFS, LPM and LPM-with-aging."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.request import Request
from radixfair_engine.scheduler.base import AdmissionBudget, Clock, FairnessState, OutputCounts, PrefixMatcher
from radixfair_engine.scheduler.service_meter import ServiceMeter


class OrderedPolicy:
    """Admits waiting requests in ``order``'s order until the budget refuses one.

    Stopping at the first refusal (rather than looking for a smaller request
    that still fits) keeps the order a strict priority: otherwise a long
    prompt could be overtaken forever by short ones. It also spares the
    engine admission attempts that would evict cache pages for nothing.
    Subclasses supply ``order``; they keep no fairness state. ``clock`` is
    kept as ``self._clock`` for an order that weighs waiting time.
    """

    name = "ordered"
    # Whether the walk skips requests the budget holds for an in-batch shared prefix
    # (scheduler.in_batch_prefix). Prefix-ordering subclasses set it; FCFS keeps strict arrival order.
    defers_to_shared_prefix = False

    def __init__(self, config: SchedulerConfig, clock: Clock = time.monotonic) -> None:
        self._meter = ServiceMeter(config)
        self._clock = clock

    def order(self, waiting: Sequence[Request], cache: PrefixMatcher) -> Iterable[Request]:
        raise NotImplementedError

    def admitted(self, requests: list[Request]) -> None:
        """Called once per step with the requests just admitted, for subclasses that track the queue."""

    def on_arrival(self, request: Request) -> None:
        pass

    def pick_next(
        self, waiting: Sequence[Request], cache: PrefixMatcher, budget: AdmissionBudget
    ) -> list[Request]:
        admitted = []
        for request in self.order(waiting, cache):
            if self.defers_to_shared_prefix and budget.holds(request):
                continue  # waits for a leader's prefix; not refused, so the walk goes on
            if not budget.try_admit(request):
                break
            self._meter.charge_admission(request)
            admitted.append(request)
        self.admitted(admitted)
        return admitted

    def on_output_tokens(self, counts: OutputCounts) -> None:
        self._meter.charge_outputs(counts)

    def on_finished(self, request: Request) -> None:
        pass

    def client_service(self) -> dict[str, float]:
        return self._meter.client_service()

    def fairness_state(self) -> FairnessState:
        return FairnessState()
