"""Per-client fairness state shared by router replicas through Redis.

``Ledger`` is what the router talks to. With the "redis" store every change
is one Lua script (ledger_scripts.py), so replicas share one consistent
ledger. When Redis stops answering, the ledger logs that it is degraded and
carries on with a journaled local store, so no request fails for it; a
background task keeps trying Redis and, when it answers again, replays the
journal as increments (reconcile) before switching back. A call that failed
in flight (a timeout: Redis may have run it) is not journaled but repeated
with its op id, which the scripts make idempotent, so nothing is booked twice. The "memory" store
is the local store alone, for a single router, and only when configured.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from radixfair_router import ledger_scripts
from radixfair_router.config import LedgerConfig
from radixfair_router.ledger_state import (
    Admission,
    AdmitCandidate,
    Charge,
    ClientLedger,
    JournalEntry,
    LocalLedgerStore,
    lifted_counter,
)

log = logging.getLogger(__name__)

# Failures that mean "Redis is not there", as opposed to a bug in a script.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class RedisLedgerStore:
    """The ledger in Redis; every method is one atomic script call (or a read)."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, quantum: float) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._quantum = quantum
        self._admit = client.register_script(ledger_scripts.ADMIT)
        self._charge = client.register_script(ledger_scripts.CHARGE)
        self._apply = client.register_script(ledger_scripts.APPLY)

    def _keys(self, client_id: str, op_id: str = "") -> list[str]:
        p = self._prefix
        keys = [f"{p}:client:{client_id}", f"{p}:deficit:{client_id}", f"{p}:vtc:active", f"{p}:clients"]
        return [*keys, f"{p}:op:{op_id}"] if op_id else keys

    async def ping(self) -> None:
        await self._redis.ping()

    async def admit(
        self,
        client_id: str,
        weight: float,
        mode: str,
        candidates: Sequence[AdmitCandidate],
        fallback: str,
        op_id: str,
    ) -> Admission:
        args: list[str | float | int] = [client_id, weight, self._quantum, mode, fallback, len(candidates)]
        for c in candidates:
            args += [c.worker_id, 1 if c.eligible else 0, c.cost]
        chosen, q_after, refills, vtc, cost, by_fallback = await self._admit(
            keys=self._keys(client_id, op_id), args=args
        )
        return Admission(
            _text(chosen), float(q_after), int(refills), float(vtc), float(cost), by_fallback == 1
        )

    async def charge(self, charge: Charge, op_id: str) -> float:
        args = [
            charge.client_id, charge.weight, self._quantum, charge.worker_id, charge.service,
            charge.prompt_tokens, charge.cached_tokens, charge.completion_tokens, 1 if charge.finished else 0,
            charge.requests,
        ]  # fmt: skip
        return float(await self._charge(keys=self._keys(charge.client_id, op_id), args=args))

    async def apply(self, client_id: str, entry: JournalEntry, op_id: str) -> None:
        args: list[str | float | int] = [client_id, entry.weight, self._quantum, len(entry.counters)]
        for name, delta in entry.counters.items():
            args += [name, delta]
        args.append(len(entry.deficits))
        for worker_id, delta in entry.deficits.items():
            args += [worker_id, delta]
        await self._apply(keys=self._keys(client_id, op_id), args=args)

    async def snapshot(self) -> list[ClientLedger]:
        client_ids = sorted(_text(c) for c in await self._redis.smembers(f"{self._prefix}:clients"))
        async with self._redis.pipeline(transaction=False) as pipe:
            for client_id in client_ids:
                keys = self._keys(client_id)
                pipe.hgetall(keys[0])
                pipe.hgetall(keys[1])
            raw = await pipe.execute()
        return [_record(client_id, raw[2 * i], raw[2 * i + 1]) for i, client_id in enumerate(client_ids)]

    async def vtc_priorities(self, client_ids: Sequence[str], lift: bool = True) -> dict[str, float]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(f"{self._prefix}:vtc:active", 0, 0, withscores=True)
            for client_id in client_ids:
                pipe.hmget(self._keys(client_id)[0], "vtc", "inflight")
            lowest, *rows = await pipe.execute()
        floor = float(lowest[0][1]) if lowest and lift else None
        return {
            client_id: lifted_counter(float(vtc or 0), float(inflight or 0), floor)
            for client_id, (vtc, inflight) in zip(client_ids, rows)
        }

    async def close(self) -> None:
        await self._redis.aclose()


