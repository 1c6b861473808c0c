"""How many admissions of other clients may pass a client back with credit: DLPM's rule 7."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping

from radixfair_engine.scheduler.charge_sums import add_repeatedly


class ClientPassLimit:
    """Clients whose turn is pending, with the admission count their passes are counted from.

    A client's turn becomes pending when it has a waiting request again
    after being idle, nothing waiting and nothing running (``returned``).
    It ends when any request of the client is admitted. A pending client is
    *passed* by every admission of another client's request; its count
    starts over when it returns and when a refill gives it credit, so while
    it has credit its passes are at least the admissions of others since it
    last had credit. After ``max_passes`` passes it is *due*: DLPM admits its
    request before the next one in prefix-match order (``DLPMPolicy``).

    Only a returning client takes a turn, once per return. A client that
    stays backlogged (a flood on its own cached document) is served in prefix
    order alone: turns for clients whose documents were evicted, one request
    each in rotation, would evict the next document each time (a cyclic
    access pattern that LRU serves with no hits at all).

    Due clients take turns in the order they became due: the smaller the
    count their passes started at, the earlier; ties by the larger
    weight-normalised credit (VTC's smallest counter first). So between
    becoming due and its turn a client sees at most one admission of each
    other pending client.
    """

    def __init__(self, max_passes: int) -> None:
        if max_passes < 0:
            raise ValueError("max_client_passes must be >= 0")
        self.max_passes = max_passes
        self._admissions = 0
        self._pending: dict[str, int] = {}  # client -> the admission count its passes start at

    def returned(self, client: str) -> None:
        """``client`` has a waiting request again after being idle: its turn is pending."""
        self._pending[client] = self._admissions

    def admitted(self, client: str) -> None:
        self._admissions += 1
        self._pending.pop(client, None)

    def is_pending(self, client: str) -> bool:
        return client in self._pending

    def passes(self, client: str) -> int:
        return self._admissions - self._pending[client]

    def turns(self, clients: Iterable[str], credit: Callable[[str], float]) -> Turns:
        """The turn order of one step over the pending ones among ``clients`` (waiting, with credit).

        ``credit`` is a client's weight-normalised deficit."""
        pending = [c for c in clients if c in self._pending]
        ordered = sorted(pending, key=lambda c: (self._pending[c], -credit(c), c))
        return Turns(self, deque(ordered))

    def credited(self, client: str) -> None:
        """A refill gave ``client`` credit: a pending turn's passes start over."""
        if client in self._pending:
            self._pending[client] = self._admissions


class Turns:
    """The pending clients of one step in turn order; the first is due once passed ``max_passes`` times.

    The order stays sorted by the count passes started at: a client a refill
    gives credit starts over at the current count, the largest, and goes to
    the back (``credited``); an admitted client leaves (``admitted``).
    """

    def __init__(self, limit: ClientPassLimit, order: deque[str]) -> None:
        self._limit = limit
        self._order = order

    def next_due(self) -> str | None:
        """The client whose turn it is, if it is due; it stays first until ``admitted`` or ``skip``."""
        if self._order and self._limit.passes(self._order[0]) >= self._limit.max_passes:
            return self._order[0]
        return None

    def skip(self, client: str) -> None:
        """``client`` takes no turn this step (no credit, nothing waiting, or its request is held)."""
        self._order.remove(client)

    def admitted(self, client: str) -> None:
        """One of ``client``'s requests was admitted (in its turn or in prefix order)."""
        self._limit.admitted(client)
        if self._order and self._order[0] == client:
            self._order.popleft()
        elif client in self._order:
            self._order.remove(client)

    def credited(self, client: str) -> None:
        self._limit.credited(client)
        if client in self._order:
            self._order.remove(client)
        if self._limit.is_pending(client):
            self._order.append(client)


class RoomForTurns:
    """Rule 7's wait for room: for each due turn the budget refused, the one client drained for it.

    A refused turn used to end the step, so the whole batch drained until some document's pages
    unlocked (on one worker: ~25 running down to ~5-12 for 0.1-0.4 s per cold turn). Instead, at a
    turn's first refusal one other running client is chosen; none of its requests is admitted until
    the turn is taken, so its running requests finish within their remaining lifetime and the prefix
    they lock becomes evictable, while prefix order goes on with the other clients. Once the chosen
    client has nothing running and the turn is still refused, the refusal ends the step as before.
    """

    def __init__(self) -> None:
        self._drained: dict[str, str | None] = {}

    def refused(
        self,
        client: str,
        running: Callable[[str], int],
        waiting: Callable[[str], int],
        clients: Iterable[str],
    ) -> str | None:
        """``client``'s turn was refused: the client drained for it, or None if that one has drained.

        The one drained is the running client with the fewest requests waiting (its prefix, evicted once
        it drains, is the one fewest queued requests would have used), then the fewest running."""
        if client not in self._drained:
            candidates = [(waiting(c), running(c), c) for c in clients if c != client and running(c) > 0]
            self._drained[client] = min(candidates)[2] if candidates else None
        drained = self._drained[client]
        if drained is None or running(drained) == 0:
            self._drained[client] = None
            return None
        return drained

    def admitted(self, client: str) -> None:
        self._drained.pop(client, None)


class ServiceStanding:
    """VTC's virtual counters, with its lift, kept for rule 7's gate (``turns_only_when_behind``).

    A client's counter grows by each charge divided by its weight (rule 3's charges). When it becomes
    backlogged (a request arrives with none of its own waiting) it is lifted to the smallest counter
    among the other backlogged clients, or, with none backlogged, to the counter of the client charged
    last, as in VTC, so idling banks nothing. It is then *behind* if other clients are backlogged and
    its counter is below the mean of theirs: it has received less, weight for weight, than they have
    on average, so it is below its share of what the backlogged clients got.
    """

    def __init__(self) -> None:
        self._counters: dict[str, float] = {}
        self._last_charged = 0.0

    def charged(self, client: str, normalised: float) -> None:
        self._last_charged = self._counters[client] = self._counters.get(client, 0.0) + normalised

    def charged_tokens(self, counts: Mapping[tuple[str, float], int], per_token: float) -> None:
        """``charged`` of ``per_token / weight`` for each token ``counts`` holds per (client, weight),
        in its order (the last key's client is the one charged last)."""
        counters = self._counters
        total = self._last_charged
        for (client, weight), count in counts.items():
            value = counters.get(client, 0.0)
            step = per_token / weight
            total = counters[client] = value + step if count == 1 else add_repeatedly(value, step, count)
        self._last_charged = total

    def backlogged(self, client: str, others: Iterable[str]) -> bool:
        """``client`` has a waiting request again (``others``: the backlogged clients); lifts it and
        returns whether it is behind them."""
        counters = [self._counters.get(other, 0.0) for other in others if other != client]
        floor = min(counters) if counters else self._last_charged
        mine = self._counters[client] = max(self._counters.get(client, 0.0), floor)
        return bool(counters) and mine < sum(counters) / len(counters)
