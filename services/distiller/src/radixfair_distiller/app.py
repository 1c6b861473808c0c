"""Starts a distiller: resumes unfinished jobs, serves gRPC until stopped."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from radixfair.grpc_health import add_health_and_reflection, set_serving
from radixfair.listening import bind_grpc_port, build_grpc_server
from radixfair.malformed_requests import MalformedRequestInterceptor
from radixfair.metrics import serve_metrics
from radixfair.service_process import wait_for_shutdown_signal
from radixfair.tls import describe, server_credentials
from radixfair.v1 import distiller_pb2_grpc
from radixfair_distiller.config import DistillerConfig
from radixfair_distiller.distiller_metrics import DistillerMetrics

log = logging.getLogger(__name__)


async def serve(config: DistillerConfig, ready: asyncio.Event | None = None) -> None:
    """Runs until SIGINT/SIGTERM (or task cancellation); a running job is left resumable."""
    # Certificates first, then the ports: a missing file or a taken port is one start-up line before
    # anything starts, and before torch is imported (seconds) with the runner.
    credentials = server_credentials(config.tls, "tls")
    metrics = DistillerMetrics(CollectorRegistry())
    serve_metrics(metrics.registry, config.metrics_port, config.host)
    server = build_grpc_server([MalformedRequestInterceptor()])
    port = bind_grpc_port(server, config.host, config.port, credentials=credentials)
    import torch

    from radixfair_distiller.runner import JobRunner
    from radixfair_distiller.server import SERVICE_NAME, DistillerServicer

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    runner = JobRunner(config, metrics)
    distiller_pb2_grpc.add_DistillerServiceServicer_to_server(DistillerServicer(runner), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    runner.start()
    await server.start()
    await set_serving(health, [SERVICE_NAME], True)
    log.info(
        "distiller serving on %s:%d (%s, device %s, work dir %s)",
        config.host,
        port,
        describe(config.tls),
        runner.device,
        config.work_dir,
    )
    if ready is not None:
        ready.set()
    try:
        await wait_for_shutdown_signal()
    finally:
        await set_serving(health, [SERVICE_NAME], False)
        await server.stop(grace=2)
        await asyncio.to_thread(runner.stop)
