"""An admission Redis did not answer is decided from local state, and Redis later books that decision.

The router serves the request where its local state sent it. The admission's call is repeated once
Redis is back (it may not have run): it must book the worker that served the request, at the cost the
local admission charged, not run D2LPM's choice again on Redis' deficits, which can name a worker that
never saw the request (and charge the client that worker's larger uncached cost).
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from support.router_stack import wait_until

from radixfair_router.config import LedgerConfig
from radixfair_router.ledger import Ledger
from radixfair_router.ledger_state import AdmitCandidate, Charge

Q = 100.0
# w1 holds the prompt (cost 8 there), w2 does not (cost 56).
CANDIDATES = [AdmitCandidate("w1", True, 8.0), AdmitCandidate("w2", True, 56.0)]


def test_an_admission_in_doubt_books_the_worker_the_local_state_chose(redis_url: str):
    async def scenario():
        ledger = Ledger(
            LedgerConfig(store="redis", redis_url=redis_url, redis_timeout_s=0.5, reconnect_interval_s=0.1),
            quantum=Q,
        )
        # Redis: alice spent her credit on w1, so its own D2LPM choice is now w2.
        first = await ledger.admit("alice", 1.0, "d2lpm", CANDIDATES, "w1")
        await ledger.charge(Charge("alice", 1.0, first.worker_id, 120.0, completion_tokens=60))
        pauser = aioredis.Redis.from_url(redis_url)
        await pauser.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            # Local state knows nothing of alice: w1, the longest match, has a fresh quantum.
            decided = await ledger.admit("alice", 1.0, "d2lpm", CANDIDATES, "w1")
        finally:
            await pauser.execute_command("CLIENT", "UNPAUSE")
            await pauser.aclose()
        await wait_until(lambda: ledger.shared, "the ledger back on Redis")
        (alice,) = [r for r in await ledger.snapshot() if r.client_id == "alice"]
        await ledger.close()
        return first, decided, alice

    first, decided, alice = asyncio.run(scenario())
    assert first.worker_id == "w1" and decided.worker_id == "w1" and decided.charged == 8.0
    assert alice.requests == 2 and alice.inflight == 2
    # Both admissions on w1 (8 each) and the charge: w2 never saw alice.
    assert alice.deficits == {"w1": Q - 8.0 - 120.0 - 8.0, "w2": Q}
    assert alice.service == 8.0 + 120.0 + 8.0
