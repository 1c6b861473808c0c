"""Assembles a router from its config and serves it until stopped."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from radixfair.auth import ApiKeyAuthenticator, RegistrationAuthenticator
from radixfair.grpc_health import add_health_and_reflection, set_serving
from radixfair.listening import bind_grpc_port, build_grpc_server
from radixfair.loop_lag import watch_loop_lag
from radixfair.malformed_requests import MalformedRequestInterceptor
from radixfair.metrics import serve_metrics
from radixfair.service_process import wait_for_shutdown_signal
from radixfair.tls import ChannelSecurity, describe, server_credentials
from radixfair.tokenization import PromptEncoder
from radixfair.tracing import build_tracer
from radixfair.v1 import router_pb2_grpc, worker_pb2
from radixfair_router.cache_view import CacheView
from radixfair_router.config import RouterConfig
from radixfair_router.gc_tuning import tune_for_routing
from radixfair_router.ledger import Ledger
from radixfair_router.policies import build_policy
from radixfair_router.request_router import RequestRouter
from radixfair_router.router_metrics import RouterMetrics
from radixfair_router.server import SERVICE_NAME, RouterServicer
from radixfair_router.worker_registry import WorkerRegistry

if TYPE_CHECKING:
    from radixfair_router.http_api import RunningHttpApi

log = logging.getLogger(__name__)


@dataclass
class RunningRouter:
    """A started router; ``port`` is the bound port (useful when the config asked for 0)."""

    port: int
    server: grpc.aio.Server
    registry: WorkerRegistry
    ledger: Ledger
    router: RequestRouter
    cache_view: CacheView
    metrics: RouterMetrics
    provider: TracerProvider
    # The OpenAI-compatible HTTP API; None while config.http_port is 0.
    http: RunningHttpApi | None = None
    # Observes the event loop's lag into metrics.loop_lag while the router runs.
    loop_lag_watch: asyncio.Task[None] | None = None

    async def stop(self, grace_s: float = 2.0) -> None:
        if self.loop_lag_watch is not None:
            self.loop_lag_watch.cancel()
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(grace=grace_s)
        await self.router.drain()
        await self.registry.stop()
        await self.ledger.close()
        self.provider.shutdown()


async def start_router(config: RouterConfig, span_exporter: SpanExporter | None = None) -> RunningRouter:
    # Certificates first: a missing file is one start-up line before anything else starts.
    credentials = server_credentials(config.tls, "tls")
    worker_security = ChannelSecurity.load(config.registry.tls, "registry.tls")
    encoder = PromptEncoder(config.tokenizer_dir)
    authenticator = ApiKeyAuthenticator(config.auth)
    registration = RegistrationAuthenticator(config.registry.registration_token, config.auth)
    tracer, provider = build_tracer(config.tracing, span_exporter)
    metrics = RouterMetrics(CollectorRegistry(), config.metrics.max_client_labels)
    metrics.quantum.set(config.policy.quantum)
    serve_metrics(metrics.registry, config.metrics_port, config.metrics.bind_host(config.host))

    cache_view = CacheView(config.tree)

    def on_report(worker_id: str, report: worker_pb2.LoadReport) -> None:
        cache_view.update_report(worker_id, report.page_size, report.cached_prefix_hashes)
        metrics.queue_depth.labels(worker_id).set(report.queue_length)
        metrics.worker_cache_hit_rate.labels(worker_id).set(report.cache_hit_rate)

    registry = WorkerRegistry(
        config.registry, on_report=on_report, on_removed=cache_view.remove_worker, security=worker_security
    )
    ledger = Ledger(config.ledger, config.policy.quantum)
    policy = build_policy(config.policy, config.costs, ledger)
    router = RequestRouter(config, registry, cache_view, policy, ledger, tracer, metrics)
    metrics.track(lambda: len(registry.healthy()), lambda: ledger.shared)

    server = build_grpc_server([MalformedRequestInterceptor()], share_port=config.share_port)
    servicer = RouterServicer(
        router,
        registry,
        ledger,
        authenticator,
        encoder,
        config.model_name,
        tracer,
        metrics,
        registration,
    )
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind_grpc_port(
        server, config.host, config.port, credentials=credentials, share_port=config.share_port
    )
    http = None
    if config.http_port:
        # Imported only when served: a router without the HTTP port needs none of the ASGI stack.
        from radixfair_router.http_api import DispatchParts, OpenAiApi, start_http_api

        parts = DispatchParts(router, registry, authenticator, encoder, config.model_name, tracer, metrics)
        http = await start_http_api(OpenAiApi(parts).app(), config.host, config.http_port, config.tls)
    registry.start()
    await server.start()
    await set_serving(health, [SERVICE_NAME], True)
    # `radixfair up --routers N` waits for this line (radixfair.local_stack.ROUTER_SERVING).
    log.info(
        "router serving on %s:%d (%s) with policy %s; workers over %s",
        config.host, port, describe(config.tls), policy.name, describe(config.registry.tls),
    )  # fmt: skip
    watch = asyncio.create_task(watch_loop_lag(metrics.loop_lag))
    return RunningRouter(port, server, registry, ledger, router, cache_view, metrics, provider, http, watch)


async def serve(config: RouterConfig, ready: asyncio.Event | None = None) -> None:
    """Runs until SIGINT/SIGTERM; sets ``ready`` once serving."""
    running = await start_router(config)
    if ready is not None:
        ready.set()
    # Process-wide, so here and not in start_router, which tests also call in their own process.
    tune_for_routing()
    try:
        await wait_for_shutdown_signal()
    finally:
        await running.stop()
