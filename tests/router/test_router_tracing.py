"""One trace from the client through the router to a worker process, over gRPC metadata only.

The client and the router run here and export to the SDK's in-memory
exporter; the worker is a separate process exporting OTLP to a collector
served by this test. The parent/child links must chain across all three.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.ports import free_port
from support.router_stack import CLIENTS, router_config, running_router

from radixfair.client import ClientConfig, RouterClient
from radixfair.tracing import TracingConfig, build_tracer


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def otlp_collector() -> Iterator[tuple[str, _Collector]]:
    collector = _Collector()
    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield f"http://127.0.0.1:{port}", collector
    server.stop(grace=None)


def test_a_trace_chains_client_router_and_worker_across_processes(
    otlp_collector, spawn_workers, tiny_model_dir, monkeypatch: pytest.MonkeyPatch
):
    endpoint, collector = otlp_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    [worker] = spawn_workers(1, **{"tracing.exporter": "otlp", "tracing.service_name": "radixfair-worker"})
    client_spans, router_spans = InMemorySpanExporter(), InMemorySpanExporter()
    tracer, provider = build_tracer(TracingConfig("test-client"), client_spans)

    async def scenario():
        async with running_router(router_config(tiny_model_dir, [worker]), router_spans) as running:
            config = ClientConfig(f"127.0.0.1:{running.port}", CLIENTS["alice"][0])
            async with RouterClient(config, tracer=tracer) as client:
                return await client.generate("trace me", max_tokens=3, ignore_eos=True)

    output = asyncio.run(scenario())
    provider.shutdown()
    deadline = time.monotonic() + 15
    while not any(s.name == "worker.generate" for s in collector.spans) and time.monotonic() < deadline:
        time.sleep(0.05)

    [client_span] = client_spans.get_finished_spans()
    by_name = {s.name: s for s in router_spans.get_finished_spans()}
    server_span, route_span, forward_span = (
        by_name["router.generate"],
        by_name["router.route"],
        by_name["router.forward"],
    )
    [worker_span] = [s for s in collector.spans if s.name == "worker.generate"]
    trace_id = client_span.context.trace_id

    assert server_span.parent.span_id == client_span.context.span_id
    assert route_span.parent.span_id == server_span.context.span_id
    assert forward_span.parent.span_id == server_span.context.span_id
    assert int.from_bytes(worker_span.trace_id, "big") == trace_id
    assert int.from_bytes(worker_span.parent_span_id, "big") == forward_span.context.span_id
    assert {s.context.trace_id for s in by_name.values()} == {trace_id}
    # The routing decision is on the trace, with GenAI attributes where they fit.
    assert route_span.attributes["radixfair.routing.policy"] == "d2lpm"
    assert route_span.attributes["radixfair.routing.worker_id"] == output.result.worker_id
    assert "radixfair.routing.prefix_match_tokens" in route_span.attributes
    assert "radixfair.routing.deficit" in route_span.attributes
    assert server_span.attributes["gen_ai.operation.name"] == "text_completion"
    assert forward_span.attributes["gen_ai.usage.output_tokens"] == 3
    # The worker's phases hang under its own span.
    phases = {s.name for s in collector.spans if s.parent_span_id == worker_span.span_id}
    assert {"worker.queue", "worker.prefill", "worker.decode"} <= phases
