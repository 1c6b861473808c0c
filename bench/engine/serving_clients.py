"""The serving bench's load: request specs, what a client saw of each request, and the gRPC clients.

Each of N concurrent clients (grpc.aio, one channel and one stream at a time per client) streams its
requests back to back: its listed requests, or, in a timed cell (``ClosedLoop``), new ones until the
cell's duration is up. Above 16 streams the clients are spread over several processes so the load
generator is not the bottleneck. ``DegradedWatch`` polls the router's GetStatus while a cell runs.
Used by bench/engine/serving_bench.py (orchestration), bench/engine/serving_http_client.py and the profilers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from radixfair.auth import bearer_metadata  # noqa: E402
from radixfair.client import build_prompt, build_sampling  # noqa: E402
from radixfair.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402

PATHS = ("in_process", "worker", "router", "http")
WORKLOADS = ("unique", "shared_prefix")
STATUS_POLL_S = 0.25


@dataclass(frozen=True)
class RequestSpec:
    request_id: str
    client: int
    prompt: list[int]
    max_tokens: int


@dataclass
class RequestRecord:
    """What one client saw of one request (times in time.monotonic seconds)."""

    request_id: str
    start: float
    end: float = 0.0
    first: float | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ok: bool = False
    error: str = ""
    last: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    message_gaps: list[float] = field(default_factory=list)
    client: int = -1
    # (time, tokens) of each message: what a timed cell counts inside its steady window.
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    # The serving side's own figures (ms): from the request's arrival in the worker to its admission
    # into a batch, and to its first token on the engine's host (GenerationResult.timings); what the
    # client's TTFT adds beyond them is the path back to the client.
    worker_queue_ms: float | None = None
    worker_ttft_ms: float | None = None
    # From its arrival in the worker to its end there: what the client's whole wait adds beyond it
    # is the path between the client and the worker (both ways).
    worker_total_ms: float | None = None

    def on_tokens(self, count: int, now: float) -> None:
        """A message (or engine step output) carrying ``count`` new tokens arrived at ``now``."""
        if not count:
            return
        self.arrivals.append((now, count))
        if self.last is None:
            self.first = now
        else:
            self.message_gaps.append(now - self.last)
            self.token_gaps.extend([(now - self.last) / count] * count)
        self.tokens += count
        self.last = now


# ---- workloads --------------------------------------------------------------------------------


def cell_requests(args: argparse.Namespace, workload: str, concurrency: int, seed: int) -> list[RequestSpec]:
    """``rounds`` requests per client, each prompt unique past the (per-cell) shared prefix."""
    rounds = max(1, -(-args.min_requests // concurrency))
    rng = np.random.default_rng(seed)
    prefix = rng.integers(1000, 40000, args.prefix_len).tolist() if workload == "shared_prefix" else []
    unique_len = args.suffix_len if workload == "shared_prefix" else args.prompt_len
    return [
        RequestSpec(
            f"s{seed}-c{client}-r{r}",
            client,
            prefix + rng.integers(1000, 40000, unique_len).tolist(),
            args.new_tokens,
        )
        for r in range(rounds)
        for client in range(concurrency)
    ]


@dataclass(frozen=True)
class ClosedLoop:
    """A timed cell: each client streams requests back to back until ``duration_s`` has passed.

    Past its listed requests a client's next one is ``spec(client, round)``: the same workload (the
    cell's shared prefix, fresh unique tokens drawn from the cell's seed, the client and the round),
    so it is made wherever the client runs, with nothing shipped ahead.
    """

    duration_s: float
    seed: int
    prefix: tuple[int, ...]
    unique_len: int
    max_tokens: int

    def spec(self, client: int, round_: int) -> RequestSpec:
        rng = np.random.default_rng((self.seed, client, round_))
        unique = rng.integers(1000, 40000, self.unique_len).tolist()
        return RequestSpec(
            f"s{self.seed}-c{client}-r{round_}", client, [*self.prefix, *unique], self.max_tokens
        )


def timed_cell(args: argparse.Namespace, workload: str, concurrency: int, seed: int) -> ClosedLoop:
    """A cell of ``args.cell_duration_s`` seconds; each client's first request is ``spec(client, 0)``."""
    rng = np.random.default_rng(seed)
    prefix = rng.integers(1000, 40000, args.prefix_len).tolist() if workload == "shared_prefix" else []
    unique_len = args.suffix_len if workload == "shared_prefix" else args.prompt_len
    return ClosedLoop(args.cell_duration_s, seed, tuple(prefix), unique_len, args.new_tokens)


