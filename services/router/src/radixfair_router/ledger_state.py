"""The ledger's records and its in-process store.

Per client: weighted service received, a VTC virtual counter, token counts,
requests, and requests in flight. Per (client, worker): the D2LPM deficit
``q[i][w]``. ``LocalLedgerStore`` holds exactly the state that the Redis
scripts in ``ledger_scripts`` hold, with the same rules, so the router
behaves the same on either, and a degraded router's local changes can be
replayed into Redis as plain increments (its journal).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

# Refill rounds are bounded so a pathological quantum cannot spin forever;
# with Q at least one request's cost, one round is almost always enough.
MAX_REFILL_ROUNDS = 1000

CLIENT_COUNTERS = (
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "service",
    "vtc",
    "inflight",
)


class AdmitCandidate(NamedTuple):
    """A worker the request may go to, in the policy's order of preference.

    A NamedTuple, not a frozen dataclass: the router builds one per worker per
    request, and a frozen dataclass costs about 2.5x as much to create.
    """

    worker_id: str
    # D2LPM: long enough match and load under the threshold; only eligible
    # workers with a positive deficit are picked before the fallback.
    eligible: bool
    # Estimated input cost of the request on this worker (uncached tokens).
    cost: float


@dataclass(frozen=True)
class Admission:
    worker_id: str
    # q[i][w] of the chosen worker after the charge.
    deficit: float
    # Refill rounds this admission needed before some candidate had credit.
    refills: int
    vtc: float
    charged: float
    # D2LPM: no eligible worker had credit, so the fallback worker was taken.
    by_fallback: bool = False


@dataclass(frozen=True)
class Charge:
    """Service and tokens to book against a client and the worker that served them."""

    client_id: str
    weight: float
    worker_id: str
    service: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    # The request has ended: it no longer counts as in flight.
    finished: bool = False
    # -1 takes back an admission that no worker served (the router retries it elsewhere).
    requests: int = 0


@dataclass(frozen=True)
class ClientLedger:
    client_id: str
    weight: float
    service: float
    vtc: float
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    inflight: int
    deficits: dict[str, float]


@dataclass
class _ClientState:
    weight: float = 1.0
    counters: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLIENT_COUNTERS, 0.0))
    deficits: dict[str, float] = field(default_factory=dict)


@dataclass
class JournalEntry:
    """Increments applied locally to one client, to be replayed into Redis."""

    weight: float
    counters: dict[str, float] = field(default_factory=dict)
    deficits: dict[str, float] = field(default_factory=dict)


class LowestActiveCounter:
    """The lowest VTC counter among clients with requests in flight, as Redis's sorted set gives it.

    VTC's lift reads it on every admission of a client returning from idle, so
    it must not scan every client (10,000 and more). A heap with lazy deletion:
    every change pushes the client's new counter, and stale entries (older
    counters, clients gone idle) are dropped when they reach the top.
    """

    def __init__(self) -> None:
        self._current: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def update(self, client_id: str, vtc: float, active: bool) -> None:
        if not active:
            self._current.pop(client_id, None)
            return
        if self._current.get(client_id) == vtc:
            return
        self._current[client_id] = vtc
        heapq.heappush(self._heap, (vtc, client_id))
        if len(self._heap) > 4 * len(self._current) + 64:
            # Stale entries outnumber live ones: rebuild, so memory stays proportional to clients.
            self._heap = [(v, c) for c, v in self._current.items()]
            heapq.heapify(self._heap)

    def lowest(self) -> float | None:
        heap = self._heap
        while heap:
            vtc, client_id = heap[0]
            if self._current.get(client_id) == vtc:
                return vtc
            heapq.heappop(heap)
        return None

    def clear(self) -> None:
        self._current.clear()
        self._heap.clear()


class LocalLedgerStore:
    """In-process ledger with the Redis scripts' semantics.

    With ``journal=True`` every change is also recorded as increments per
    client, which is how a degraded router's state reaches Redis again.
    """

    def __init__(self, quantum: float, journal: bool = False) -> None:
        self._quantum = quantum
        self._clients: dict[str, _ClientState] = {}
        self._journal: dict[str, JournalEntry] | None = {} if journal else None
        self._recording = True
        self._lowest_active = LowestActiveCounter()

    def take_journal(self) -> dict[str, JournalEntry]:
        entries, self._journal = self._journal or {}, {}
        return entries

    def clear(self) -> None:
        self._clients.clear()
        self._lowest_active.clear()

    def admit(
        self,
        client_id: str,
        weight: float,
        mode: str,
        candidates: Sequence[AdmitCandidate],
        fallback: str,
        journal: bool = True,
    ) -> Admission:
        """``journal=False``: a local copy of a Redis call that will be repeated, not replayed."""
        self._recording = journal
        try:
            return self._admit(client_id, weight, mode, candidates, fallback)
        finally:
            self._recording = True

    def _admit(
        self,
        client_id: str,
        weight: float,
        mode: str,
        candidates: Sequence[AdmitCandidate],
        fallback: str,
    ) -> Admission:
        state = self._client(client_id, weight)
        credit = self._quantum * weight
        # inflight is never clamped: while degraded, a request admitted in Redis
        # may finish here and drive the local count below zero; the journal's
        # increments then still add up to the truth once replayed.
        if state.counters["inflight"] <= 0:
            self._lift_vtc(client_id, state)
        self._incr(client_id, state, "inflight", 1)
        self._incr(client_id, state, "requests", 1)
        deficits = state.deficits
        for c in candidates:
            if c.worker_id not in deficits:
                # A (client, worker) pair starts with one quantum of credit, as in Redis.
                deficits[c.worker_id] = credit
        refills = 0
        chosen = None
        if mode == "d2lpm":
            chosen, refills = d2lpm_choice(
                deficits, candidates, lambda worker: self._incr_deficit(client_id, state, worker, credit)
            )
        by_fallback = chosen is None
        chosen = fallback if chosen is None else chosen
        cost = next((c.cost for c in candidates if c.worker_id == chosen), 0.0)
        self._book_service(client_id, state, chosen, cost)
        return Admission(chosen, state.deficits[chosen], refills, state.counters["vtc"], cost, by_fallback)

    def charge(self, charge: Charge, journal: bool = True) -> float:
        self._recording = journal
        try:
            return self._charge(charge)
        finally:
            self._recording = True

    def _charge(self, charge: Charge) -> float:
        state = self._client(charge.client_id, charge.weight)
        self._deficit(charge.client_id, state, charge.worker_id)
        self._book_service(charge.client_id, state, charge.worker_id, charge.service)
        for name in ("prompt_tokens", "cached_tokens", "completion_tokens", "requests"):
            self._incr(charge.client_id, state, name, getattr(charge, name))
        if charge.finished:
            self._incr(charge.client_id, state, "inflight", -1)
        return state.deficits[charge.worker_id]

    def snapshot(self) -> list[ClientLedger]:
        return [_to_record(cid, s) for cid, s in sorted(self._clients.items())]

    def vtc_priorities(self, client_ids: Sequence[str], lift: bool = True) -> dict[str, float]:
        floor = self._lowest_active.lowest() if lift else None
        out = {}
        for client_id in client_ids:
            state = self._clients.get(client_id)
            vtc, inflight = (state.counters["vtc"], state.counters["inflight"]) if state else (0.0, 0.0)
            out[client_id] = lifted_counter(vtc, inflight, floor)
        return out

    def _book_service(self, client_id: str, state: _ClientState, worker_id: str, amount: float) -> None:
        if not amount:
            return
        self._incr(client_id, state, "service", amount)
        self._incr(client_id, state, "vtc", amount / state.weight)
        self._incr_deficit(client_id, state, worker_id, -amount)
        # A refund (negative charge) may not lift a deficit above one quantum:
        # deficits never exceed Q * weight, so an idle client cannot bank credit.
        credit = self._quantum * state.weight
        if state.deficits[worker_id] > credit:
            self._incr_deficit(client_id, state, worker_id, credit - state.deficits[worker_id])

    def _lift_vtc(self, client_id: str, state: _ClientState) -> None:
        """VTC's lift: a client returning from idle starts at the lowest active counter."""
        lowest = self._lowest_active.lowest()
        if lowest is not None and lowest > state.counters["vtc"]:
            self._incr(client_id, state, "vtc", lowest - state.counters["vtc"])

    def _client(self, client_id: str, weight: float) -> _ClientState:
        state = self._clients.get(client_id)
        if state is None:
            state = self._clients[client_id] = _ClientState(weight=weight)
        state.weight = weight
        if self._journal is not None and self._recording:
            self._journal.setdefault(client_id, JournalEntry(weight)).weight = weight
        return state

    def _deficit(self, client_id: str, state: _ClientState, worker_id: str) -> None:
        # A (client, worker) pair starts with one quantum of credit, as in Redis.
        state.deficits.setdefault(worker_id, self._quantum * state.weight)

    def _incr(self, client_id: str, state: _ClientState, name: str, delta: float) -> None:
        if not delta:
            return
        state.counters[name] += delta
        if name in ("vtc", "inflight"):
            counters = state.counters
            self._lowest_active.update(client_id, counters["vtc"], counters["inflight"] > 0)
        if self._journal is not None and self._recording:
            entry = self._journal[client_id]
            entry.counters[name] = entry.counters.get(name, 0.0) + delta

    def _incr_deficit(self, client_id: str, state: _ClientState, worker_id: str, delta: float) -> None:
        state.deficits[worker_id] += delta
        if self._journal is not None and self._recording:
            entry = self._journal[client_id]
            entry.deficits[worker_id] = entry.deficits.get(worker_id, 0.0) + delta


