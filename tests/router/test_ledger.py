"""The ledger's rules, on a real redis-server and on the explicit in-process store alike."""

from __future__ import annotations

import asyncio
import time

import pytest

from radixfair.redis_launcher import RedisServer
from radixfair_router.config import LedgerConfig
from radixfair_router.ledger import Ledger
from radixfair_router.ledger_state import AdmitCandidate, Charge

Q = 100.0


def make_ledger(store: str, redis_url: str, **overrides: object) -> Ledger:
    url = redis_url if store == "redis" else ""
    return Ledger(LedgerConfig(store=store, redis_url=url, **overrides), quantum=Q)  # type: ignore[arg-type]


def candidates(*specs: tuple[str, bool, float]) -> list[AdmitCandidate]:
    return [AdmitCandidate(w, eligible, cost) for w, eligible, cost in specs]


async def client_record(ledger: Ledger, client_id: str):
    return next(r for r in await ledger.snapshot() if r.client_id == client_id)


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest, redis_url: str) -> str:
    return request.param


def test_d2lpm_admit_picks_the_first_eligible_worker_with_credit_and_charges_it(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        admission = await ledger.admit(
            "a", 1.0, "d2lpm", candidates(("w1", True, 30), ("w2", True, 50)), "w2"
        )
        record = await client_record(ledger, "a")
        await ledger.close()
        return admission, record

    admission, record = asyncio.run(scenario())
    assert admission.worker_id == "w1"
    assert admission.deficit == pytest.approx(Q - 30)
    assert admission.refills == 0
    assert record.deficits == {"w1": pytest.approx(Q - 30), "w2": pytest.approx(Q)}
    assert record.service == pytest.approx(30) and record.requests == 1 and record.inflight == 1


def test_d2lpm_moves_to_the_next_best_worker_once_the_best_one_is_spent(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        ranked = candidates(("w1", True, 60), ("w2", True, 60))
        chosen = [(await ledger.admit("a", 1.0, "d2lpm", ranked, "w2")).worker_id for _ in range(4)]
        await ledger.close()
        return chosen

    # w1: 100 -> 40 -> -20 (spent); then w2: 100 -> 40 -> -20; all spent -> refill.
    assert asyncio.run(scenario()) == ["w1", "w1", "w2", "w2"]


def test_d2lpm_refills_every_candidate_once_none_has_credit(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        ranked = candidates(("w1", True, 150), ("w2", True, 150))
        first = await ledger.admit("a", 1.0, "d2lpm", ranked, "w2")
        second = await ledger.admit("a", 1.0, "d2lpm", ranked, "w2")
        third = await ledger.admit("a", 1.0, "d2lpm", ranked, "w2")
        record = await client_record(ledger, "a")
        await ledger.close()
        return first, second, third, record

    first, second, third, record = asyncio.run(scenario())
    assert (first.worker_id, first.refills) == ("w1", 0)  # w1: 100 -> -50
    assert (second.worker_id, second.refills) == ("w2", 0)  # w2: 100 -> -50
    # Neither has credit: one refill round adds Q to both (50 each), and the best match wins.
    assert (third.worker_id, third.refills) == ("w1", 1)
    assert record.deficits == {"w1": pytest.approx(-100), "w2": pytest.approx(50)}


def test_d2lpm_falls_back_when_no_eligible_worker_has_credit(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        await ledger.admit("a", 1.0, "d2lpm", candidates(("w1", True, 120)), "w1")
        # w1 is spent; w2 has credit but is over the load threshold (not eligible).
        ranked = candidates(("w1", True, 10), ("w2", False, 10), ("w3", False, 10))
        admission = await ledger.admit("a", 1.0, "d2lpm", ranked, "w3")
        await ledger.close()
        return admission

    admission = asyncio.run(scenario())
    assert admission.worker_id == "w3" and admission.refills == 0


def test_weight_scales_the_quantum(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        admission = await ledger.admit("heavy", 3.0, "d2lpm", candidates(("w1", True, 250)), "w1")
        await ledger.close()
        return admission

    assert asyncio.run(scenario()).deficit == pytest.approx(3 * Q - 250)


def test_a_refund_never_lifts_a_deficit_above_one_quantum(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        await ledger.admit("a", 1.0, "fixed", candidates(("w1", True, 40)), "w1")
        q = await ledger.charge(Charge("a", 1.0, "w1", service=-90, finished=True))
        await ledger.close()
        return q

    assert asyncio.run(scenario()) == pytest.approx(Q)


def test_vtc_lifts_a_client_returning_from_idle_to_the_lowest_active_counter(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        one = candidates(("w1", True, 0))
        await ledger.admit("busy", 1.0, "fixed", one, "w1")
        await ledger.charge(Charge("busy", 1.0, "w1", service=500))
        await ledger.admit("late", 2.0, "fixed", one, "w1")
        late = await client_record(ledger, "late")
        await ledger.close()
        return late

    late = asyncio.run(scenario())
    assert late.vtc == pytest.approx(500)  # lifted to busy's counter, not 0


def test_vtc_lift_follows_the_lowest_client_still_in_flight(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        one = candidates(("w1", True, 0))
        for client, service in (("low", 100), ("mid", 300), ("high", 700)):
            await ledger.admit(client, 1.0, "fixed", one, "w1")
            await ledger.charge(Charge(client, 1.0, "w1", service=service))
        await ledger.charge(Charge("low", 1.0, "w1", service=0, finished=True))  # low goes idle
        # Each was lifted to low's 100 on arrival: low 100, mid 400, high 800. Then mid passes high.
        await ledger.charge(Charge("mid", 1.0, "w1", service=500))  # mid: 900
        await ledger.admit("late", 1.0, "fixed", one, "w1")
        late = await client_record(ledger, "late")
        await ledger.close()
        return late

    late = asyncio.run(scenario())
    assert late.vtc == pytest.approx(800)  # high is now the lowest in flight; idle low does not count


def test_token_counts_accumulate_per_client(store: str, redis_url: str):
    async def scenario():
        ledger = make_ledger(store, redis_url)
        await ledger.admit("a", 1.0, "fixed", candidates(("w1", True, 8)), "w1")
        await ledger.charge(
            Charge("a", 1.0, "w1", 20, prompt_tokens=10, cached_tokens=2, completion_tokens=10)
        )
        await ledger.charge(Charge("a", 1.0, "w1", 10, completion_tokens=5, finished=True))
        record = await client_record(ledger, "a")
        await ledger.close()
        return record

    record = asyncio.run(scenario())
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens) == (10, 2, 15)
    assert record.service == pytest.approx(38) and record.inflight == 0


def test_concurrent_ledgers_on_one_redis_lose_no_update(redis_url: str):
    clients = ["a", "b", "c"]

    async def one_replica(replica: int) -> None:
        # Generous timeout: this test is about atomicity, not outages, on a loaded CI box.
        ledger = make_ledger("redis", redis_url, redis_timeout_s=5.0)
        ranked = candidates(("w1", True, 7), ("w2", True, 7))

        async def request(n: int) -> None:
            cid = clients[n % len(clients)]
            admission = await ledger.admit(cid, 1.0, "d2lpm", ranked, "w2")
            await ledger.charge(Charge(cid, 1.0, admission.worker_id, 2, completion_tokens=1, finished=True))

        await asyncio.gather(*(request(replica + n) for n in range(60)))
        await ledger.close()

    async def scenario():
        await asyncio.gather(one_replica(0), one_replica(1))
        reader = make_ledger("redis", redis_url)
        records = await reader.snapshot()
        await reader.close()
        return records

    records = asyncio.run(scenario())
    assert sum(r.requests for r in records) == 120
    assert sum(r.completion_tokens for r in records) == 120
    assert sum(r.service for r in records) == pytest.approx(120 * 9)
    assert all(r.inflight == 0 for r in records)
    for r in records:
        # Deficits start at Q per worker and only move by charges and whole
        # refills of Q, so credit granted minus service spent is a multiple of Q.
        granted = (sum(r.deficits.values()) + r.service) / Q
        assert granted == pytest.approx(round(granted)) and round(granted) >= 2


def test_ledger_degrades_to_local_state_and_reconciles_when_redis_returns(caplog: pytest.LogCaptureFixture):
    server = RedisServer().start()
    try:

        async def scenario():
            ledger = make_ledger("redis", server.url, reconnect_interval_s=0.05, redis_timeout_s=0.2)
            one = candidates(("w1", True, 10))
            await ledger.admit("a", 1.0, "fixed", one, "w1")
            await ledger.charge(Charge("a", 1.0, "w1", 10, completion_tokens=5, finished=True))
            server.stop()
            during = await ledger.admit("a", 1.0, "fixed", one, "w1")
            await ledger.charge(Charge("a", 1.0, "w1", 6, completion_tokens=3, finished=True))
            degraded = not ledger.shared
            server.start()
            deadline = time.monotonic() + 10
            while not ledger.shared and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            record = await client_record(ledger, "a")
            await ledger.close()
            return during, degraded, record

        # A fresh redis-server starts empty: the reconciled totals are the degraded period's.
        during, degraded, record = asyncio.run(scenario())
    finally:
        server.stop()
    assert during.worker_id == "w1" and degraded
    assert (record.requests, record.completion_tokens, record.inflight) == (1, 3, 0)
    assert record.service == pytest.approx(16)
    assert "routing on local state" in caplog.text and "reconciled 1 client" in caplog.text


def test_a_call_that_timed_out_but_ran_is_not_booked_twice(redis_url: str):
    import threading

    import redis

    async def scenario():
        ledger = make_ledger("redis", redis_url, reconnect_interval_s=0.05, redis_timeout_s=0.2)
        await ledger.admit("a", 1.0, "fixed", candidates(("w1", True, 0)), "w1")
        # Redis stalls for 0.6 s: the charge times out here, yet Redis runs it after the stall.
        stall = threading.Thread(
            target=lambda: redis.Redis.from_url(redis_url).execute_command("DEBUG", "SLEEP", "0.6")
        )
        stall.start()
        await asyncio.sleep(0.05)
        await ledger.charge(Charge("a", 1.0, "w1", 10, completion_tokens=5, finished=True))
        degraded = not ledger.shared
        stall.join()
        deadline = time.monotonic() + 10
        while not ledger.shared and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        record = await client_record(ledger, "a")
        await ledger.close()
        return degraded, record

    degraded, record = asyncio.run(scenario())
    assert degraded
    assert (record.completion_tokens, record.inflight, record.requests) == (5, 0, 1)
    assert record.service == pytest.approx(10)


def test_repeating_a_script_call_with_the_same_sequence_number_changes_nothing(redis_url: str):
    import redis.asyncio as aioredis

    from radixfair_router.ledger import RedisLedgerStore

    async def scenario():
        store = RedisLedgerStore(aioredis.Redis.from_url(redis_url), "t", quantum=Q)
        one = candidates(("w1", True, 30))
        seq = store.issue()
        first = await store.admit("a", 1.0, "fixed", one, "w1", seq)
        again = await store.admit("a", 1.0, "fixed", one, "w1", seq)  # unsettled: a retry in doubt
        store.settled(seq)
        charge = Charge("a", 1.0, "w1", 10, completion_tokens=5, finished=True)
        seq = store.issue()
        q1 = await store.charge(charge, seq)
        store.settled(seq)
        q2 = await store.charge(charge, seq)  # settled, then repeated: below the high-water mark
        [record] = await store.snapshot()
        await store.close()
        return first, again, q1, q2, record

    first, again, q1, q2, record = asyncio.run(scenario())
    assert first == again and q1 == q2 == pytest.approx(Q - 40)
    assert (record.requests, record.completion_tokens, record.inflight) == (1, 5, 0)
    assert record.service == pytest.approx(40)
