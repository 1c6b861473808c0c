"""The Redis ledger under load and faults: a healthy Redis never looks down, a returning one is
trusted once (no flapping), and a router replica killed with SIGKILL leaves nothing in flight."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import redis

from radixfair.redis_launcher import RedisServer
from radixfair_router.config import LedgerConfig
from radixfair_router.ledger import Ledger
from radixfair_router.ledger_state import AdmitCandidate, Charge

Q = 100.0
ONE = [AdmitCandidate("w1", True, 5.0)]


def make_ledger(url: str, **overrides: object) -> Ledger:
    return Ledger(LedgerConfig(store="redis", redis_url=url, **overrides), quantum=Q)  # type: ignore[arg-type]


async def record(ledger: Ledger, client_id: str):
    return next(r for r in await ledger.snapshot() if r.client_id == client_id)


def test_more_concurrent_calls_than_pooled_connections_never_look_like_an_outage(redis_url: str):
    # 300 requests at once on a pool of 8 connections: calls wait for a connection, none fails.
    async def scenario():
        ledger = make_ledger(redis_url, redis_max_connections=8, redis_timeout_s=5.0)

        async def request(n: int) -> None:
            admission = await ledger.admit(f"c{n % 3}", 1.0, "d2lpm", ONE, "w1")
            await ledger.charge(Charge(f"c{n % 3}", 1.0, admission.worker_id, 2.0, completion_tokens=1))
            await ledger.charge_many([Charge(f"c{n % 3}", 1.0, "w1", 0.0, finished=True)])

        await asyncio.gather(*(request(n) for n in range(300)))
        records = await ledger.snapshot()
        transitions = ledger.degraded_transitions
        await ledger.close()
        return records, transitions

    records, transitions = asyncio.run(scenario())
    assert transitions == 0
    assert sum(r.requests for r in records) == 300 and sum(r.completion_tokens for r in records) == 300
    assert all(r.inflight == 0 for r in records)


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_a_pipelined_batch_of_charges_books_what_the_same_charges_one_by_one_book(store: str, redis_url: str):
    charges = [
        Charge("a", 1.0, "w1", 7.0, completion_tokens=3),
        Charge("b", 2.0, "w1", 4.0, completion_tokens=2),
        Charge("a", 1.0, "w1", -30.0, prompt_tokens=9, cached_tokens=4, finished=True),
    ]

    async def book(batched: bool, prefix: str):
        config = LedgerConfig(store=store, redis_url=redis_url if store == "redis" else "", key_prefix=prefix)
        ledger = Ledger(config, quantum=Q)
        for client in ("a", "b"):
            await ledger.admit(client, 1.0 if client == "a" else 2.0, "fixed", ONE, "w1")
        if batched:
            await ledger.charge_many(charges)
        else:
            for charge in charges:
                await ledger.charge(charge)
        records = await ledger.snapshot()
        await ledger.close()
        return records

    one_by_one = asyncio.run(book(False, "one"))
    batched = asyncio.run(book(True, "many"))
    assert batched == one_by_one
    assert {r.client_id: r.inflight for r in batched} == {"a": 0, "b": 1}


def test_after_a_redis_restart_the_ledger_reconnects_once_and_stays_connected(
    caplog: pytest.LogCaptureFixture,
):
    server = RedisServer().start()
    try:

        async def scenario():
            ledger = make_ledger(server.url, reconnect_interval_s=0.05, redis_timeout_s=0.5)
            # Fill the pool: every one of these connections dies with the restart.
            await asyncio.gather(*(ledger.admit(f"c{n}", 1.0, "fixed", ONE, "w1") for n in range(16)))
            server.stop()
            await ledger.admit("c0", 1.0, "fixed", ONE, "w1")
            server.start()
            deadline = time.monotonic() + 20
            while not ledger.shared and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            back = ledger.shared
            # A burst after the return reuses the pool: no call may meet a dead connection.
            await asyncio.gather(*(ledger.admit(f"c{n}", 1.0, "fixed", ONE, "w1") for n in range(32)))
            await ledger.charge_many([Charge("c0", 1.0, "w1", 1.0, completion_tokens=1)])
            still = ledger.shared
            transitions = ledger.degraded_transitions
            await ledger.close()
            return back, still, transitions

        back, still, transitions = asyncio.run(scenario())
    finally:
        server.stop()
    assert back and still
    assert transitions == 1
    assert caplog.text.count("shared state store unreachable") == 1


_DOOMED_ROUTER = textwrap.dedent(
    """
    import asyncio, sys
    from radixfair_router.config import LedgerConfig
    from radixfair_router.ledger import Ledger
    from radixfair_router.ledger_state import AdmitCandidate

    async def main():
        config = LedgerConfig(store="redis", redis_url=sys.argv[1], router_lease_ttl_s=0.6)
        ledger = Ledger(config, quantum=100.0)
        for _ in range(2):
            await ledger.admit("alice", 1.0, "fixed", [AdmitCandidate("w1", True, 5.0)], "w1")
        await asyncio.sleep(0.3)  # the lease is written
        print("admitted", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_a_router_killed_with_sigkill_leaves_no_client_in_flight(redis_url: str):
    doomed = subprocess.Popen(
        [sys.executable, "-c", _DOOMED_ROUTER, redis_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert doomed.stdout is not None and doomed.stdout.readline().strip() == "admitted"
        plain = redis.Redis.from_url(redis_url)
        before = (
            plain.hget("radixfair:client:alice", "inflight"),
            plain.zscore("radixfair:vtc:active", "alice"),
        )

        async def survivor():
            ledger = make_ledger(redis_url, router_lease_ttl_s=0.6)
            await ledger.admit("bob", 1.0, "fixed", ONE, "w1")  # the survivor's own request stays
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            deadline = time.monotonic() + 20
            while (await record(ledger, "alice")).inflight and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            alice, bob = await record(ledger, "alice"), await record(ledger, "bob")
            active = [m.decode() for m in plain.zrange("radixfair:vtc:active", 0, -1)]
            await ledger.close()
            return alice, bob, active

        alice, bob, active = asyncio.run(survivor())
    finally:
        doomed.kill()
        doomed.wait()
    assert before[0] is not None and float(before[0]) == 2 and before[1] is not None
    assert alice.inflight == 0 and alice.requests == 2
    assert bob.inflight == 1 and active == ["bob"]


def test_a_redis_that_refuses_writes_loses_no_charge_and_gets_it_once_writes_work(redis_url: str):
    """OOM under noeviction is an answer, not a lost connection: the charge is kept and replayed."""

    async def scenario():
        ledger = make_ledger(redis_url, reconnect_interval_s=0.05)
        admin = redis.Redis.from_url(redis_url)
        try:
            await ledger.charge(Charge("oom", 1.0, "w1", 0.0, completion_tokens=2))
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
            await ledger.charge(Charge("oom", 1.0, "w1", 0.0, completion_tokens=5))
            refused_writes_degraded = not ledger.shared
            admin.config_set("maxmemory", 0)
            deadline = time.monotonic() + 20
            while not ledger.shared and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return refused_writes_degraded, ledger.shared, (await record(ledger, "oom")).completion_tokens
        finally:
            admin.config_set("maxmemory", 0)
            admin.close()
            await ledger.close()

    degraded, back, completion = asyncio.run(scenario())
    assert degraded and back
    assert completion == 7
