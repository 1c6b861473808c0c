"""A batch of output charges is one pipelined round trip, and it survives Redis losing its script cache."""

from __future__ import annotations

import asyncio

import redis

from radixfair_router.config import LedgerConfig
from radixfair_router.ledger import Ledger
from radixfair_router.ledger_state import Charge


def _charges(tokens: int) -> list[Charge]:
    return [
        Charge("alice", 1.0, "w0", 2.0 * tokens, completion_tokens=tokens),
        Charge("alice", 1.0, "w1", 2.0 * tokens, completion_tokens=tokens),
        Charge("bob", 2.0, "w0", 2.0 * tokens, completion_tokens=tokens),
    ]


def test_a_batch_sent_after_redis_forgot_its_scripts_is_booked_once_and_the_ledger_stays_shared(redis_url):
    async def scenario():
        ledger = Ledger(LedgerConfig(store="redis", redis_url=redis_url), quantum=4096.0)
        try:
            await ledger.charge_many(_charges(3))
            redis.Redis.from_url(redis_url).script_flush()  # as a restarted Redis: no script cached
            await ledger.charge_many(_charges(5))
            await ledger.charge_many(_charges(7)[:1])  # one charge: a plain script call
            records = {r.client_id: r for r in await ledger.snapshot()}
            return ledger.shared, ledger.degraded_transitions, records
        finally:
            await ledger.close()

    shared, transitions, records = asyncio.run(scenario())
    assert shared and transitions == 0
    assert records["alice"].completion_tokens == 2 * (3 + 5) + 7
    assert records["bob"].completion_tokens == 3 + 5
    assert records["alice"].service == 2.0 * (2 * (3 + 5) + 7)
