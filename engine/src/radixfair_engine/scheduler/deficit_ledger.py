"""Per-client deficits of DLPM: charge, refill, and what an idle or returning client keeps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from radixfair_engine.scheduler.charge_sums import add_repeatedly

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
    - ``lift`` (the default; VTC's lift, applied to debt only): a client
      in debt (``q_i <= 0``) is credited the refills it missed since it
      last had a request waiting (idle, or only running: a refill reaches
      waiting clients only, so a client whose one long request runs at its
      fair rate falls behind the round), each only while ``q_i <= 0``, as
      they would have been had it waited. What the lift adds stops at the
      most credit any backlogged client has, weight-normalised
      (``weight_i · max_j q_j / weight_j``; VTC lifts a client that becomes
      backlogged to the smallest counter among the backlogged, and the
      largest normalised deficit is that smallest counter), so the refills
      it missed make it level with the most underserved client, never
      ahead of it. The lift never takes credit away: a client keeps the
      deficit it has (capped at the quantum when it went idle, as under
      ``cap``), and a new client starts with one quantum. Kept credit puts
      it at most one quantum ahead of the most underserved backlogged
      client, which the bound's 2Q term allows. An earlier form also
      lowered *that* credit to the most underserved backlogged client's.
      Under D2LPM a light client's queue empties after nearly every
      admission, and on a worker whose KV memory is full the backlogged
      clients' credit is whatever is left of their round, so every return
      cut the light client's credit to one request's worth and its next
      requests waited for the next refill, which comes only once every
      credited waiting request has got memory: the 200-request flood's
      light clients were 1.4-1.7x slower than under ``cap``
      (docs/evaluation.md, "Several workers").
      Idling still banks nothing: credit only comes from refills a client
      would have had while waiting, and never exceeds one quantum.
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

    def normalised(self, client: str) -> float:
        """``q_i / weight_i``: the larger, the more underserved (VTC's smaller counter)."""
        return self._deficits[client] / self._weights[client]

    def charge(self, client: str, amount: float) -> None:
        self._deficits[client] -= amount

    def charge_tokens(self, counts: Mapping[tuple[str, float], int], per_token: float) -> None:
        """``charge`` of ``per_token`` for each token ``counts`` holds per (client, weight)."""
        deficits = self._deficits
        for (client, _), count in counts.items():
            value = deficits[client]
            deficits[client] = value - per_token if count == 1 else add_repeatedly(value, -per_token, count)

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

    def on_backlogged(self, client: str, others_backlogged: Iterable[str]) -> None:
        """``client`` (after ``set_weight``) has a waiting request again, or for the first time."""
        drained_since = self._drained_since.pop(client, None)
        kept = self._deficits[client]
        if self._idle_rule != "lift" or drained_since is None or kept > 0:
            return
        missed = self.refills - drained_since
        if not missed:
            return
        step = self.quantum * self._weights[client]
        lifted = kept + step * min(missed, int(-kept // step) + 1)
        weight = self._weights[client]
        others = [self._deficits[c] / self._weights[c] for c in others_backlogged if c != client]
        if others:
            lifted = min(lifted, weight * max(others))
        self._deficits[client] = max(kept, lifted)

    def deficits(self) -> dict[str, float]:
        return dict(self._deficits)
