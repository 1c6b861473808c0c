"""Which clients have requests waiting or running, as a policy sees them through its callbacks."""

from __future__ import annotations

from collections import defaultdict

from radixfair_engine.request import Request


class ClientActivity:
    """Per-client sets of waiting and running request ids.

    A policy learns of arrivals (``on_arrival``, also after a preemption),
    admissions (its own ``try_admit`` calls) and departures (``on_finished``,
    which the engine calls after marking the request finished, so the request's
    status no longer says where it was). Keeping ids here answers "is this
    client backlogged / idle" without asking the engine.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, set[str]] = defaultdict(set)
        self._running: dict[str, set[str]] = defaultdict(set)

    def arrived(self, request: Request) -> None:
        self._running[request.client_id].discard(request.request_id)
        self._waiting[request.client_id].add(request.request_id)

    def admitted(self, request: Request) -> None:
        self._waiting[request.client_id].discard(request.request_id)
        self._running[request.client_id].add(request.request_id)

    def finished(self, request: Request) -> None:
        self._waiting[request.client_id].discard(request.request_id)
        self._running[request.client_id].discard(request.request_id)

    def has_waiting(self, client_id: str) -> bool:
        return bool(self._waiting.get(client_id))

    def is_idle(self, client_id: str) -> bool:
        return not self._waiting.get(client_id) and not self._running.get(client_id)

    def running(self, client_id: str) -> int:
        """How many of ``client_id``'s requests are running."""
        return len(self._running.get(client_id, ()))

    def waiting(self, client_id: str) -> int:
        """How many of ``client_id``'s requests are waiting."""
        return len(self._waiting.get(client_id, ()))

    def running_clients(self) -> set[str]:
        return {client for client, ids in self._running.items() if ids}

    def waiting_clients(self) -> set[str]:
        return {client for client, ids in self._waiting.items() if ids}
