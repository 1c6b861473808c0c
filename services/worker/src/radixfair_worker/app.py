"""Starts a worker: the engine in its own process, and the gRPC serving front in this one."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import socket
import sys
from pathlib import Path

import grpc
from grpc_health.v1.health import HealthServicer
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from radixfair.auth import bearer_metadata
from radixfair.gc_tuning import tune_for_serving
from radixfair.grpc_health import add_health_and_reflection, set_serving
from radixfair.listening import bind_grpc_port, build_grpc_server
from radixfair.loop_lag import watch_loop_lag
from radixfair.malformed_requests import MalformedRequestInterceptor
from radixfair.metrics import serve_metrics
from radixfair.service_process import wait_for_shutdown_signal
from radixfair.tls import open_aio_channel, server_credentials
from radixfair.tokenization import PromptEncoder
from radixfair.tracing import build_tracer
from radixfair.v1 import router_pb2, router_pb2_grpc, worker_pb2_grpc
from radixfair_model_format.model_store import resolve_model_dir
from radixfair_worker.caller_identity_check import CallerIdentityInterceptor
from radixfair_worker.config import WorkerConfig
from radixfair_worker.engine_client import EngineClient
from radixfair_worker.engine_protocol import EngineSpec
from radixfair_worker.server import SERVICE_NAME, WorkerServicer
from radixfair_worker.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)


async def serve(
    config: WorkerConfig, span_exporter: SpanExporter | None = None, ready: asyncio.Event | None = None
) -> None:
    """Runs until SIGINT/SIGTERM (or task cancellation)."""
    # `kill -USR1` dumps every thread's stack to the log: how a stuck worker is diagnosed.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if config.front_switch_interval_s > 0:
        sys.setswitchinterval(config.front_switch_interval_s)
    model_dir = await asyncio.to_thread(resolve_model_dir, config.model, Path(config.cache_dir))
    model_name = config.model_name or model_dir.name
    worker_id = config.worker_id or f"{socket.gethostname()}:{config.port}"
    tracer, provider = build_tracer(config.tracing, span_exporter)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, config.metrics.max_client_labels)
    metrics.quantum.set(config.engine.scheduler.quantum)
    serve_metrics(registry, config.metrics_port, config.metrics.bind_host(config.host))

    spec = EngineSpec(
        config.engine,
        model_dir,
        config.torch_threads,
        config.engine_switch_interval_s,
        config.engine_pipe_io,
    )
    engine = EngineClient(spec, metrics)
    try:
        encoder, _ = await asyncio.gather(asyncio.to_thread(PromptEncoder, model_dir), engine.start())
        if config.detokenize_in_front:
            engine.detokenize_in_front(encoder.new_detokenizer)
        servicer = WorkerServicer(
            engine, encoder, worker_id, model_name, tracer, metrics, identity_secret=config.identity_secret
        )
        lag = asyncio.create_task(watch_loop_lag(metrics.loop_lag))
        try:
            await _serve_grpc(config, servicer, engine, worker_id, model_name, ready)
        finally:
            lag.cancel()
    finally:
        # Also when start-up failed half way: the engine process never outlives the worker.
        await engine.stop()
        provider.shutdown()


async def _serve_grpc(
    config: WorkerConfig,
    servicer: WorkerServicer,
    engine: EngineClient,
    worker_id: str,
    model_name: str,
    ready: asyncio.Event | None,
) -> None:
    interceptors: list[grpc.aio.ServerInterceptor] = [MalformedRequestInterceptor()]
    if config.identity_secret:
        interceptors.append(CallerIdentityInterceptor(config.identity_secret))
    server = build_grpc_server(interceptors)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind_grpc_port(server, config.host, config.port, credentials=server_credentials(config.tls))
    await server.start()
    await set_serving(health, [SERVICE_NAME], True)
    log.info("worker %s serving %s on %s:%d", worker_id, model_name, config.host, port)

    # A worker that lost its engine keeps answering, with NOT_SERVING and UNAVAILABLE.
    engine_watch = asyncio.create_task(_not_serving_when_lost(engine, health))
    heartbeat = None
    if config.router_address:
        address = config.advertise_address or f"{config.host}:{port}"
        heartbeat = asyncio.create_task(_register_forever(config, worker_id, address, model_name))
    if ready is not None:
        ready.set()
    # The front allocates per token of every stream (deliveries, deltas, messages) and holds start-up's
    # tokenizer, tracer and gRPC state: under CPython's default thresholds its collections ran every
    # few hundred tokens and walked all of that (see radixfair.gc_tuning). Process-wide: once serving.
    tune_for_serving()
    try:
        await wait_for_shutdown_signal()
    finally:
        await set_serving(health, [SERVICE_NAME], False)
        engine_watch.cancel()
        if heartbeat is not None:
            heartbeat.cancel()
        servicer.end_watches()
        await server.stop(grace=5)


async def _not_serving_when_lost(engine: EngineClient, health: HealthServicer) -> None:
    await engine.lost.wait()
    await set_serving(health, [SERVICE_NAME], False)


async def _register_forever(config: WorkerConfig, worker_id: str, address: str, model: str) -> None:
    """Heartbeats to the router; a router that is down is retried, never fatal."""
    async with open_aio_channel(config.router_address, config.router_tls, "router_tls") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.RegisterWorkerRequest(worker_id=worker_id, address=address, model=model)
        metadata = bearer_metadata(config.router_token) if config.router_token else None
        while True:
            try:
                await stub.RegisterWorker(request, timeout=config.heartbeat_seconds, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                log.warning("router %s did not take registration: %s", config.router_address, error.code())
            await asyncio.sleep(config.heartbeat_seconds)