class Ledger:
    """The router's ledger: Redis when reachable, journaled local state when not."""

    def __init__(self, config: LedgerConfig, quantum: float) -> None:
        self._config = config
        self._redis: RedisLedgerStore | None = None
        if config.store == "redis":
            client = aioredis.Redis.from_url(
                config.redis_url,
                socket_timeout=config.redis_timeout_s,
                socket_connect_timeout=config.redis_timeout_s,
                retry_on_timeout=False,
            )
            self._redis = RedisLedgerStore(client, config.key_prefix, quantum)
        self._local = LocalLedgerStore(quantum, journal=self._redis is not None)
        self._degraded = False
        self._reconnect_task: asyncio.Task[None] | None = None
        # Calls that failed in flight: Redis may or may not have run them, so
        # they are repeated with the same op id (a no-op if they did run).
        self._uncertain: list[Callable[[], Awaitable[object]]] = []

    @property
    def shared(self) -> bool:
        """True when the state lives in Redis and Redis is reachable now."""
        return self._redis is not None and not self._degraded

    async def admit(
        self, client_id: str, weight: float, mode: str, candidates: Sequence[AdmitCandidate], fallback: str
    ) -> Admission:
        if self.shared:
            assert self._redis is not None
            op_id = uuid.uuid4().hex
            try:
                return await self._redis.admit(client_id, weight, mode, candidates, fallback, op_id)
            except _UNREACHABLE as error:
                self._enter_degraded(error)
                self._uncertain.append(
                    functools.partial(self._redis.admit, client_id, weight, mode, candidates, fallback, op_id)
                )
                return self._local.admit(client_id, weight, mode, candidates, fallback, journal=False)
        return self._local.admit(client_id, weight, mode, candidates, fallback)

    async def charge(self, charge: Charge) -> float:
        if self.shared:
            assert self._redis is not None
            op_id = uuid.uuid4().hex
            try:
                return await self._redis.charge(charge, op_id)
            except _UNREACHABLE as error:
                self._enter_degraded(error)
                self._uncertain.append(functools.partial(self._redis.charge, charge, op_id))
                return self._local.charge(charge, journal=False)
        return self._local.charge(charge)

    async def snapshot(self) -> list[ClientLedger]:
        """Every client's record: Redis' when shared, this router's local view when degraded."""
        if self.shared:
            assert self._redis is not None
            try:
                return await self._redis.snapshot()
            except _UNREACHABLE as error:
                self._enter_degraded(error)
        return self._local.snapshot()

    async def vtc_priorities(self, client_ids: Sequence[str], lift: bool = True) -> dict[str, float]:
        """Each client's VTC counter, lower goes first; ``lift`` raises idle clients to the lowest active."""
        if self.shared:
            assert self._redis is not None
            try:
                return await self._redis.vtc_priorities(client_ids, lift)
            except _UNREACHABLE as error:
                self._enter_degraded(error)
        return self._local.vtc_priorities(client_ids, lift)

    async def close(self) -> None:
        """Stops reconnecting; a degraded ledger first tries once to hand its state to Redis."""
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            await asyncio.gather(self._reconnect_task, return_exceptions=True)
        if self._redis is not None:
            if self._degraded:
                try:
                    await self._repeat_uncertain()
                    await self._replay_journal()
                except _UNREACHABLE as error:
                    log.error("shutting down degraded; local ledger changes not saved to Redis: %s", error)
            await self._redis.close()

    def _enter_degraded(self, error: BaseException) -> None:
        if self._degraded:
            return
        self._degraded = True
        log.warning(
            "shared state store unreachable (%s: %s); routing on local state until it returns",
            type(error).__name__, error,
        )  # fmt: skip
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        assert self._redis is not None
        while True:
            await asyncio.sleep(self._config.reconnect_interval_s)
            try:
                await self._redis.ping()
                await self._repeat_uncertain()
                replayed = await self._replay_journal()
            except _UNREACHABLE:
                continue
            # No await between the journal running dry and this flip, so no
            # local change can slip in unreplayed.
            self._degraded = False
            self._local.clear()
            log.warning("shared state store is back; reconciled %d client(s) from local state", replayed)
            return

    async def _repeat_uncertain(self) -> None:
        while self._uncertain:
            await self._uncertain[0]()
            self._uncertain.pop(0)

    async def _replay_journal(self) -> int:
        """Replays local increments; returns how many distinct clients they touched."""
        assert self._redis is not None
        clients: set[str] = set()
        while True:
            journal = list(self._local.take_journal().items())
            if not journal:
                return len(clients)
            for index, (client_id, entry) in enumerate(journal):
                try:
                    await self._redis.apply(client_id, entry, entry.op_id)
                except _UNREACHABLE:
                    # This entry may have run: it and the rest are repeated under their own op ids.
                    for cid, rest in journal[index:]:
                        self._uncertain.append(functools.partial(self._redis.apply, cid, rest, rest.op_id))
                    raise
                clients.add(client_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(client_id: str, fields: dict[bytes, bytes], deficits: dict[bytes, bytes]) -> ClientLedger:
    get = {_text(k): float(v) for k, v in fields.items()}
    return ClientLedger(
        client_id=client_id,
        weight=get.get("weight", 1.0),
        service=get.get("service", 0.0),
        vtc=get.get("vtc", 0.0),
        requests=round(get.get("requests", 0.0)),
        prompt_tokens=round(get.get("prompt_tokens", 0.0)),
        cached_tokens=round(get.get("cached_tokens", 0.0)),
        completion_tokens=round(get.get("completion_tokens", 0.0)),
        inflight=round(get.get("inflight", 0.0)),
        deficits={_text(k): float(v) for k, v in deficits.items()},
    )
