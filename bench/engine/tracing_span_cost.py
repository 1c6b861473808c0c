"""What one OpenTelemetry span costs a request's path: a service with no exporter against one that records.

A span as the router makes one on its time-to-first-token path: started under the caller's (remote)
context, eight attributes, made current while the trace context is injected into the outgoing
metadata, ended. ``build_tracer`` with exporter ``none`` (the no-op tracer: what the services run by
default) against a recording provider with no processor (what ``none`` built before) and against the
in-memory exporter (recording and exporting, as with an exporter configured).

    .venv/bin/python bench/engine/tracing_span_cost.py            # a few seconds

Writes ``bench/results/tracing_span_cost_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import RESULTS_DIR, write_results  # noqa: E402
from radixfair.tracing import TracingConfig, build_tracer, extract_context, inject_metadata  # noqa: E402

CALLER = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]


def span_us(tracer: trace.Tracer, spans: int) -> float:
    """Median over 5 rounds of the mean time per span, in microseconds."""
    parent = extract_context(CALLER)
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(spans):
            span = tracer.start_span("router.forward", context=parent, kind=trace.SpanKind.CLIENT)
            for index in range(8):
                span.set_attribute(f"radixfair.attribute_{index}", index)
            with trace.use_span(span):
                inject_metadata()
            span.end()
        rounds.append((time.perf_counter() - started) / spans * 1e6)
    return sorted(rounds)[2]


def main() -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--spans", type=int, default=5000)
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    exported = InMemorySpanExporter()
    tracers = {
        "exporter none (no-op tracer)": build_tracer(TracingConfig("router"))[0],
        "recording, no processor (none before this change)": TracerProvider().get_tracer("router"),
        "recording, in-memory exporter": build_tracer(TracingConfig("router"), exported)[0],
    }
    rows = []
    for name, tracer in tracers.items():
        rows.append({"tracer": name, "us_per_span": span_us(tracer, args.spans)})
        exported.clear()
    md = write_results(
        f"tracing_span_cost_{args.tag}",
        rows,
        ["tracer", "us_per_span"],
        {},
        (
            "One span as the router makes one on its TTFT path (remote parent, 8 attributes, current "
            "while the trace context is injected, ended); median of 5 rounds of "
            f"{args.spans} spans. On a shared machine the absolute figures move with its load; "
            "the rows are measured back to back."
        ),
        results_dir=Path(args.out_dir),
    )
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
