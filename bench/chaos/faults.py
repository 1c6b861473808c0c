"""The fault schedule and how each fault's detection by the router is measured.

One cycle, 100 s at full scale (shorter runs compress it): kill -9 a worker and restart it; freeze
another (SIGSTOP) and thaw it (SIGCONT); restart Redis (same port, append-only file: the ledger
survives); kill -9 a router and restart it. Cycles repeat while the run lasts. Router 0 is never
faulted, so it is the observer: a fault's detection time is from the fault until router 0's
GetStatus shows it (worker unhealthy, shared state disconnected) or, for a dead router, until
router 0 logs that the dead replica's lease lapsed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.chaos.observe import StatusMonitor, first_log_line_after
from bench.chaos.stack import ChaosStack

CYCLE_S = 100.0
FAULTS = ("kill_worker", "freeze_worker", "restart_redis", "kill_router")
# (offset in a cycle, fault, target index, seconds until the target is brought back)
CYCLE: tuple[tuple[float, str, int, float], ...] = (
    (5.0, "kill_worker", 0, 10.0),
    (25.0, "freeze_worker", 1, 12.0),
    (45.0, "restart_redis", 0, 0.0),
    (60.0, "kill_router", 1, 8.0),
)


@dataclass
class FaultRecord:
    fault: str
    target: str
    at_s: float  # seconds into the run
    started: float  # time.time() of the fault
    ended: float | None = None  # time.time() the target was back (restart done, thawed)
    detected_s: float | None = None
    recovered_s: float | None = None
    detected_by: str = ""


def schedule(duration_s: float, faults: Sequence[str] = FAULTS) -> list[tuple[float, str, int, float]]:
    """Fault episodes over the run: whole cycles, compressed to fit a run shorter than one."""
    scale = min(1.0, max(duration_s - 8.0, 1.0) / CYCLE_S)
    cycles = max(1, int(duration_s // CYCLE_S))
    return [
        (c * CYCLE_S * scale + off * scale, fault, i, hold * scale)
        for c in range(cycles)
        for off, fault, i, hold in CYCLE
        if fault in faults
    ]


async def run_faults(
    stack: ChaosStack, plan: list[tuple[float, str, int, float]], t0: float, records: list[FaultRecord]
) -> None:
    """Each episode on its own clock, so a slow restart (a worker loads torch) delays no other fault."""
    await asyncio.gather(*(_episode(stack, t0, *step, records) for step in plan))


async def _episode(
    stack: ChaosStack,
    t0: float,
    offset: float,
    fault: str,
    index: int,
    hold: float,
    records: list[FaultRecord],
) -> None:
    await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
    at = round(time.monotonic() - t0, 1)
    if fault == "restart_redis":
        record = _record(records, "restart Redis", "redis", at)
        await asyncio.to_thread(stack.redis.restart)
        record.ended = time.time()
        return
    child = stack.workers[index] if fault.endswith("worker") else stack.routers[index]
    if fault == "freeze_worker":
        child.signal(signal.SIGSTOP)
        record = _record(records, "SIGSTOP worker", child.name, at)
        await asyncio.sleep(hold)
        child.signal(signal.SIGCONT)
        record.ended = time.time()
        return
    await asyncio.to_thread(child.kill)
    record = _record(records, f"kill -9 {child.name.split('-')[0]}", child.name, at)
    await asyncio.sleep(hold)
    child.start()
    await asyncio.to_thread(child.wait_serving)
    record.ended = time.time()


def _record(records: list[FaultRecord], fault: str, target: str, at: float) -> FaultRecord:
    record = FaultRecord(fault, target, at, time.time())
    records.append(record)
    return record


# A state router 0 shows this long after the target was back belongs to a later fault, not this one
# (a Redis restart quicker than a status poll is never seen as a disconnection).
DETECTION_HORIZON_S = 10.0


def measure_detection(records: list[FaultRecord], monitor: StatusMonitor, router0_log: Path) -> None:
    """Fills each record's detection and recovery times as router 0 saw them (None: not seen)."""
    for r in records:
        until = None if r.ended is None else r.ended + DETECTION_HORIZON_S
        if r.target.startswith("worker"):
            r.detected_by = "router-0 GetStatus: worker healthy=false"
            r.detected_s = monitor.first_after(r.started, 0, lambda s, w=r.target: w not in s.healthy, until)
            if r.ended is not None:
                r.recovered_s = monitor.first_after(r.ended, 0, lambda s, w=r.target: w in s.healthy)
        elif r.target == "redis":
            r.detected_by = "router-0 GetStatus: shared_state_connected=false"
            r.detected_s = monitor.first_after(r.started, 0, lambda s: not s.connected, until)
            if r.ended is not None:
                r.recovered_s = monitor.first_after(r.ended, 0, lambda s: s.connected)
        else:
            r.detected_by = "router-0 log: replica stopped renewing its lease"
            r.detected_s = first_log_line_after(router0_log, r.started, "stopped renewing its lease")
            if r.ended is not None:
                r.recovered_s = monitor.first_after(r.ended, 1, lambda s: True)