async def client_loop(
    client: int,
    specs: Sequence[RequestSpec],
    plan: ClosedLoop | None,
    until: float | None,
    send: Callable[[RequestSpec], Awaitable[RequestRecord]],
) -> list[RequestRecord]:
    """One client's requests, back to back: ``specs``, or (timed) new ones until ``until``."""
    records: list[RequestRecord] = []
    for round_ in itertools.count():
        if plan is not None and until is not None:
            if time.monotonic() >= until:
                break
            spec = specs[round_] if round_ < len(specs) else plan.spec(client, round_)
        elif round_ < len(specs):
            spec = specs[round_]
        else:
            break
        record = await send(spec)
        record.client = client
        records.append(record)
    return records


def cell_seed(path: str, workload: str, concurrency: int, warmup: bool = False) -> int:
    return (
        1_000_000 * (1 + PATHS.index(path))
        + 1000 * (1 + WORKLOADS.index(workload))
        + concurrency
        + (100_000 if warmup else 0)  # above any concurrency
    )


def by_client(specs: Sequence[RequestSpec]) -> dict[int, list[RequestSpec]]:
    out: dict[int, list[RequestSpec]] = {}
    for spec in specs:
        out.setdefault(spec.client, []).append(spec)
    return out


# ---- clients over gRPC ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    path: str  # "worker" or "router"
    address: str
    keys: tuple[str, ...]  # API key of tenant i (router path)
    timeout_s: float
    # Router replicas sharing one Redis ledger (--routers): client i talks to replica i mod n.
    replicas: tuple[str, ...] = ()

    def address_for(self, client: int) -> str:
        return self.replicas[client % len(self.replicas)] if self.replicas else self.address


async def stream_one(target: Target, stub: object, spec: RequestSpec) -> RequestRecord:
    tenant = spec.client % len(target.keys)
    prompt = build_prompt(spec.prompt)
    sampling = build_sampling(max_tokens=spec.max_tokens, ignore_eos=True)
    record = RequestRecord(spec.request_id, time.monotonic())
    if target.path == "worker":
        request = worker_pb2.GenerateRequest(
            request_id=spec.request_id, client_id=f"tenant-{tenant}", prompt=prompt, sampling=sampling
        )
        call = stub.Generate(request, timeout=target.timeout_s)  # type: ignore[attr-defined]
    else:
        request = router_pb2.RouterServiceGenerateRequest(
            request_id=spec.request_id, prompt=prompt, sampling=sampling
        )
        metadata = bearer_metadata(target.keys[tenant])
        call = stub.Generate(request, metadata=metadata, timeout=target.timeout_s)  # type: ignore[attr-defined]
    try:
        async for message in call:
            now = time.monotonic()
            if message.HasField("delta"):
                record.on_tokens(len(message.delta.token_ids), now)
            elif message.HasField("result"):
                usage = message.result.usage
                record.prompt_tokens, record.cached_tokens = usage.prompt_tokens, usage.cached_tokens
                timings = message.result.timings
                record.worker_queue_ms = timings.queue_ms
                record.worker_ttft_ms = timings.time_to_first_token_ms
                record.worker_total_ms = timings.total_ms
                record.ok = usage.completion_tokens == spec.max_tokens == record.tokens
                if not record.ok:
                    record.error = f"completion_tokens {usage.completion_tokens}, streamed {record.tokens}"
    except grpc.aio.AioRpcError as error:
        record.error = f"{error.code().name}: {error.details()}"
    record.end = time.monotonic()
    return record


