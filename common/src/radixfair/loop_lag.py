"""How late a serving process's asyncio event loop runs what is due: its lag, as a histogram.

A gRPC front (the worker's, the router's) does everything on one event loop: a new call's handler,
each stream's messages, load reports. When the loop is busy, all of it waits, and a request spends
time between the client and the engine that no engine metric shows (the serving bench's
``outside_worker_mean_ms``). A watcher task sleeps ``interval_s`` and observes how much later than
that it woke: the time anything scheduled then waited for the loop.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram

# Seconds; from a loop that keeps up (well under a millisecond) to one that stalls.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INTERVAL_S = 0.05


def loop_lag_histogram(service: str, registry: CollectorRegistry) -> Histogram:
    """``radixfair_<service>_event_loop_lag_seconds`` on ``registry``."""
    return Histogram(
        f"radixfair_{service}_event_loop_lag_seconds",
        "How much later than due the serving event loop ran a timer (its lag), sampled every 50 ms",
        registry=registry,
        buckets=LAG_BUCKETS,
    )


async def watch_loop_lag(histogram: Histogram, interval_s: float = INTERVAL_S) -> None:
    """Observes the running loop's lag into ``histogram`` every ``interval_s`` until cancelled."""
    while True:
        due = time.monotonic() + interval_s
        await asyncio.sleep(interval_s)
        histogram.observe(max(0.0, time.monotonic() - due))
