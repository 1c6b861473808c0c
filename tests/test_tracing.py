"""radixfair.tracing: a service that exports nothing records nothing and passes the caller's context on;
one that exports records, exports and chains.

Each service's tracer comes from ``build_tracer``; trace context crosses services only as gRPC
metadata (``inject_metadata`` on one side, ``extract_context`` on the other), as it does in service.
"""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan

from radixfair.tracing import TracingConfig, build_tracer, extract_context, inject_metadata

# A caller's sampled W3C trace context, as a client that traces would send it.
CALLER_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN_ID = 0xB7AD6B7169203331
CALLER_METADATA = [("traceparent", f"00-{CALLER_TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01")]


def _metadata_from(span: trace.Span) -> list[tuple[str, str]]:
    """What a service sends downstream while ``span`` is current."""
    with trace.use_span(span):
        return inject_metadata()


def test_a_service_that_exports_nothing_records_no_span_even_under_a_sampled_caller():
    tracer, provider = build_tracer(TracingConfig("router"))
    root = tracer.start_span("router.generate")
    child = tracer.start_span("router.generate", context=extract_context(CALLER_METADATA))

    assert isinstance(root, NonRecordingSpan) and not root.is_recording()
    assert isinstance(child, NonRecordingSpan) and not child.is_recording()
    provider.shutdown()


def test_a_service_that_exports_nothing_passes_the_callers_context_on_unchanged():
    tracer, provider = build_tracer(TracingConfig("router"))
    span = tracer.start_span("router.forward", context=extract_context(CALLER_METADATA))

    downstream = trace.get_current_span(extract_context(_metadata_from(span))).get_span_context()

    # Transparent to the trace: the next service's spans hang off the caller's span, sampled as it said.
    assert (downstream.trace_id, downstream.span_id) == (CALLER_TRACE_ID, CALLER_SPAN_ID)
    assert downstream.trace_flags.sampled
    provider.shutdown()


def test_a_service_that_exports_nothing_starts_no_trace_of_its_own():
    tracer, provider = build_tracer(TracingConfig("router"))
    span = tracer.start_span("router.generate")

    assert not span.get_span_context().is_valid
    assert _metadata_from(span) == []
    provider.shutdown()


def test_a_service_with_an_exporter_records_and_exports_its_spans():
    exported = InMemorySpanExporter()
    tracer, provider = build_tracer(TracingConfig("worker"), exported)
    span = tracer.start_span("worker.generate")
    span.set_attribute("radixfair.client_id", "alice")
    span.end()

    [finished] = exported.get_finished_spans()
    assert finished.name == "worker.generate"
    assert finished.attributes["radixfair.client_id"] == "alice"
    provider.shutdown()


def test_spans_are_recorded_with_the_otlp_exporter(monkeypatch: pytest.MonkeyPatch):
    # Nothing is exported here (no span ends), so no collector needs to listen there.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    tracer, provider = build_tracer(TracingConfig("worker", exporter="otlp"))

    assert tracer.start_span("worker.generate").is_recording()
    provider.shutdown()


def test_trace_context_chains_across_services_that_export():
    caller_spans, router_spans, worker_spans = (
        InMemorySpanExporter(),
        InMemorySpanExporter(),
        InMemorySpanExporter(),
    )
    caller, caller_provider = build_tracer(TracingConfig("client"), caller_spans)
    router, router_provider = build_tracer(TracingConfig("router"), router_spans)
    worker, worker_provider = build_tracer(TracingConfig("worker", exporter="none"), worker_spans)

    client_span = caller.start_span("client.generate")
    router_span = router.start_span("router.generate", context=extract_context(_metadata_from(client_span)))
    worker_span = worker.start_span("worker.generate", context=extract_context(_metadata_from(router_span)))
    for span in (worker_span, router_span, client_span):
        span.end()

    [client_done] = caller_spans.get_finished_spans()
    [router_done] = router_spans.get_finished_spans()
    [worker_done] = worker_spans.get_finished_spans()
    assert router_done.parent.span_id == client_done.context.span_id
    assert worker_done.parent.span_id == router_done.context.span_id
    assert {s.context.trace_id for s in (client_done, router_done, worker_done)} == {
        client_done.context.trace_id
    }
    for provider in (caller_provider, router_provider, worker_provider):
        provider.shutdown()


def test_an_unknown_exporter_is_refused_by_name():
    with pytest.raises(ValueError, match="'jaeger'"):
        build_tracer(TracingConfig("router", exporter="jaeger"))
