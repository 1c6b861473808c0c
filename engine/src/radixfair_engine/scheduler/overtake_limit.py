"""How far a request may be overtaken by requests of its own client: DLPM's per-request wait bound."""

from __future__ import annotations

from collections.abc import Callable

from radixfair_engine.request import Request


class OvertakeLimit:
    """Per client, its waiting requests in the order they joined the queue, and its admission count.

    A request has been passed over once for every admission of another
    request of its client since it joined (arrival, or return after a
    preemption). After ``max_overtakes`` of them it is *due*. Join order
    and the count grow together, so if any of a client's requests is due,
    the one that joined first is: ``due`` only looks at that one.
    """

    def __init__(self, max_overtakes: int) -> None:
        if max_overtakes < 0:
            raise ValueError("max_overtakes must be >= 0")
        self.max_overtakes = max_overtakes
        self._admissions: dict[str, int] = {}
        # client -> {request: the client's admission count when it joined}, in join order.
        self._joined: dict[str, dict[Request, int]] = {}

    def joined(self, request: Request) -> None:
        queue = self._joined.setdefault(request.client_id, {})
        queue.pop(request, None)
        queue[request] = self._admissions.get(request.client_id, 0)

    def left(self, request: Request) -> None:
        """``request`` left the queue without being admitted (finished or cancelled while waiting)."""
        self._joined.get(request.client_id, {}).pop(request, None)

    def admitted(self, request: Request) -> None:
        self.left(request)
        self._admissions[request.client_id] = self._admissions.get(request.client_id, 0) + 1

    def due(self, client: str, is_waiting: Callable[[Request], bool]) -> Request | None:
        """The client's longest-waiting request if it has been passed over ``max_overtakes`` times.

        Entries not ``is_waiting`` are stale (the engine dropped a request
        without telling the policy) and are forgotten.
        """
        head = self.head(client, is_waiting)
        if head is None:
            return None
        passed = self._admissions.get(client, 0) - self._joined[client][head]
        return head if passed >= self.max_overtakes else None

    def head(self, client: str, is_waiting: Callable[[Request], bool]) -> Request | None:
        """The client's waiting request that joined first (stale entries forgotten, as in ``due``)."""
        queue = self._joined.get(client)
        while queue:
            head = next(iter(queue))
            if is_waiting(head):
                return head
            del queue[head]
        return None
