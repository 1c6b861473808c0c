"""A worker shutting down ends its load-report watches cleanly instead of holding its grace period.

WatchLoadReport never ends by itself, so before the worker ended the watches, a subscribed
monitor held ``server.stop(grace=5)`` for the whole grace on every stop and then saw its call
cancelled. Now the watch ends with status OK right after SIGTERM (a report already in flight is
still delivered), and the worker exits.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc

from radixfair.v1 import worker_pb2, worker_pb2_grpc


def test_a_watch_open_at_sigterm_ends_with_ok_and_the_worker_exits(
    start_worker, tiny_model_dir: Path
) -> None:
    worker = start_worker(tiny_model_dir)
    with grpc.insecure_channel(worker.address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        watch = stub.WatchLoadReport(worker_pb2.WatchLoadReportRequest(interval_ms=100), timeout=120)
        first = next(watch)
        assert first.report.total_pages > 0
        worker.process.send_signal(signal.SIGTERM)
        # Iterating to the end raises grpc.RpcError if the call ends in anything but OK (the grace
        # period's cancellation would be CANCELLED or UNAVAILABLE).
        later = list(watch)
        assert watch.code() is grpc.StatusCode.OK
        assert all(r.report.worker_id == first.report.worker_id for r in later)
    assert worker.process.wait(timeout=60) == 0