def d2lpm_choice(
    deficits: MutableMapping[str, float],
    candidates: Sequence[AdmitCandidate],
    refill: Callable[[str], None],
) -> tuple[str | None, int]:
    """D2LPM's pass over one client's per-worker deficits: (chosen worker or None, refill rounds).

    While no candidate has credit (``q[i][w] > 0``), ``refill(w)`` adds one quantum to each candidate
    with none (it must change ``deficits``); then the first eligible candidate with credit is chosen,
    None when there is none (the caller's fallback). Every candidate must be in ``deficits``. The Lua
    admission (ledger_scripts.ADMIT) runs the same rule; the local store and the router's forecast
    of an admission (admission_forecast.py) both call this one.
    """
    refills = 0
    while refills < MAX_REFILL_ROUNDS and not any(deficits[c.worker_id] > 0 for c in candidates):
        refills += 1
        for c in candidates:
            if deficits[c.worker_id] <= 0:
                refill(c.worker_id)
    return next((c.worker_id for c in candidates if c.eligible and deficits[c.worker_id] > 0), None), refills


def lifted_counter(vtc: float, inflight: float, lowest_active: float | None) -> float:
    """A client's VTC counter as VTC orders it: an idle client is lifted to the lowest active one."""
    if inflight > 0 or lowest_active is None:
        return vtc
    return max(vtc, lowest_active)


def _to_record(client_id: str, state: _ClientState) -> ClientLedger:
    c = state.counters
    return ClientLedger(
        client_id=client_id,
        weight=state.weight,
        service=c["service"],
        vtc=c["vtc"],
        requests=int(c["requests"]),
        prompt_tokens=int(c["prompt_tokens"]),
        cached_tokens=int(c["cached_tokens"]),
        completion_tokens=int(c["completion_tokens"]),
        inflight=int(c["inflight"]),
        deficits=dict(state.deficits),
    )
