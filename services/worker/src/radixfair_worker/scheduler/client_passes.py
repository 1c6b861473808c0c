"""How many admissions of other clients may pass a waiting client that has credit: DLPM's rule 7."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable


class ClientPassLimit:
    """Per client, the admission count its passes are counted from; which clients are due, in turn order.

    Client i is *passed* by every admission of another client's request. Its
    count starts over (``restart``) when it becomes backlogged, when a refill
    gives it credit, and when one of its requests is admitted; while it has a
    waiting request and credit nothing else restarts it, so its passes are at
    least the admissions of others since it last had both. After
    ``max_passes`` passes it is *due*: DLPM admits one of its requests before
    the next request in prefix-match order (``DLPMPolicy``).

    Due clients take turns in the order they became due: the smaller the
    count their passes started at, the earlier; ties by the larger
    weight-normalised credit (VTC's smallest counter first). A turn restarts
    the client at the current count, behind every client already due, so
    between becoming due and its turn a client sees at most one admission of
    each other client.
    """

    def __init__(self, max_passes: int) -> None:
        if max_passes < 0:
            raise ValueError("max_client_passes must be >= 0")
        self.max_passes = max_passes
        self._admissions = 0
        self._started: dict[str, int] = {}

    def restart(self, client: str) -> None:
        self._started[client] = self._admissions

    def admitted(self, client: str) -> None:
        self._admissions += 1
        self._started[client] = self._admissions

    def passes(self, client: str) -> int:
        return self._admissions - self._started.setdefault(client, self._admissions)

    def turns(self, clients: Iterable[str], credit: Callable[[str], float]) -> Turns:
        """The turn order of one step over ``clients`` (those with a waiting request and credit).

        ``credit`` is a client's weight-normalised deficit."""
        for client in clients:
            self._started.setdefault(client, self._admissions)
        ordered = sorted(clients, key=lambda c: (self._started[c], -credit(c), c))
        return Turns(self, deque(ordered))


class Turns:
    """The clients of one step in turn order; the first is due once it has been passed ``max_passes`` times.

    The order stays sorted by the count passes started at: an admitted client
    restarts at the current count, the largest, and goes to the back
    (``admitted``), as does one a refill gives credit (``restarted``).
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
        if client in self._order:
            self._order.remove(client)
        self._order.append(client)

    def restarted(self, client: str) -> None:
        """A refill gave ``client`` credit: its passes start over, behind every other client."""
        self._limit.restart(client)
        if client in self._order:
            self._order.remove(client)
        self._order.append(client)
