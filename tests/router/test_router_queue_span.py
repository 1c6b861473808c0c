"""A caller who leaves while its request waits in the admission gate still ends its queue span:
a span that is never ended is never exported, and the trace shows the request waiting for good."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.router_stack import router_config, running_router, wait_until

from radixfair.auth import Principal
from radixfair.v1 import generation_pb2
from radixfair_router.request_validation import ValidatedRequest

PREFIX = list(range(33_000, 33_024))


def _request(request_id: str, tail: int) -> ValidatedRequest:
    sampling = generation_pb2.SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    return ValidatedRequest(request_id, tuple(PREFIX + [tail] * 4), sampling, "")


def test_a_caller_gone_from_the_gate_ends_its_queue_span(two_workers, tiny_model_dir: Path):
    spans = InMemorySpanExporter()
    # One slot per worker: two requests in flight fill the gate.
    config = router_config(tiny_model_dir, two_workers, policy="global_vtc", vtc_slots_per_worker=1)

    async def scenario() -> bool:
        async with running_router(config, spans) as running:
            router = running.router

            def stream(request_id: str, tail: int, client: str):
                return router.generate(_request(request_id, tail), Principal(client, 1.0), trace.INVALID_SPAN)

            # Two streams hold the two slots while they are not read past their first message.
            holding = [stream("hold-1", 1, "alice"), stream("hold-2", 2, "bob")]
            for held in holding:
                await anext(held)
            waiting = asyncio.create_task(anext(stream("waits", 3, "carol")))
            gate = router._gate
            await wait_until(lambda: gate is not None and gate.waiting == 1, "carol waiting in the gate")
            waiting.cancel()
            await asyncio.wait([waiting])
            for held in holding:
                await held.aclose()
            return waiting.cancelled()

    assert asyncio.run(scenario())
    queued = [s for s in spans.get_finished_spans() if s.name == "router.queue"]
    assert len(queued) == 3