async def run_clients(
    target: Target, specs: Sequence[RequestSpec], ready: object = None, plan: ClosedLoop | None = None
) -> list[RequestRecord]:
    """One channel (own connection) and one stream at a time per client; all clients at once."""
    stub_type = (
        worker_pb2_grpc.WorkerServiceStub if target.path == "worker" else router_pb2_grpc.RouterServiceStub
    )
    clients = by_client(specs)
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = {c: grpc.aio.insecure_channel(target.address_for(c), options=options) for c in clients}
    try:
        # Bounded: a wrong address would otherwise wait for a connection forever.
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels.values())), 60)
        if ready is not None:  # a multiprocessing barrier: start with the other client processes
            await asyncio.to_thread(ready.wait, 300)  # type: ignore[attr-defined]

        until = time.monotonic() + plan.duration_s if plan is not None else None

        async def client(index: int) -> list[RequestRecord]:
            stub = stub_type(channels[index])
            return await client_loop(
                index, clients[index], plan, until, lambda spec: stream_one(target, stub, spec)
            )

        results = await asyncio.gather(*(client(c) for c in clients))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()))
    return [r for records in results for r in records]


ClientRunner = Callable[
    [Target, Sequence[RequestSpec], object, ClosedLoop | None], Awaitable[list[RequestRecord]]
]


def _client_process(
    run: ClientRunner,
    target: Target,
    specs: list[RequestSpec],
    ready: object,
    results: object,
    plan: ClosedLoop | None,
) -> None:
    try:
        records = asyncio.run(run(target, specs, ready, plan))
        results.put(("ok", [asdict(r) for r in records]))  # type: ignore[attr-defined]
    except BaseException as error:  # the parent must hear of it, or it would wait for this share
        ready.abort()  # type: ignore[attr-defined]
        results.put(("error", f"{type(error).__name__}: {error}"))  # type: ignore[attr-defined]
        raise


async def run_cell(
    target: Target,
    specs: list[RequestSpec],
    procs: int,
    run: ClientRunner,
    plan: ClosedLoop | None = None,
) -> list[RequestRecord]:
    """Spreads the clients over ``procs`` processes so the load generator is not the bottleneck.

    ``run`` (a module-level function, so a spawned process can unpickle it) drives one share of the
    clients over one transport; the shares start together behind a barrier. ``plan``: a timed cell.
    """
    clients = sorted(by_client(specs))
    procs = max(1, min(procs, len(clients)))
    if procs == 1:
        return await run(target, specs, None, plan)
    ctx = mp.get_context("spawn")  # the parent holds gRPC (and maybe CUDA) state: never fork it
    ready, results = ctx.Barrier(procs), ctx.Queue()
    shares = [{c for c in clients if c % procs == p} for p in range(procs)]
    children = [
        ctx.Process(
            target=_client_process,
            args=(run, target, [s for s in specs if s.client in share], ready, results, plan),
        )
        for share in shares
    ]
    for child in children:
        child.start()
    rounds = max(len(s) for s in by_client(specs).values())
    # A timed cell's last requests start before its end and take at most a request's timeout.
    wait_s = (plan.duration_s + target.timeout_s if plan else target.timeout_s * rounds) + 120
    try:
        collected = [await asyncio.to_thread(results.get, True, wait_s) for _ in children]
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    failures = [payload for kind, payload in collected if kind == "error"]
    if failures:
        raise RuntimeError(f"a client process failed: {failures[0]}")
    return [RequestRecord(**r) for _, batch in collected for r in batch]


async def run_cell_grpc(
    target: Target, specs: list[RequestSpec], procs: int, plan: ClosedLoop | None = None
) -> list[RequestRecord]:
    """The gRPC clients of a cell, spread over ``procs`` processes (``run_cell``)."""
    return await run_cell(target, specs, procs, run_clients, plan)


class DegradedWatch:
    """Counts the router's flips into degraded mode by polling GetStatus while a cell runs."""

    def __init__(self, address: str, key: str) -> None:
        self._address, self._key = address, key
        self.transitions = 0
        self.polls = 0
        self.poll_errors = 0
        self.connected_at_end: bool | None = None

    async def run(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self._address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            previous = True
            while True:
                try:
                    status = await stub.GetStatus(
                        router_pb2.GetStatusRequest(), metadata=bearer_metadata(self._key), timeout=5
                    )
                    self.polls += 1
                    if previous and not status.shared_state_connected:
                        self.transitions += 1
                    previous = self.connected_at_end = status.shared_state_connected
                except grpc.aio.AioRpcError:
                    self.poll_errors += 1
                if stop.is_set():
                    return
                try:
                    await asyncio.wait_for(stop.wait(), STATUS_POLL_S)
                except TimeoutError:
                    pass
