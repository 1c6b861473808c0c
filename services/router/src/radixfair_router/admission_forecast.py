"""Which worker a ledger admission will choose, known before Redis answers.

The router starts the worker call on this forecast while the admission's
Redis round trip runs (``forward.dispatch_ahead``), so the round trip leaves
a request's time to first token. The admission stays the decision: a call
on a worker the admission did not choose is cancelled before any of its
output is relayed.

A "fixed" admission books the worker the policy already chose: the forecast
is certain. A "d2lpm" admission runs D2LPM's deficit rule
(``ledger_state.d2lpm_choice``) on the shared deficits in Redis; the forecast
runs the same rule on the deficits this router last read back from Redis for
that client (each admission and each charge returns one), and a pair it has
not seen yet starts, as in Redis, with one quantum. Another replica's
charges, and this router's charges still in flight, are what it cannot see:
there the forecast can be wrong, and only costs the cancelled call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from radixfair_router.ledger_state import Admission, AdmitCandidate, d2lpm_choice


class AdmissionForecast:
    """Last-known D2LPM deficits per (client, worker), and the admission they predict.

    Holds the ``max_clients`` clients seen most recently (least recently seen dropped first), and for
    each at most ``max_workers`` workers (past that, those of its latest admission), so memory stays
    bounded with any number of clients and any churn of worker ids (a restarted pod comes back under
    a new id); a dropped pair reads as new again, which can only cost a cancelled call.
    """

    def __init__(self, quantum: float, max_clients: int = 4096, max_workers: int = 512) -> None:
        if max_clients < 1 or max_workers < 1:
            raise ValueError(
                f"max_clients and max_workers must be at least 1, got {max_clients}, {max_workers}"
            )
        self._quantum = quantum
        self._max_clients = max_clients
        self._max_workers = max_workers
        self._deficits: OrderedDict[str, dict[str, float]] = OrderedDict()

    @property
    def pairs(self) -> int:
        """How many (client, worker) deficits it holds."""
        return sum(len(known) for known in self._deficits.values())

    def note(self, client_id: str, worker_id: str, deficit: float) -> None:
        """``q[client][worker]`` as the ledger returned it after a charge."""
        self._known(client_id)[worker_id] = deficit

    def admitted(
        self,
        client_id: str,
        weight: float,
        mode: str,
        candidates: Sequence[AdmitCandidate],
        admission: Admission,
    ) -> None:
        """What an admission changed: the refills it made (the same rounds, on the known deficits)
        and the chosen worker's deficit it returned."""
        known = self._known(client_id)
        if mode == "d2lpm":
            deficits = self._deficits_of(known, self._quantum * weight, candidates)
            d2lpm_choice(deficits, candidates, _refill_by(deficits, self._quantum * weight))
            known.update(deficits)
        if len(known) > self._max_workers:  # workers long gone: keep this admission's
            kept = {c.worker_id: known[c.worker_id] for c in candidates if c.worker_id in known}
            known.clear()
            known.update(kept)
        known[admission.worker_id] = admission.deficit

    def choose(
        self,
        client_id: str,
        weight: float,
        mode: str,
        candidates: Sequence[AdmitCandidate],
        fallback: str,
    ) -> str | None:
        """The worker ``Ledger.admit`` with these arguments would choose on the last-known deficits,
        or None where the forecast is near a boundary that a charge this router has not read back
        could move: a refill, the fallback, or a chosen worker left without credit by this request's
        own cost. A miss costs a cancelled call, so the router only dispatches ahead on a firm forecast.
        """
        if mode != "d2lpm":
            return fallback
        credit = self._quantum * weight
        deficits = self._deficits_of(self._deficits.get(client_id, {}), credit, candidates)
        chosen, refills = d2lpm_choice(deficits, candidates, _refill_by(deficits, credit))
        if chosen is None or refills:
            return None
        cost = next(c.cost for c in candidates if c.worker_id == chosen)
        return chosen if deficits[chosen] > cost else None

    def _known(self, client_id: str) -> dict[str, float]:
        known = self._deficits.get(client_id)
        if known is None:
            known = self._deficits[client_id] = {}
            if len(self._deficits) > self._max_clients:
                self._deficits.popitem(last=False)
        else:
            self._deficits.move_to_end(client_id)
        return known

    @staticmethod
    def _deficits_of(
        known: dict[str, float], credit: float, candidates: Sequence[AdmitCandidate]
    ) -> dict[str, float]:
        # A pair not seen yet starts with one quantum of credit, as in Redis.
        return {c.worker_id: known.get(c.worker_id, credit) for c in candidates}


def _refill_by(deficits: dict[str, float], credit: float) -> Callable[[str], None]:
    def refill(worker_id: str) -> None:
        deficits[worker_id] += credit

    return refill
