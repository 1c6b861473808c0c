"""A real scheduling policy wrapped to log what the engine asks of it, for order and wait tests."""

from __future__ import annotations

from radixfair_engine.request import Request


class RecordingPolicy:
    """The engine's real policy, logging in order: ("join", request), ("pick", {client: deficit} of the
    waiting clients as the pick began), ("admit", request) and ("leave", request)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.log: list[tuple[str, object]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def on_arrival(self, request: Request) -> None:
        self.log.append(("join", request))
        self.inner.on_arrival(request)

    def pick_next(self, waiting, cache, budget):
        # VTC keeps no deficits: its clients count as in credit.
        deficits = self.inner.fairness_state().deficits
        self.log.append(("pick", {r.client_id: deficits.get(r.client_id, 1.0) for r in waiting}))
        admitted = self.inner.pick_next(waiting, cache, budget)
        self.log += [("admit", r) for r in admitted]
        return admitted

    def on_finished(self, request: Request) -> None:
        self.log.append(("leave", request))
        self.inner.on_finished(request)
