"""What the soak reads back: the routers' view over time, the ledger, the workers' idle pages.

- ``StatusMonitor`` polls every router's GetStatus with the operator key; the time a fault
  took to show there (a worker leaving rotation, the shared state store disconnecting) is the
  router's detection time.
- ``ledger_tokens`` reads each client's ``completion_tokens`` straight from Redis, the field the
  routers' charges add the relayed output tokens to.
- ``leaked_pages`` asks each worker for its load report at idle: every page is free or held by
  the prefix cache, whose report lists one hash per cached page.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
import redis

from radixfair.auth import bearer_metadata
from radixfair.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    router: int
    answered: bool
    connected: bool = False
    healthy: frozenset[str] = frozenset()


@dataclass
class StatusMonitor:
    routers: list[str]
    operator_key: str
    interval_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        channels = [grpc.aio.insecure_channel(a) for a in self.routers]
        stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]
        try:
            while not stop.is_set():
                await asyncio.gather(*(self._poll(i, stub) for i, stub in enumerate(stubs)))
                await asyncio.sleep(self.interval_s)
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    async def _poll(self, index: int, stub: router_pb2_grpc.RouterServiceStub) -> None:
        try:
            reply = await stub.GetStatus(
                router_pb2.GetStatusRequest(), metadata=bearer_metadata(self.operator_key), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            self.samples.append(Sample(time.time(), index, False))
            return
        healthy = frozenset(w.worker_id for w in reply.workers if w.healthy)
        self.samples.append(Sample(time.time(), index, True, reply.shared_state_connected, healthy))

    def first_after(
        self, since: float, router: int, predicate: object, until: float | None = None
    ) -> float | None:
        """Seconds from ``since`` to the first answered sample of ``router`` matching ``predicate``
        (taken before ``until``, when given); None if there is none."""
        for sample in self.samples:
            if until is not None and sample.at > until:
                return None
            if sample.at >= since and sample.router == router and sample.answered and predicate(sample):  # type: ignore[operator]
                return round(sample.at - since, 2)
        return None


def ledger_tokens(redis_url: str, client_ids: list[str], prefix: str = "radixfair") -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    try:
        out = {}
        for cid in client_ids:
            value = client.hget(f"{prefix}:client:{cid}", "completion_tokens")
            out[cid] = round(float(value)) if value is not None else 0
        return out
    finally:
        client.close()


async def leaked_pages(address: str, settle_s: float = 15.0) -> dict[str, int]:
    """total - free - cached pages at idle; polled until 0 or ``settle_s`` (the digest lags 0.25 s)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        deadline = time.monotonic() + settle_s
        while True:
            report = (await stub.GetLoadReport(worker_pb2.GetLoadReportRequest(), timeout=5)).report
            cached = len(report.cached_prefix_hashes)
            leaked = report.total_pages - report.free_pages - cached
            idle = report.running_requests == 0 and report.queue_length == 0
            if (idle and leaked == 0) or time.monotonic() > deadline:
                return {
                    "total_pages": report.total_pages,
                    "free_pages": report.free_pages,
                    "cached_pages": cached,
                    "running": report.running_requests,
                    "waiting": report.queue_length,
                    "leaked_pages": leaked,
                }
            await asyncio.sleep(0.5)


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def first_log_line_after(log_path: Path, since: float, needle: str) -> float | None:
    """Seconds from ``since`` (time.time()) to the first log line containing ``needle`` after it.

    The services log with logging's default asctime (local time, milliseconds).
    """
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        match = _STAMP.match(line)
        if match is None or needle not in line:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= since - 0.001:
            return round(at - since, 2)
    return None


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def error_summary(log_path: Path) -> dict[str, int]:
    """How often each ERROR/CRITICAL message, and each exception a traceback ended with, was logged."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    counts: dict[str, int] = {}
    for line in lines:
        record = _STAMP.match(line)
        text = line[record.end() :] if record else line
        if record and (" ERROR " in line or " CRITICAL " in line):
            key = text
        elif not record and _EXCEPTION.match(line):
            key = f"exception {line}"
        else:
            continue
        key = re.sub(r"0x[0-9a-f]+", "0x..", key)[:240]
        counts[key] = counts.get(key, 0) + 1
    return counts
