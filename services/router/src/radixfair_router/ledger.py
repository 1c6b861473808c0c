"""Per-client fairness state shared by router replicas through Redis.

``Ledger`` is what the router talks to. With the "redis" store every change
is one Lua script (ledger_scripts.py), so replicas share one consistent
ledger. When Redis stops answering, the ledger logs that it is degraded and
carries on with a journaled local store, so no request fails for it; a
background task keeps trying Redis and, when it answers again, replays the
journal as increments (reconcile) before switching back. A call that failed
in flight (a timeout: Redis may have run it) is not journaled but repeated
with its sequence number, which the scripts make idempotent (a per-replica
high-water mark, see ledger_scripts), so nothing is booked twice. A call is
never given up half-way: a caller cancelled while its call is in flight
leaves the call to finish (or to be repeated), so no number stays unsettled.
The "memory" store is the local store alone, for a single router, and only
when configured.

Three rules keep a healthy Redis from ever looking down, and a returning one
from flapping: the connection pool is bounded and callers wait for a
connection instead of failing (``redis_max_connections``); a call that meets
a connection broken by a Redis restart is retried once on a fresh one (safe:
every script is idempotent by sequence number); and a degraded ledger goes back to
Redis only after ``reconnect_stable_checks`` pings in a row, dropping every
pooled connection first.

Each router replica holds a lease in Redis, renewed while it runs, and
counts its requests in flight under its own key. When a replica dies (kill
-9) its lease lapses and any live replica takes its share back, so no client
stays in flight or VTC-active for good.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from radixfair_router import ledger_scripts
from radixfair_router.admission_forecast import AdmissionForecast
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
# Every Redis failure, not only a lost connection: a Redis that answers but refuses writes (OOM under
# noeviction, READONLY after a failover) must not drop a charge either. The ledger books locally,
# journals, and replays once Redis takes writes again (scripts are idempotent by sequence number).
_UNREACHABLE = (RedisError, OSError, asyncio.TimeoutError)

T = TypeVar("T")


class RedisLedgerStore:
    """The ledger in Redis; every method is one atomic script call (or a read)."""

    def __init__(
        self, client: aioredis.Redis, key_prefix: str, quantum: float, replica_id: str | None = None
    ) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._quantum = quantum
        # Unique per process: a restarted router is a new replica, and the dead one's share lapses.
        self.replica_id = replica_id or uuid.uuid4().hex[:16]
        self._admit = client.register_script(ledger_scripts.ADMIT)
        self._charge = client.register_script(ledger_scripts.CHARGE)
        self._apply = client.register_script(ledger_scripts.APPLY)
        self._reclaim = client.register_script(ledger_scripts.RECLAIM)
        self._renew = client.register_script(ledger_scripts.RENEW)
        # Sequence numbers of this replica's mutating calls (ledger_scripts, key 5): the last one
        # issued, and those issued and not yet settled (acknowledged by Redis).
        self._last_seq = 0
        self._unsettled: set[int] = set()

    def issue(self) -> int:
        """A new sequence number for one mutating call; unsettled until ``settled``."""
        self._last_seq += 1
        self._unsettled.add(self._last_seq)
        return self._last_seq

    def settled(self, seq: int) -> None:
        """Redis ran the call numbered ``seq`` (or it will never be sent): it is never repeated."""
        self._unsettled.discard(seq)

    def _floor(self) -> int:
        return min(self._unsettled, default=self._last_seq + 1)

    def _keys(self, client_id: str, mutating: bool = False) -> list[str]:
        p = self._prefix
        keys = [f"{p}:client:{client_id}", f"{p}:deficit:{client_id}", f"{p}:vtc:active", f"{p}:clients"]
        if mutating:
            keys += [f"{p}:applied:{self.replica_id}", f"{p}:inflight:{self.replica_id}"]
        return keys

    async def ping(self) -> None:
        await self._redis.ping()

    async def drop_connections(self) -> None:
        """Closes every pooled connection: after a Redis restart they are all broken."""
        await self._redis.connection_pool.disconnect()

    async def renew_lease(self, ttl_s: float) -> None:
        p = self._prefix
        ttl_ms = max(1, round(ttl_s * 1000))
        await self._renew(
            keys=[f"{p}:lease:{self.replica_id}", f"{p}:routers"], args=[self.replica_id, ttl_ms]
        )

    async def reclaim_dead_replicas(self) -> list[str]:
        """Takes back the requests in flight of every replica whose lease lapsed; returns their ids."""
        p = self._prefix
        replicas = sorted(_text(r) for r in await self._redis.smembers(f"{p}:routers"))
        reclaimed = []
        for replica in replicas:
            if replica == self.replica_id:
                continue
            keys = [f"{p}:inflight:{replica}", f"{p}:lease:{replica}", f"{p}:routers", f"{p}:vtc:active"]
            if await self._redis.exists(keys[1]):
                continue
            await self._reclaim(keys=keys, args=[replica, p])
            reclaimed.append(replica)
        return reclaimed

    async def release_lease(self) -> None:
        """A clean shutdown hands its share back at once rather than after the lease's TTL."""
        p = self._prefix
        await self._redis.delete(f"{p}:lease:{self.replica_id}")
        keys = [f"{p}:inflight:{self.replica_id}", f"{p}:lease:{self.replica_id}", f"{p}:routers"]
        await self._reclaim(keys=[*keys, f"{p}:vtc:active"], args=[self.replica_id, p])

    async def admit(
        self,
        client_id: str,
        weight: float,
        mode: str,
        candidates: Sequence[AdmitCandidate],
        fallback: str,
        seq: int,
    ) -> Admission | None:
        """None: a repeat of an admission that ran, whose result Redis no longer keeps."""
        args: list[str | float | int] = [client_id, weight, self._quantum, mode, fallback, len(candidates)]
        for c in candidates:
            args += [c.worker_id, 1 if c.eligible else 0, c.cost]
        reply = await self._admit(keys=self._keys(client_id, True), args=[*args, seq, self._floor()])
        if reply is None:
            return None
        chosen, q_after, refills, vtc, cost, by_fallback = reply
        return Admission(
            _text(chosen), float(q_after), int(refills), float(vtc), float(cost), by_fallback == 1
        )

    async def charge(self, charge: Charge, seq: int) -> float:
        args = [*_charge_args(charge, self._quantum), seq, self._floor()]
        return float(await self._charge(keys=self._keys(charge.client_id, True), args=args))

    async def charge_many(self, charges: Sequence[Charge], seqs: Sequence[int]) -> list[float]:
        """Several charges in one pipelined round trip (each still its own atomic script); each
        charged worker's deficit after its charge, in order.

        One charge is one script call. A pipeline sends the scripts by hash alone: redis-py's script
        objects would first ask Redis whether it has them (SCRIPT EXISTS), a second round trip per
        batch. A Redis that lost its script cache (a restart) answers NOSCRIPT: the script is
        loaded and the batch sent again, which changes nothing twice (idempotent by sequence number).
        """
        if len(charges) == 1:
            return [await self.charge(charges[0], seqs[0])]
        floor = self._floor()
        for attempt in range(2):
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for charge, seq in zip(charges, seqs):
                        keys = self._keys(charge.client_id, True)
                        args = [*_charge_args(charge, self._quantum), seq, floor]
                        pipe.evalsha(self._charge.sha, len(keys), *keys, *args)
                    return [float(deficit) for deficit in await pipe.execute()]
            except NoScriptError:
                if attempt:
                    raise
                await self._redis.script_load(ledger_scripts.CHARGE)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def apply(self, client_id: str, entry: JournalEntry, seq: int) -> None:
        args: list[str | float | int] = [client_id, entry.weight, self._quantum, len(entry.counters)]
        for name, delta in entry.counters.items():
            args += [name, delta]
        args.append(len(entry.deficits))
        for worker_id, delta in entry.deficits.items():
            args += [worker_id, delta]
        await self._apply(keys=self._keys(client_id, True), args=[*args, seq, self._floor()])

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
            pool = BlockingConnectionPool.from_url(
                config.redis_url,
                max_connections=config.redis_max_connections,
                timeout=config.redis_pool_wait_s,
                socket_timeout=config.redis_timeout_s,
                socket_connect_timeout=config.redis_timeout_s,
                retry_on_timeout=False,
                # One retry on a fresh connection: a pooled one may have died with a Redis
                # restart. Safe, since a repeated script with the same sequence number changes nothing.
                retry_on_error=[RedisConnectionError],
            )
            client = aioredis.Redis(connection_pool=pool)
            self._redis = RedisLedgerStore(client, config.key_prefix, quantum)
        self._local = LocalLedgerStore(quantum, journal=self._redis is not None)
        self._forecast = AdmissionForecast(quantum)
        self._degraded = False
        # How many times this ledger left Redis for local state (a metric, and the bench's count).
        self.degraded_transitions = 0
        self._reconnect_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        # Stops the lease task. Not Task.cancel(): redis-py can swallow a cancellation that lands
        # inside a call, and the task would then sleep on and never end.
        self._stop_lease = asyncio.Event()
        # Calls that failed in flight: Redis may or may not have run them, so they are repeated
        # with the same sequence numbers (a no-op if they did run), then settled.
        self._uncertain: list[tuple[Callable[[], Awaitable[object]], tuple[int, ...]]] = []

    @property
    def shared(self) -> bool:
        """True when the state lives in Redis and Redis is reachable now."""
        return self._redis is not None and not self._degraded

    @property
    def outlives_router(self) -> bool:
        """True when the ledger is kept in Redis (degraded or not), so it survives this process:
        what the router relays must be booked first, or a kill loses it."""
        return self._redis is not None

    @property
    def replica_id(self) -> str:
        """This router's id in Redis (its lease and in-flight counts); empty without Redis."""
        return self._redis.replica_id if self._redis is not None else ""

    def start(self) -> None:
        """Starts renewing this replica's lease (and reclaiming dead replicas'); idempotent."""
        if self._redis is not None and self._lease_task is None:
            self._lease_task = asyncio.get_running_loop().create_task(self._keep_lease())

    async def admit(
        self,
        client_id: str,
        weight: float,
        mode: str,
        candidates: Sequence[AdmitCandidate],
        fallback: str,
        ahead: Callable[[str], None] | None = None,
    ) -> Admission:
        """Admits one request (see ledger_scripts.ADMIT for the rule) and returns the chosen worker.

        ``ahead``, when given, is called with the worker the admission will most likely choose
        (admission_forecast.py) just before a Redis round trip starts, so the caller can start on it
        meanwhile; the returned admission is the decision. Not called when the admission is local,
        nor when the forecast is not firm (near a refill or the end of the worker's credit).
        """
        self.start()
        if self.shared:
            assert self._redis is not None
            forecast = (
                None
                if ahead is None
                else self._forecast.choose(client_id, weight, mode, candidates, fallback)
            )
            if forecast is not None:
                ahead(forecast)
            seq = self._redis.issue()
            # Set when Redis did not answer and local state decided (before the call is kept to be
            # repeated, so no repeat runs without it): the repeat must leave Redis booking the worker
            # that served the request (_book_in_doubt).
            decided: list[Admission] = []
            moves: list[int] = []

            async def admit_in_redis() -> Admission | None:
                assert self._redis is not None
                if decided:
                    await self._book_in_doubt(client_id, weight, decided[0], seq, moves)
                    return None
                try:
                    return await self._redis.admit(client_id, weight, mode, candidates, fallback, seq)
                except _UNREACHABLE:
                    decided.append(
                        self._local.admit(client_id, weight, mode, candidates, fallback, journal=False)
                    )
                    raise

            try:
                admission = await self._settle_call(admit_in_redis, (seq,))
            except _UNREACHABLE:
                return decided[0]
            if admission is not None:
                self._forecast.admitted(client_id, weight, mode, candidates, admission)
                return admission
            # Redis ran it under this number but its result is lost (see ledger_scripts): decide
            # from local state, as for a call in doubt.
            return self._local.admit(client_id, weight, mode, candidates, fallback, journal=False)
        return self._local.admit(client_id, weight, mode, candidates, fallback)

    async def _book_in_doubt(
        self, client_id: str, weight: float, local: Admission, seq: int, moves: list[int]
    ) -> None:
        """The repeat of admission ``seq``, which Redis did not answer and local state decided: Redis
        ends up booking the worker that served the request, at the local admission's cost.

        Not run yet, it runs as a "fixed" admission on that worker. Run already, with its result kept
        (a paused or slow Redis runs it once it answers), D2LPM may have chosen another worker on
        Redis' deficits: its booking moves, by two charges numbered once (``moves``), so a repeat of
        this repeat moves nothing twice. A lost result (None) cannot be moved.
        """
        assert self._redis is not None
        served = [AdmitCandidate(local.worker_id, True, local.charged)]
        ran = await self._redis.admit(client_id, weight, "fixed", served, local.worker_id, seq)
        if ran is None or ran.worker_id == local.worker_id:
            return
        if not moves:
            moves += [self._redis.issue(), self._redis.issue()]
        await self._redis.charge(Charge(client_id, weight, ran.worker_id, -ran.charged), moves[0])
        await self._redis.charge(Charge(client_id, weight, local.worker_id, local.charged), moves[1])
        for move in moves:
            self._redis.settled(move)

    async def charge(self, charge: Charge) -> float:
        if self.shared:
            assert self._redis is not None
            seq = self._redis.issue()
            try:
                deficit = await self._settle_call(functools.partial(self._redis.charge, charge, seq), (seq,))
            except _UNREACHABLE:
                return self._local.charge(charge, journal=False)
            self._forecast.note(charge.client_id, charge.worker_id, deficit)
            return deficit
        return self._local.charge(charge)

    async def charge_many(self, charges: Sequence[Charge]) -> None:
        """Books several charges in one round trip (the router's batched output charges)."""
        if not charges:
            return
        if self.shared:
            assert self._redis is not None
            seqs = tuple(self._redis.issue() for _ in charges)
            try:
                deficits = await self._settle_call(
                    functools.partial(self._redis.charge_many, charges, seqs), seqs
                )
            except _UNREACHABLE:
                for charge in charges:
                    self._local.charge(charge, journal=False)
                return
            for charge, deficit in zip(charges, deficits):
                self._forecast.note(charge.client_id, charge.worker_id, deficit)
            return
        for charge in charges:
            self._local.charge(charge)

    async def _settle_call(self, call: Callable[[], Awaitable[T]], seqs: tuple[int, ...]) -> T:
        """Runs one numbered Redis call to its end even if the caller is cancelled meanwhile.

        Success settles its numbers. A failure degrades the ledger and keeps the call to be repeated
        under the same numbers, then raises for the caller's local fallback. A caller cancelled while
        waiting does not cut the call: a number given up half-way would hold back the high-water mark.
        """
        task = asyncio.get_running_loop().create_task(self._numbered(call, seqs))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _numbered(self, call: Callable[[], Awaitable[T]], seqs: tuple[int, ...]) -> T:
        assert self._redis is not None
        try:
            result = await call()
        except _UNREACHABLE as error:
            self._enter_degraded(error)
            self._uncertain.append((call, seqs))
            raise
        except BaseException:
            # Never repeated (a bug, or the loop shutting down): its numbers must not hold the mark back.
            for seq in seqs:
                self._redis.settled(seq)
            raise
        for seq in seqs:
            self._redis.settled(seq)
        return result

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
        self._stop_lease.set()
        if self._lease_task is not None:
            await asyncio.gather(self._lease_task, return_exceptions=True)
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
            try:
                await self._redis.release_lease()
            except _UNREACHABLE as error:
                log.warning("could not release this router's lease (it lapses by itself): %s", error)
            await self._redis.close()

    async def _keep_lease(self) -> None:
        """Renews this replica's lease while it lives, and reclaims the in-flight share of dead ones."""
        assert self._redis is not None
        ttl = self._config.router_lease_ttl_s
        while not self._stop_lease.is_set():
            if self.shared:
                try:
                    await self._redis.renew_lease(ttl)
                    for replica in await self._redis.reclaim_dead_replicas():
                        log.warning("router replica %s stopped renewing its lease; its requests in flight "
                                    "are taken back", replica)  # fmt: skip
                except _UNREACHABLE as error:
                    self._enter_degraded(error)
            try:
                await asyncio.wait_for(self._stop_lease.wait(), ttl / 3)
            except TimeoutError:
                pass

    def _enter_degraded(self, error: BaseException) -> None:
        if self._degraded:
            return
        self._degraded = True
        self.degraded_transitions += 1
        log.warning(
            "shared state store unreachable (%s: %s); routing on local state until it returns",
            type(error).__name__, error,
        )  # fmt: skip
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        assert self._redis is not None
        stable = 0
        while True:
            await asyncio.sleep(self._config.reconnect_interval_s)
            try:
                if stable == 0:
                    await self._redis.drop_connections()  # broken by the outage, every one of them
                await self._redis.ping()
                stable += 1
                # Hysteresis: a Redis that answers once while restarting is not back yet.
                if stable < self._config.reconnect_stable_checks:
                    continue
                await self._repeat_uncertain()
                replayed = await self._replay_journal()
            except _UNREACHABLE:
                stable = 0
                continue
            # No await between the journal running dry and this flip, so no
            # local change can slip in unreplayed.
            self._degraded = False
            self._local.clear()
            log.warning("shared state store is back; reconciled %d client(s) from local state", replayed)
            return

    async def _repeat_uncertain(self) -> None:
        assert self._redis is not None
        while self._uncertain:
            call, seqs = self._uncertain[0]
            await call()
            self._uncertain.pop(0)
            for seq in seqs:
                self._redis.settled(seq)

    async def _replay_journal(self) -> int:
        """Replays local increments; returns how many distinct clients they touched."""
        assert self._redis is not None
        clients: set[str] = set()
        while True:
            journal = list(self._local.take_journal().items())
            if not journal:
                return len(clients)
            for index, (client_id, entry) in enumerate(journal):
                seq = self._redis.issue()
                try:
                    await self._redis.apply(client_id, entry, seq)
                except _UNREACHABLE:
                    # This entry may have run: it is repeated under its number; the rest get theirs.
                    self._uncertain.append(
                        (functools.partial(self._redis.apply, client_id, entry, seq), (seq,))
                    )
                    for cid, rest in journal[index + 1 :]:
                        n = self._redis.issue()
                        self._uncertain.append((functools.partial(self._redis.apply, cid, rest, n), (n,)))
                    raise
                self._redis.settled(seq)
                clients.add(client_id)


def _charge_args(charge: Charge, quantum: float) -> list[str | float | int]:
    return [
        charge.client_id, charge.weight, quantum, charge.worker_id, charge.service,
        charge.prompt_tokens, charge.cached_tokens, charge.completion_tokens, 1 if charge.finished else 0,
        charge.requests,
    ]  # fmt: skip


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Marks a shielded call's failure as seen: its caller may have been cancelled and never read it."""
    if not task.cancelled():
        task.exception()


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
