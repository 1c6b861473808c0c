"""A router-side WorkerEndpoint whose channel is never dialled: for tests of the router's booking and
relay bookkeeping (LiveStreams, OutputCredit), which hold an endpoint but make no call on it."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc

from radixfair.v1 import worker_pb2_grpc
from radixfair_router.worker_registry import WorkerEndpoint


def unused_endpoint(worker_id: str = "w0") -> tuple[grpc.aio.Channel, WorkerEndpoint]:
    """(channel, endpoint) on a loopback address nothing serves; the caller closes the channel."""
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    endpoint = WorkerEndpoint(
        worker_id, "127.0.0.1:9", "", True, channel, worker_pb2_grpc.WorkerServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
    )  # fmt: skip
    return channel, endpoint
