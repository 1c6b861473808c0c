"""What a simulation records: service per client over time, backlog, and every finished request.

``ObservedPolicy`` wraps the real scheduling policy of each simulated worker
and forwards every call to it unchanged; on the way it tells the recorder
what was admitted and generated, when. Charges are computed by the
scheduler's own ``ServiceMeter`` with the engine's weights, so "service" here
is exactly what the policies account.

Service and backlog time are kept in time bins (clients x bins arrays that
grow as needed), which is what the over-time figures and the per-bin Jain
index need, in memory linear in clients, not in tokens. For up to
``tracked`` clients the recorder also follows, after every engine step, the
weight-normalised service difference of every pair while both are
backlogged (have a request waiting): the largest swing of that difference
within one shared backlogged stretch is the pair's service gap, the quantity
DLPM's fairness bound limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.request import Request
from radixfair_engine.scheduler.base import AdmissionBudget, OutputCounts, PrefixMatcher, SchedulingPolicy
from radixfair_engine.scheduler.service_meter import ServiceMeter


class BinnedSeries:
    """Per-client amounts in fixed-width time bins; rows are clients in order of first appearance."""

    def __init__(self, bin_s: float) -> None:
        self.bin_s = bin_s
        self.index: dict[str, int] = {}
        self.values = np.zeros((16, 64))

    def row(self, client: str) -> int:
        row = self.index.get(client)
        if row is None:
            row = self.index[client] = len(self.index)
            if row >= self.values.shape[0]:
                self._grow(rows=2 * self.values.shape[0])
        return row

    def add(self, client: str, t: float, amount: float) -> None:
        row, col = self.row(client), int(t / self.bin_s)
        if col >= self.values.shape[1]:
            self._grow(cols=2 * col + 1)
        self.values[row, col] += amount

    def add_interval(self, client: str, t0: float, t1: float) -> None:
        """Spreads the length of [t0, t1) over the bins it covers."""
        row = self.row(client)
        first, last = int(t0 / self.bin_s), int(t1 / self.bin_s)
        if last >= self.values.shape[1]:
            self._grow(cols=2 * last + 1)
        if first == last:
            self.values[row, first] += t1 - t0
            return
        self.values[row, first] += (first + 1) * self.bin_s - t0
        self.values[row, first + 1 : last] += self.bin_s
        self.values[row, last] += t1 - last * self.bin_s

    def matrix(self, clients: Sequence[str], bins: int) -> np.ndarray:
        out = np.zeros((len(clients), bins))
        width = min(bins, self.values.shape[1])
        for i, client in enumerate(clients):
            row = self.index.get(client)
            if row is not None:
                out[i, :width] = self.values[row, :width]
        return out

    def _grow(self, rows: int | None = None, cols: int | None = None) -> None:
        shape = (max(rows or 0, self.values.shape[0]), max(cols or 0, self.values.shape[1]))
        grown = np.zeros(shape)
        grown[: self.values.shape[0], : self.values.shape[1]] = self.values
        self.values = grown


@dataclass
class FinishedRequest:
    request_id: str
    client_id: str
    worker: int
    arrival: float
    admitted: float
    first_token: float
    finished: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    preemptions: int
    # When the router placed it (after any wait in its admission gate; the arrival with one worker),
    # and the routing policy's reason: where a request's latency went, gate, worker queue or service.
    dispatched: float = 0.0
    route: str = ""


@dataclass
class PairGaps:
    """Running min/max of s_a - s_b over the current shared backlog stretch, per tracked pair."""

    clients: list[str]
    low: np.ndarray = field(init=False)
    high: np.ndarray = field(init=False)
    worst: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        k = len(self.clients)
        self.low = np.full((k, k), np.inf)
        self.high = np.full((k, k), -np.inf)
        self.worst = np.zeros((k, k))

    def sample(self, normalised: np.ndarray, backlogged: np.ndarray) -> None:
        diff = normalised[:, None] - normalised[None, :]
        joint = backlogged[:, None] & backlogged[None, :]
        np.minimum(self.low, np.where(joint, diff, np.inf), out=self.low)
        np.maximum(self.high, np.where(joint, diff, -np.inf), out=self.high)
        swing = np.where(np.isfinite(self.low), self.high - self.low, 0.0)
        np.maximum(self.worst, swing, out=self.worst)
        # A stretch ends where the pair is not both backlogged: start afresh.
        self.low[~joint] = np.inf
        self.high[~joint] = -np.inf


class Recorder:
    def __init__(self, config: SchedulerConfig, bin_s: float, tracked: Sequence[str]) -> None:
        self._meter = ServiceMeter(config)
        self.service = BinnedSeries(bin_s)
        self.backlog_time = BinnedSeries(bin_s)
        self.finished: list[FinishedRequest] = []
        self.normalised: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self._waiting_ids: set[str] = set()
        self._running_ids: set[str] = set()
        self._waiting_count: dict[str, int] = {}
        self._running_count: dict[str, int] = {}
        self.max_running: dict[str, int] = {}
        self._backlog_since: dict[str, float] = {}
        self.tracked = list(tracked)
        self._tracked_index = {c: i for i, c in enumerate(self.tracked)}
        self._tracked_service = np.zeros(len(self.tracked))
        self._tracked_backlogged = np.zeros(len(self.tracked), dtype=bool)
        self.gaps = PairGaps(self.tracked)
        # The same gaps over the stretches where both clients have a request held in the router's
        # admission gate: the premise of the late-binding bound (docs/cluster-fairness.md).
        self.gate_gaps = PairGaps(self.tracked)
        self._gate_count: dict[str, int] = {}
        self._tracked_in_gate = np.zeros(len(self.tracked), dtype=bool)
        self._gated = False
        self.end_time = 0.0

    # -- policy events -------------------------------------------------------

    def became_waiting(self, request: Request, now: float) -> None:
        rid, client = request.request_id, request.client_id
        self.weights[client] = request.weight
        if rid in self._running_ids:  # preempted
            self._running_ids.discard(rid)
            self._running_count[client] -= 1
        if rid not in self._waiting_ids:
            self._waiting_ids.add(rid)
            self._change_waiting(client, +1, now)

    def admitted(self, request: Request, now: float) -> None:
        rid, client = request.request_id, request.client_id
        if rid in self._waiting_ids:
            self._waiting_ids.discard(rid)
            self._change_waiting(client, -1, now)
        self._running_ids.add(rid)
        running = self._running_count[client] = self._running_count.get(client, 0) + 1
        if running > self.max_running.get(client, 0):
            self.max_running[client] = running
        self._book(client, request.weight, self._meter.charge_admission(request), now)

    def output(self, client_id: str, weight: float, count: int, now: float) -> None:
        self._book(client_id, weight, self._meter.charge_outputs({(client_id, weight): count}) * count, now)

    def left(self, request: Request, now: float) -> None:
        rid, client = request.request_id, request.client_id
        if rid in self._waiting_ids:
            self._waiting_ids.discard(rid)
            self._change_waiting(client, -1, now)
        if rid in self._running_ids:
            self._running_ids.discard(rid)
            self._running_count[client] -= 1

    # -- simulator events ----------------------------------------------------

    def request_finished(
        self, request: Request, worker: int, dispatched: float | None = None, route: str = ""
    ) -> None:
        self.finished.append(
            FinishedRequest(
                request.request_id,
                request.client_id,
                worker,
                request.arrival_time,
                request.admitted_time if request.admitted_time is not None else request.arrival_time,
                request.first_token_time if request.first_token_time is not None else request.finished_time,
                request.finished_time or 0.0,
                len(request.prompt_ids),
                request.num_cached_tokens,
                len(request.output_ids),
                request.preemptions,
                request.arrival_time if dispatched is None else dispatched,
                route,
            )
        )

    def gate_changed(self, client: str, delta: int) -> None:
        """A request of ``client`` entered (+1) or left (-1) the router's admission gate."""
        self._gated = True
        count = self._gate_count[client] = self._gate_count.get(client, 0) + delta
        index = self._tracked_index.get(client)
        if index is not None:
            self._tracked_in_gate[index] = count > 0

    def sample(self) -> None:
        """After an engine step: update the pairwise gaps of the tracked clients."""
        if len(self.tracked) > 1:
            self.gaps.sample(self._tracked_service, self._tracked_backlogged)
            if self._gated:
                self.gate_gaps.sample(self._tracked_service, self._tracked_in_gate)

    def close(self, now: float) -> None:
        for client, since in list(self._backlog_since.items()):
            self.backlog_time.add_interval(client, since, now)
        self._backlog_since.clear()
        self.end_time = now

    def client_service(self) -> dict[str, float]:
        return self._meter.client_service()

    # -- internals -----------------------------------------------------------

    def _book(self, client: str, weight: float, charge: float, now: float) -> None:
        if not charge:
            return
        self.service.add(client, now, charge)
        value = self.normalised.get(client, 0.0) + charge / weight
        self.normalised[client] = value
        index = self._tracked_index.get(client)
        if index is not None:
            self._tracked_service[index] = value

    def _change_waiting(self, client: str, delta: int, now: float) -> None:
        before = self._waiting_count.get(client, 0)
        after = self._waiting_count[client] = before + delta
        if before == 0 and after > 0:
            self._backlog_since[client] = now
        elif before > 0 and after == 0:
            self.backlog_time.add_interval(client, self._backlog_since.pop(client), now)
        index = self._tracked_index.get(client)
        if index is not None:
            self._tracked_backlogged[index] = after > 0


class ObservedPolicy:
    """The real policy, unchanged, with every decision also reported to a Recorder."""

    def __init__(self, inner: SchedulingPolicy, recorder: Recorder, clock) -> None:
        self.inner = inner
        self.name = inner.name
        self._recorder = recorder
        self._clock = clock

    def on_arrival(self, request: Request) -> None:
        self.inner.on_arrival(request)
        self._recorder.became_waiting(request, self._clock())

    def pick_next(
        self, waiting: Sequence[Request], cache: PrefixMatcher, budget: AdmissionBudget
    ) -> list[Request]:
        admitted = self.inner.pick_next(waiting, cache, budget)
        now = self._clock()
        for request in admitted:
            self._recorder.admitted(request, now)
        return admitted

    def on_output_tokens(self, counts: OutputCounts) -> None:
        self.inner.on_output_tokens(counts)
        now = self._clock()
        for (client, weight), count in counts.items():
            self._recorder.output(client, weight, count, now)

    def on_finished(self, request: Request) -> None:
        self.inner.on_finished(request)
        self._recorder.left(request, self._clock())

    def client_service(self) -> dict[str, float]:
        return self.inner.client_service()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)
