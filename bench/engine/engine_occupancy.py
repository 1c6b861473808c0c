"""How full the engine's batch is while a cell runs, and how its loop spent the cell.

A closed-loop cell's throughput is (requests in the running batch) / (step time). When the worker
path makes fewer tokens per second than the in-process engine at the same step speed, either its
batch is emptier (requests are in transit between the engine and their clients) or its requests
wait in the engine (admission). Sampling both counts side by side says which.

Every path is read the same way: a thread samples ``(waiting, running)`` every ``interval_s``; the
in-process engine by its list lengths, a worker by its GetLoadReport (``queue_length`` and
``running_requests``, as of the engine's last published state). With several workers the counts are
summed over them.

The engine loop's own counters (``StepStats``: steps, prefill steps, sampled rows, seconds inside
steps and waiting on the device) are sampled with them, from the in-process engine or from each
worker's Prometheus endpoint (``radixfair_worker_engine_*``, as fresh as the load report just asked
for), summed over the workers; ``OccupancyProbe.summary`` reduces both over a cell's steady window.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from statistics import mean

import grpc

from bench.engine.process_cpu import thread_sched
from radixfair.v1 import worker_pb2, worker_pb2_grpc

Reader = Callable[[], tuple[int, int]]
INTERVAL_S = 0.1
# A worker's loop counters are read every this many batch samples: its scrape renders every metric on
# the serving front, so it is kept to twice a second; two reads inside a window are enough.
WORKER_LOOP_EVERY = 5
STAT_FIELDS = ("steps", "prefill_steps", "sampled_rows", "step_s", "device_wait_s")
# The serving fronts' event-loop lag (radixfair.loop_lag), read beside the loop's counters.
LAG_FIELDS = ("front_lag_s", "front_lag_samples")
_METRIC_OF = {
    "front_lag_s": "radixfair_worker_event_loop_lag_seconds_sum",
    "front_lag_samples": "radixfair_worker_event_loop_lag_seconds_count",
    "steps": "radixfair_worker_engine_steps_total",
    "prefill_steps": "radixfair_worker_engine_prefill_steps_total",
    "sampled_rows": "radixfair_worker_engine_sampled_rows_total",
    "step_s": "radixfair_worker_engine_step_seconds_total",
    "device_wait_s": "radixfair_worker_engine_device_wait_seconds_total",
}


# The serving processes whose cores are also read beside the loop's counters (process_cpu roles), so
# their share of a core is known over the steady window, not only over the whole cell.
STEADY_ROLES = ("router", "worker", "worker_engine")
LOOP_COLUMNS = (
    "steps_per_s",
    "rows_per_step",
    "prefill_step_share",
    "step_ms",
    "device_wait_share",
    "front_loop_lag_ms",
    *(f"{role}_cores_steady" for role in STEADY_ROLES),
    "loop_on_cpu_share",
    "loop_runqueue_share",
)
# The engine loop thread's scheduler clock (process_cpu.thread_sched), read as these keys.
SCHED_FIELDS = ("loop_on_cpu_s", "loop_runqueue_s")


def engine_stats(engine: object, loop_thread: int | None = None) -> dict[str, float]:
    """The in-process engine's StepStats so far, and the scheduler clock of the thread stepping it
    (``loop_thread``, a native thread id of this process; None: not read)."""
    stats = engine.step_stats  # type: ignore[attr-defined]
    out = {name: float(getattr(stats, name)) for name in STAT_FIELDS}
    sched = thread_sched(os.getpid(), loop_thread) if loop_thread is not None else None
    if sched is not None:
        out.update(zip(SCHED_FIELDS, sched))
    return out


def scraped_stats(metrics_urls: Sequence[str]) -> dict[str, float]:
    """The StepStats counters summed over the workers' Prometheus endpoints, and their fronts' loop lag."""
    totals = dict.fromkeys((*STAT_FIELDS, *LAG_FIELDS), 0.0)
    wanted = {metric: name for name, metric in _METRIC_OF.items()}
    for url in metrics_urls:
        for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
            metric, _, value = line.rpartition(" ")
            if metric in wanted:
                totals[wanted[metric]] += float(value)
    return totals


def loop_summary(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float | None]:
    """What the engine loop did between two reads: steps/s, mean rows a step, the share of steps with
    a prefill, ms a step, and the share of the loop's step time spent waiting on the device."""
    delta = {name: after[name] - before.get(name, 0.0) for name in after}
    steps = delta["steps"]
    if steps <= 0 or wall_s <= 0:
        return dict.fromkeys(LOOP_COLUMNS)
    return {
        "steps_per_s": round(steps / wall_s, 1),
        "rows_per_step": round(delta["sampled_rows"] / steps, 1),
        "prefill_step_share": round(delta["prefill_steps"] / steps, 3),
        "step_ms": round(1e3 * delta["step_s"] / steps, 3),
        "device_wait_share": round(delta["device_wait_s"] / delta["step_s"], 3) if delta["step_s"] else None,
        # Mean lag of the workers' serving fronts over the window (None in process: no front).
        "front_loop_lag_ms": (
            round(1e3 * delta["front_lag_s"] / delta["front_lag_samples"], 3)
            if delta.get("front_lag_samples")
            else None
        ),
        # CPU seconds of each serving role (read as "cpu_<role>") over the wall between the reads.
        **{
            f"{role}_cores_steady": round(delta[key] / wall_s, 3) if key in delta else None
            for role, key in ((role, f"cpu_{role}") for role in STEADY_ROLES)
        },
        # The engine loop thread (summed over the workers' engines): its share of the wall on a CPU,
        # and runnable but waiting for one; the rest it was blocked (GIL, pipe, device, idle).
        **{
            column: round(delta[key] / wall_s, 3) if key in delta else None
            for column, key in zip(("loop_on_cpu_share", "loop_runqueue_share"), SCHED_FIELDS)
        },
    }


