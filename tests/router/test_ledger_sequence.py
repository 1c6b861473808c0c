"""Exactly-once ledger calls by per-replica sequence number, on a real redis-server (review finding 1)."""

from __future__ import annotations

import asyncio
import itertools

import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixfair_router.config import LedgerConfig
from radixfair_router.ledger import Ledger, RedisLedgerStore
from radixfair_router.ledger_state import AdmitCandidate, Charge

Q = 100.0
_prefixes = itertools.count()


def key_count(url: str, prefix: str) -> int:
    with redis.Redis.from_url(url) as client:
        return sum(1 for _ in client.scan_iter(f"{prefix}:*"))


def test_the_keys_a_ledger_leaves_in_redis_do_not_grow_with_the_number_of_charges(redis_url: str):
    async def book(prefix: str, charges: int) -> None:
        ledger = Ledger(LedgerConfig(store="redis", redis_url=redis_url, key_prefix=prefix), quantum=Q)
        await ledger.admit("a", 1.0, "fixed", [AdmitCandidate("w1", True, 5.0)], "w1")
        for index in range(charges):
            if index % 2:
                await ledger.charge(Charge("a", 1.0, "w1", 2.0, completion_tokens=1))
            else:  # the group-commit path: several charges in one pipelined round trip
                await ledger.charge_many([Charge("a", 1.0, "w1", 2.0, completion_tokens=1)] * 3)
        # Keys are counted while the replica runs (a clean close hands its lease back).
        assert key_count(redis_url, prefix) == counted.setdefault("keys", key_count(redis_url, prefix))
        record = next(r for r in await ledger.snapshot() if r.client_id == "a")
        assert record.completion_tokens == (charges // 2) + 3 * (charges - charges // 2)
        await ledger.close()

    counted: dict[str, int] = {}
    asyncio.run(book("few", 10))
    asyncio.run(book("many", 600))
    with redis.Redis.from_url(redis_url) as client:
        [applied] = list(client.scan_iter("many:applied:*"))
        # The high-water mark and the one admission's kept result: every call ran in order.
        assert set(client.hkeys(applied)) == {b"hw", b"r1"}


# Each call books a distinct power of two, so the total says which calls were booked, and how often.
CALLS = 6


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[int, bool]]:
    """Every call delivered 1-3 times in any order (retries, repeats after an outage, calls overtaking
    each other on different connections); after a delivery the replica may learn that it ran (settle)."""
    times = draw(st.lists(st.integers(1, 3), min_size=CALLS, max_size=CALLS))
    order = draw(st.permutations([i for i in range(CALLS) for _ in range(times[i])]))
    settles = draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
    return list(zip(order, settles))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=deliveries())
def test_every_call_is_booked_exactly_once_however_often_and_in_whatever_order_it_arrives(
    redis_url: str, plan: list[tuple[int, bool]]
):
    prefix = f"seq{next(_prefixes)}"

    async def scenario():
        store = RedisLedgerStore(aioredis.Redis.from_url(redis_url), prefix, quantum=1e9)
        seqs = [store.issue() for _ in range(CALLS)]
        ran: set[int] = set()
        for call, settle in plan:
            charge = Charge("a", 1.0, "w1", float(1 << call), completion_tokens=1 << call)
            await store.charge(charge, seqs[call])
            ran.add(call)
            if settle:
                store.settled(seqs[call])
        [record] = await store.snapshot()
        fields = await store._redis.hlen(f"{prefix}:applied:{store.replica_id}")
        await store.close()
        return record, fields

    record, fields = asyncio.run(scenario())
    assert record.completion_tokens == (1 << CALLS) - 1
    assert record.service == float((1 << CALLS) - 1)
    # hw plus at most one entry per call that ran ahead of an earlier one.
    assert fields <= 1 + CALLS


def test_a_redis_that_lost_the_marks_takes_new_calls_from_the_replicas_floor(redis_url: str):
    async def scenario():
        store = RedisLedgerStore(aioredis.Redis.from_url(redis_url), "lost", quantum=1e9)
        for _ in range(5):
            seq = store.issue()
            await store.charge(Charge("a", 1.0, "w1", 1.0, completion_tokens=1), seq)
            store.settled(seq)
        await store._redis.flushall()  # Redis restarted empty
        later = [store.issue(), store.issue()]
        # The second overtakes the first: both count, once each, although Redis has no mark at all.
        await store.charge(Charge("a", 1.0, "w1", 1.0, completion_tokens=1), later[1])
        await store.charge(Charge("a", 1.0, "w1", 1.0, completion_tokens=1), later[0])
        await store.charge(Charge("a", 1.0, "w1", 1.0, completion_tokens=1), later[1])
        [record] = await store.snapshot()
        marks = await store._redis.hgetall(f"lost:applied:{store.replica_id}")
        await store.close()
        return record, marks, later

    record, marks, later = asyncio.run(scenario())
    assert record.completion_tokens == 2
    # The mark restarted below the floor and passed both: no out-of-order entry is left behind.
    assert marks == {b"hw": str(later[1]).encode()}
