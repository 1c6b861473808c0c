"""Per-client deficits of DLPM: charge, refill, and what an idle or returning client keeps."""

from __future__ import annotations

from collections.abc import Iterable

IDLE_RULES = ("lift", "cap", "reset")


class DeficitLedger:
    """Deficit ``q_i`` per client, in weighted tokens; the quantum is ``Q · weight_i``.

    The ledger keeps ``q_i <= Q · weight_i`` at all times: a refill only
    reaches clients at ``q_i <= 0``, and ``on_idle`` (called when a client
    goes idle) clips back to the quantum, which matters when a client's
    weight has dropped since its last refill. What a client that becomes
    backlogged again starts with is the idle rule:

    - ``cap``: its deficit as it went idle, capped at the quantum, debt kept.
      Refills it missed while idle are not given, so a client that left in
      debt waits behind every credited client of a round that is long over.
    - ``reset``: one quantum, debt forgiven, as if new. A client can shed
      debt by idling between requests.
    - ``lift`` (the default; VTC's rule in deficit terms): the refills the
      client missed since it last had a request waiting (idle, or only
      running: a refill reaches waiting clients only, so a client whose
      one long request runs at its fair rate falls behind the round) are
      applied as they would have been had it waited, each only while
      ``q_i <= 0``; the result is then lowered to the most credit any
      backlogged client has, weight-normalised:
      ``q_i <= weight_i · max_j q_j / weight_j``. VTC lifts a client that
      becomes backlogged to the smallest counter among the backlogged; a
      deficit is a counter seen from the current round, so the largest
      normalised deficit is that smallest counter. The client is served as
      soon as the most underserved backlogged client would be, and never
      before it: idling banks nothing. New clients start the same way, from
      one quantum.

    Every rule keeps ``q_i <= Q · weight_i``, and applies only when a client
    becomes backlogged, so DLPM's bound between continuously backlogged
    clients (``dlpm`` module docstring) holds under each.
    """

    def __init__(self, quantum: float, idle_rule: str = "lift") -> None:
        if quantum <= 0:
            raise ValueError("the DLPM quantum must be > 0")
        if idle_rule not in IDLE_RULES:
            raise ValueError(f"idle_deficit must be one of {', '.join(IDLE_RULES)}, got {idle_rule!r}")
        self.quantum = quantum
        self._idle_rule = idle_rule
        self._deficits: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        # Clients with nothing waiting, with the refill count when their queue last emptied.
        self._drained_since: dict[str, int] = {}
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
        forgive = self._idle_rule == "reset"
        self._deficits[client] = quantum if forgive else min(self._deficits[client], quantum)

    def on_drained(self, client: str) -> None:
        """``client`` has no request waiting any more (it may still have some running)."""
        self._drained_since.setdefault(client, self.refills)

    def on_backlogged(self, client: str, others_backlogged: Iterable[str], is_new: bool) -> None:
        """``client`` (after ``set_weight``) has a waiting request again, or for the first time."""
        drained_since = self._drained_since.pop(client, None)
        if self._idle_rule != "lift" or (drained_since is None and not is_new):
            return
        weight, q = self._weights[client], self._deficits[client]
        step = self.quantum * weight
        missed = 0 if drained_since is None else self.refills - drained_since
        if q <= 0 and missed:
            q += step * min(missed, int(-q // step) + 1)
        others = [self._deficits[c] / self._weights[c] for c in others_backlogged if c != client]
        self._deficits[client] = min(q, weight * max(others)) if others else q

    def deficits(self) -> dict[str, float]:
        return dict(self._deficits)
