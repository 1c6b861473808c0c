"""How full the engine's batch is while a cell runs: running and waiting requests, sampled over time.

A closed-loop cell's throughput is (requests in the running batch) / (step time). When the worker
path makes fewer tokens per second than the in-process engine at the same step speed, either its
batch is emptier (requests are in transit between the engine and their clients) or its requests
wait in the engine (admission). Sampling both counts side by side says which.

Every path is read the same way: a thread samples ``(waiting, running)`` every ``interval_s``; the
in-process engine by its list lengths, a worker by its GetLoadReport (``queue_length`` and
``running_requests``, as of the engine's last published state). With several workers the counts are
summed over them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from statistics import mean

import grpc

from radixfair.v1 import worker_pb2, worker_pb2_grpc

Reader = Callable[[], tuple[int, int]]
INTERVAL_S = 0.1


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
    """Samples a Reader every ``interval_s`` on a thread between ``start`` and ``stop``."""

    def __init__(self, read: Reader, interval_s: float = INTERVAL_S) -> None:
        self._read, self._interval_s = read, interval_s
        self._stop = threading.Event()
        self._samples: list[tuple[int, int]] = []
        self._errors = 0
        self._thread = threading.Thread(target=self._run, name="occupancy-probe", daemon=True)

    def start(self) -> OccupancyProbe:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._samples.append(self._read())
            except grpc.RpcError:
                self._errors += 1

    def stop(self) -> dict[str, float | int | None]:
        """Means over the samples: ``engine_waiting_mean``, ``engine_running_mean``, and their count."""
        self._stop.set()
        self._thread.join(timeout=10)
        samples = self._samples
        return {
            "engine_waiting_mean": round(mean(w for w, _ in samples), 1) if samples else None,
            "engine_running_mean": round(mean(r for _, r in samples), 1) if samples else None,
            "occupancy_samples": len(samples),
            "occupancy_errors": self._errors,
        }
