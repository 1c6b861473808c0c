"""Per-client deficits of DLPM: charge, refill, and the idle cap."""

from __future__ import annotations

from collections.abc import Iterable


class DeficitLedger:
    """Deficit ``q_i`` per client, in weighted tokens; the quantum is ``Q · weight_i``.

    A client seen for the first time starts at its quantum, as if it had just
    been refilled. The ledger keeps ``q_i <= Q · weight_i`` at all times: a
    refill only reaches clients at ``q_i <= 0``, and ``on_idle`` (called when a
    client goes idle) clips back to the quantum, which matters when a
    client's weight has dropped since its last refill. With ``forgive_debt``
    an idle client is set back to its quantum, debt included, as if new.
    """

    def __init__(self, quantum: float, forgive_debt: bool = False) -> None:
        if quantum <= 0:
            raise ValueError("the DLPM quantum must be > 0")
        self.quantum = quantum
        self._forgive_debt = forgive_debt
        self._deficits: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self.refills = 0

    def set_weight(self, client: str, weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"client {client!r} has weight {weight}; weights must be > 0")
        self._weights[client] = weight
        self._deficits.setdefault(client, self.quantum * weight)

    def has_credit(self, client: str) -> bool:
        return self._deficits[client] > 0

    def charge(self, client: str, amount: float) -> None:
        self._deficits[client] -= amount

    def refill(self, waiting_clients: Iterable[str]) -> None:
        """Adds ``Q · weight_i`` to every given client whose deficit is spent (``q_i <= 0``)."""
        for client in waiting_clients:
            if self._deficits[client] <= 0:
                self._deficits[client] += self.quantum * self._weights[client]
        self.refills += 1

    def on_idle(self, client: str) -> None:
        """An idle client keeps at most one quantum, so idling banks no credit."""
        quantum = self.quantum * self._weights[client]
        self._deficits[client] = quantum if self._forgive_debt else min(self._deficits[client], quantum)

    def deficits(self) -> dict[str, float]:
        return dict(self._deficits)
