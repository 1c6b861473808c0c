"""Holds requests back when workers are busy and lets them go in VTC order (global_vtc).

A router that dispatches every request at once cannot be fair: the order is
then the workers' business. With the gate, at most ``slots_per_worker``
requests per healthy worker are in flight from this router; the rest wait,
and each freed slot goes to the waiting request whose client has the lowest
VTC counter (lifted, for a client returning from idle, to the lowest active
counter). Counters live in the ledger, so with Redis the order is global
across router replicas, while each replica gates its own slots.

VTC lifts a client once, when it becomes backlogged. A client waiting here
may have nothing in flight, so asking the ledger for lifted counters at every
hand-off would lift it to the *current* lowest counter each time, tie it with
the busiest client, and turn the order into FCFS. The gate therefore records
the lifted counter of a client when it starts waiting, and while it keeps
waiting orders it by max(that value, its own raw counter).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from radixfair_router.ledger import Ledger


@dataclass(order=True)
class _Waiter:
    seq: int
    client_id: str = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)


class VtcAdmissionGate:
    def __init__(self, ledger: Ledger, capacity: Callable[[], int]) -> None:
        self._ledger = ledger
        self._capacity = capacity
        self._inflight = 0
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        self._dispatching = False
        # Lifted counter of each waiting client, as of when it became backlogged here.
        self._backlogged_at: dict[str, float] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def slot(self, client_id: str) -> AsyncIterator[None]:
        await self._enter(client_id)
        try:
            yield
        finally:
            self._inflight -= 1
            self._kick()

    async def _enter(self, client_id: str) -> None:
        capacity = self._capacity()
        # No worker at all: let routing answer UNAVAILABLE rather than wait forever.
        if capacity <= 0 or (not self._waiting and self._inflight < capacity):
            self._inflight += 1
            return
        waiter = _Waiter(next(self._seq), client_id, asyncio.get_running_loop().create_future())
        if client_id not in self._backlogged_at:
            lifted = await self._ledger.vtc_priorities([client_id])
            self._backlogged_at.setdefault(client_id, lifted[client_id])
        self._waiting.append(waiter)
        self._kick()
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
                if not any(w.client_id == client_id for w in self._waiting):
                    self._backlogged_at.pop(client_id, None)
            elif waiter.granted.done() and not waiter.granted.cancelled():
                self._inflight -= 1  # granted just as the caller left: give the slot back
                self._kick()
            raise

    def _kick(self) -> None:
        if self._waiting and not self._dispatching:
            self._dispatching = True
            asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        try:
            while self._waiting and (self._inflight < self._capacity() or self._capacity() <= 0):
                clients = sorted({w.client_id for w in self._waiting})
                raw = await self._ledger.vtc_priorities(clients, lift=False)
                priority = {c: max(raw[c], self._backlogged_at.get(c, raw[c])) for c in clients}
                if not self._waiting:
                    break
                chosen = min(self._waiting, key=lambda w: (priority.get(w.client_id, 0.0), w.seq))
                self._waiting.remove(chosen)
                if not any(w.client_id == chosen.client_id for w in self._waiting):
                    self._backlogged_at.pop(chosen.client_id, None)
                if not chosen.granted.done():
                    self._inflight += 1
                    chosen.granted.set_result(None)
        finally:
            self._dispatching = False
