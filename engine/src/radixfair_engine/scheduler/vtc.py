"""Virtual Token Counter (Sheng et al., OSDI 2024): fair, and blind to cache locality."""

from __future__ import annotations

import time
from collections.abc import Sequence

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.request import Request
from radixfair_engine.scheduler.base import AdmissionBudget, Clock, FairnessState, OutputCounts, PrefixMatcher
from radixfair_engine.scheduler.charge_sums import add_repeatedly
from radixfair_engine.scheduler.client_activity import ClientActivity
from radixfair_engine.scheduler.queue_order import arrival_order
from radixfair_engine.scheduler.service_meter import ServiceMeter


class VTCPolicy:
    """Serves the backlogged client with the smallest virtual counter first.

    A client's counter grows by each charge divided by its weight: input at
    admission, output as generated (see ``ServiceMeter`` for the charge,
    which is the same for every policy). Within a client, requests go in
    arrival order. Admission stops at the first request the budget refuses.

    Lift: a client that becomes backlogged (its first waiting request
    arrives) has its counter raised to the smallest counter among the other
    backlogged clients, or, when none is backlogged, to the counter of the
    client served last. So idling banks no credit.
    """

    name = "vtc"

    def __init__(self, config: SchedulerConfig, clock: Clock = time.monotonic) -> None:
        self._meter = ServiceMeter(config)
        self._activity = ClientActivity()
        self._counters: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self._last_served_counter = 0.0

    def counters(self) -> dict[str, float]:
        """Virtual counters (weight-normalised service) per client, for metrics."""
        return dict(self._counters)

    def on_arrival(self, request: Request) -> None:
        client = request.client_id
        if request.weight <= 0:
            raise ValueError(f"client {client!r} has weight {request.weight}; weights must be > 0")
        self._weights[client] = request.weight
        if not self._activity.has_waiting(client):
            others = [self._counters[c] for c in self._activity.waiting_clients() if c != client]
            floor = min(others) if others else self._last_served_counter
            self._counters[client] = max(self._counters.get(client, 0.0), floor)
        self._activity.arrived(request)

    def pick_next(
        self, waiting: Sequence[Request], cache: PrefixMatcher, budget: AdmissionBudget
    ) -> list[Request]:
        queues: dict[str, list[Request]] = {}
        for request in reversed(arrival_order(waiting)):  # reversed: pop() takes the oldest
            queues.setdefault(request.client_id, []).append(request)
        admitted = []
        while queues:
            client = min(queues, key=lambda c: (self._counter(c), queues[c][-1].arrival_time))
            request = queues[client][-1]
            if not budget.try_admit(request):
                break
            queues[client].pop()
            if not queues[client]:
                del queues[client]
            self._activity.admitted(request)
            self._charge(client, request.weight, self._meter.charge_admission(request))
            self._last_served_counter = self._counters[client]
            admitted.append(request)
        return admitted

    def on_output_tokens(self, counts: OutputCounts) -> None:
        per_token = self._meter.charge_outputs(counts)
        for (client, request_weight), count in counts.items():
            weight = self._weights.get(client, request_weight)
            self._counters[client] = add_repeatedly(self._counter(client), per_token / weight, count)

    def on_finished(self, request: Request) -> None:
        self._activity.finished(request)

    def client_service(self) -> dict[str, float]:
        return self._meter.client_service()

    def fairness_state(self) -> FairnessState:
        return FairnessState(virtual_counters=self.counters())

    def _counter(self, client: str) -> float:
        return self._counters.get(client, self._last_served_counter)

    def _charge(self, client: str, request_weight: float, charge: float) -> None:
        weight = self._weights.get(client, request_weight)
        self._counters[client] = self._counter(client) + charge / weight
