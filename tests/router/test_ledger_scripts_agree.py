"""The ledger is written twice, as Lua scripts (ledger_scripts) and as the in-process store (ledger_state).

One suite holds them equal: random sequences of admissions and charges, shaped as the router makes
them (a request is finished or refunded once, after its admission), run against the Lua scripts on a
real redis-server and against ``LocalLedgerStore``, with every result and the final state compared.
Amounts are multiples of 1/4 and weights powers of two, so every sum is exact in binary floating point
and in the scripts' 14-digit ``tostring``: the two must agree exactly, not approximately.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixfair_router.ledger import RedisLedgerStore
from radixfair_router.ledger_state import AdmitCandidate, Charge, ClientLedger, LocalLedgerStore

QUANTUM = 64.0
CLIENTS = ("a", "b", "c")
WORKERS = ("w0", "w1", "w2", "w3")
_prefixes = itertools.count()

amounts = st.integers(-600, 600).map(lambda n: n / 4)
costs = st.integers(0, 600).map(lambda n: n / 4)


@dataclass(frozen=True)
class Admit:
    client: str
    mode: str
    candidates: tuple[AdmitCandidate, ...]
    fallback: str


@dataclass(frozen=True)
class Output:
    """Output tokens of an open request (not its end)."""

    pick: int
    tokens: int


@dataclass(frozen=True)
class Settle:
    """The end of an open request: a service correction (any sign) and its token counts."""

    pick: int
    service: float
    prompt: int
    cached: int
    completion: int


@dataclass(frozen=True)
class Refund:
    """A request nobody served: its admission is taken back."""

    pick: int


@st.composite
def admits(draw: st.DrawFn) -> Admit:
    workers = draw(st.lists(st.sampled_from(WORKERS), min_size=1, max_size=len(WORKERS), unique=True))
    candidates = tuple(AdmitCandidate(w, draw(st.booleans()), draw(costs)) for w in workers)
    mode = draw(st.sampled_from(("d2lpm", "fixed")))
    # The fallback is a candidate (d2lpm: the least loaded one). The other policies place the request
    # themselves, then book it on that one worker.
    fallback = draw(st.sampled_from(workers))
    if mode == "fixed":
        candidates, fallback = candidates[:1], workers[0]
    return Admit(draw(st.sampled_from(CLIENTS)), mode, candidates, fallback)


operations = st.lists(
    st.one_of(
        admits(),
        st.builds(Output, st.integers(0, 50), st.integers(1, 40)),
        st.builds(
            Settle, st.integers(0, 50), amounts, st.integers(0, 64), st.integers(0, 64), st.integers(0, 9)
        ),
        st.builds(Refund, st.integers(0, 50)),
    ),
    min_size=1,
    max_size=40,
)
weights = st.fixed_dictionaries({c: st.sampled_from((0.5, 1.0, 2.0, 4.0)) for c in CLIENTS})


class BothStores:
    """Applies each call to the Lua store and the in-process store, and checks they answer the same."""

    def __init__(self, redis_url: str) -> None:
        self.redis = RedisLedgerStore(
            aioredis.Redis.from_url(redis_url), f"agree{next(_prefixes)}", quantum=QUANTUM
        )
        self.local = LocalLedgerStore(QUANTUM)

    async def admit(self, client: str, weight: float, op: Admit):
        seq = self.redis.issue()
        lua = await self.redis.admit(client, weight, op.mode, op.candidates, op.fallback, seq)
        self.redis.settled(seq)
        python = self.local.admit(client, weight, op.mode, op.candidates, op.fallback)
        assert lua == python, (op, lua, python)
        return lua

    async def charge(self, charge: Charge) -> None:
        seq = self.redis.issue()
        lua = await self.redis.charge(charge, seq)
        self.redis.settled(seq)
        python = self.local.charge(charge)
        assert lua == python, (charge, lua, python)

    async def check_state(self) -> None:
        lua, python = await self.redis.snapshot(), self.local.snapshot()
        assert lua == python
        for lift in (True, False):
            assert await self.redis.vtc_priorities(CLIENTS, lift) == self.local.vtc_priorities(CLIENTS, lift)


async def run(stores: BothStores | LocalOnly, weight: dict[str, float], ops: list) -> None:
    # Open requests, as the router holds them: (client, admission).
    open_requests: list = []
    for op in ops:
        if isinstance(op, Admit):
            open_requests.append((op.client, await stores.admit(op.client, weight[op.client], op)))
            continue
        if not open_requests:
            continue
        client, admission = open_requests[op.pick % len(open_requests)]
        w, worker = weight[client], admission.worker_id
        if isinstance(op, Output):
            await stores.charge(Charge(client, w, worker, 2.0 * op.tokens, completion_tokens=op.tokens))
            continue
        open_requests.remove((client, admission))
        if isinstance(op, Refund):
            charge = Charge(client, w, worker, -admission.charged, finished=True, requests=-1)
        else:
            cached = min(op.cached, op.prompt)
            charge = Charge(client, w, worker, op.service, op.prompt, cached, op.completion, finished=True)
        await stores.charge(charge)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(weight=weights, ops=operations)
def test_the_lua_scripts_and_the_in_process_store_answer_and_end_the_same(
    redis_url: str, weight: dict[str, float], ops: list
):
    async def scenario():
        stores = BothStores(redis_url)
        try:
            await run(stores, weight, ops)
            await stores.check_state()
        finally:
            await stores.redis.close()

    asyncio.run(scenario())


def with_implicit_credit(record: ClientLedger) -> ClientLedger:
    """A pair the journal never changed starts at one quantum of credit in Redis: list it as such."""
    credit = QUANTUM * record.weight
    deficits = {w: q for w, q in record.deficits.items() if q != credit}
    return replace(record, deficits=deficits)


class LocalOnly:
    """The in-process store alone, journaling: a degraded router's ledger."""

    def __init__(self) -> None:
        self.local = LocalLedgerStore(QUANTUM, journal=True)

    async def admit(self, client: str, weight: float, op: Admit):
        return self.local.admit(client, weight, op.mode, op.candidates, op.fallback)

    async def charge(self, charge: Charge) -> None:
        self.local.charge(charge)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(weight=weights, ops=operations)
def test_a_degraded_routers_journal_replayed_by_the_apply_script_rebuilds_its_local_state(
    redis_url: str, weight: dict[str, float], ops: list
):
    """What a degraded router did locally reaches an empty Redis through APPLY exactly as it was."""

    async def scenario():
        degraded = LocalOnly()
        await run(degraded, weight, ops)
        store = RedisLedgerStore(aioredis.Redis.from_url(redis_url), f"agree{next(_prefixes)}", QUANTUM)
        try:
            for client_id, entry in degraded.local.take_journal().items():
                seq = store.issue()
                await store.apply(client_id, entry, seq)
                store.settled(seq)
            return await store.snapshot(), degraded.local.snapshot()
        finally:
            await store.close()

    replayed, local = asyncio.run(scenario())
    assert [with_implicit_credit(r) for r in replayed] == [with_implicit_credit(r) for r in local]