def engine_reader(engine: object) -> Reader:
    """(waiting, running) of an in-process engine (list lengths: safe to read from another thread)."""
    return lambda: (len(engine.waiting), len(engine.running))  # type: ignore[attr-defined]


def worker_reader(addresses: Sequence[str]) -> tuple[Reader, Callable[[], None]]:
    """(waiting, running) summed over the workers at ``addresses``, and a close for their channels."""
    channels = [grpc.insecure_channel(address) for address in addresses]
    stubs = [worker_pb2_grpc.WorkerServiceStub(channel) for channel in channels]

    def read() -> tuple[int, int]:
        waiting = running = 0
        for stub in stubs:
            report = stub.GetLoadReport(worker_pb2.GetLoadReportRequest(), timeout=5).report
            waiting += report.queue_length
            running += report.running_requests
        return waiting, running

    def close() -> None:
        for channel in channels:
            channel.close()

    return read, close


class OccupancyProbe:
    """Samples the batch (``read``) and the loop's counters (``read_loop``) every ``interval_s`` on a
    thread between ``start`` and ``stop``; ``summary`` then reduces the samples inside a time window.

    The window matters: a closed-loop cell ramps up, then drains, then idles while the load
    generators report back, and a mean over all of that reads the batch emptier and the loop slower
    than they were while every client was streaming.
    """

    def __init__(
        self,
        read: Reader,
        read_loop: Callable[[], dict[str, float]],
        loop_every: int = 1,
        interval_s: float = INTERVAL_S,
    ) -> None:
        """``loop_every``: read the loop's counters with every this many batch samples."""
        self._read, self._read_loop, self._interval_s = read, read_loop, interval_s
        self._loop_every = loop_every
        self._stop = threading.Event()
        # (time.monotonic(), waiting, running, loop counters or None between their reads)
        self._samples: list[tuple[float, int, int, dict[str, float] | None]] = []
        self._errors = 0
        self._thread = threading.Thread(target=self._run, name="occupancy-probe", daemon=True)

    def start(self) -> OccupancyProbe:
        self._sample()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self, with_loop: bool | None = None) -> None:
        if with_loop is None:
            with_loop = len(self._samples) % self._loop_every == 0
        try:
            waiting, running = self._read()
            loop = self._read_loop() if with_loop else None
            self._samples.append((time.monotonic(), waiting, running, loop))
        except (grpc.RpcError, OSError):
            self._errors += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample(with_loop=True)

    def summary(self, window: tuple[float, float] | None) -> dict[str, float | int | None]:
        """Means of the batch samples and the loop's rates between the first and last sample inside
        ``window`` (``(start, end)`` in time.monotonic(); None: every sample)."""
        samples = self._samples
        if window is not None:
            samples = [s for s in samples if window[0] <= s[0] <= window[1]]
        out: dict[str, float | int | None] = {
            "engine_waiting_mean": round(mean(s[1] for s in samples), 1) if samples else None,
            "engine_running_mean": round(mean(s[2] for s in samples), 1) if samples else None,
            "occupancy_samples": len(samples),
            "occupancy_errors": self._errors,
        }
        reads = [(at, loop) for at, _, _, loop in samples if loop is not None]
        if len(reads) >= 2:
            (first_at, first), (last_at, last) = reads[0], reads[-1]
            out.update(loop_summary(first, last, last_at - first_at))
        else:
            out.update(dict.fromkeys(LOOP_COLUMNS))
        return out
