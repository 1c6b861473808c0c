"""A GenerateMultiplexed call whose shared writer or reader meets an unexpected failure that belongs to
one request: that request ends with a clear status, the call and its other requests go on (issue 12).

The call is served in-process (MultiplexedCall.serve, as the gRPC handler runs it) by a real
WorkerServicer in front of a real engine process. No real fault reaches these paths (they format a
result and open a span), so one method of the real servicer is replaced to raise for one request, as
a bug there would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from worker.test_worker_multiplexed import request, start

from radixfair.tokenization import PromptEncoder
from radixfair.v1 import worker_pb2
from radixfair_engine.config import EngineConfig
from radixfair_worker.engine_client import EngineClient
from radixfair_worker.engine_protocol import EngineSpec
from radixfair_worker.multiplexed_call import MultiplexedCall
from radixfair_worker.server import WorkerServicer
from radixfair_worker.worker_metrics import WorkerMetrics

WAIT_S = 120  # generous: the engine process imports torch and builds a model on a loaded machine


def serve_with(
    model_dir, break_servicer: Callable[[WorkerServicer], None], starts: list[worker_pb2.MultiplexedStart]
) -> dict[int, list[worker_pb2.MultiplexedEvent]]:
    """Every event of each start's tag until all have ended, then the caller's side closes."""

    async def scenario():
        metrics = WorkerMetrics(CollectorRegistry())
        engine = EngineClient(
            EngineSpec(EngineConfig(num_pages=64, page_size=8), model_dir, torch_threads=1), metrics
        )
        await engine.start()
        try:
            servicer = WorkerServicer(
                engine, PromptEncoder(model_dir), "w", "tiny", trace.get_tracer(__name__), metrics
            )
            break_servicer(servicer)
            inbox: asyncio.Queue[worker_pb2.GenerateMultiplexedRequest | None] = asyncio.Queue()

            async def requests() -> AsyncIterator[worker_pb2.GenerateMultiplexedRequest]:
                while (message := await inbox.get()) is not None:
                    yield message

            inbox.put_nowait(worker_pb2.GenerateMultiplexedRequest(starts=starts))
            by_tag: dict[int, list[worker_pb2.MultiplexedEvent]] = {s.tag: [] for s in starts}
            open_tags = set(by_tag)
            async for message in MultiplexedCall(servicer, engine, "").serve(requests()):
                for event in message.events:
                    by_tag[event.tag].append(event)
                    if event.WhichOneof("event") != "delta":
                        open_tags.discard(event.tag)
                if not open_tags:
                    inbox.put_nowait(None)
            return by_tag
        finally:
            await engine.stop()

    return asyncio.run(asyncio.wait_for(scenario(), WAIT_S))


def break_finishing_mallory(servicer: WorkerServicer) -> None:
    """Building the result of a request of client "mallory" raises, as a bug there would."""
    finished = servicer.finished

    def failing(engine_request, outcome, span):
        if engine_request.client_id == "mallory":
            raise RuntimeError("a bug in finishing")
        return finished(engine_request, outcome, span)

    servicer.finished = failing  # type: ignore[method-assign]


def test_an_unexpected_failure_finishing_one_request_ends_it_alone_and_the_call_goes_on(tiny_model_dir):
    by_tag = serve_with(
        tiny_model_dir,
        break_finishing_mallory,
        [
            start(1, request("a story", "finish-1", client="mallory", max_tokens=4, ignore_eos=True)),
            start(2, request("a story", "finish-2", max_tokens=6, ignore_eos=True)),
        ],
    )
    end = by_tag[1][-1]
    assert end.error.code == grpc.StatusCode.INTERNAL.value[0] and "RuntimeError" in end.error.message
    assert end.error.request_scoped
    assert by_tag[2][-1].result.usage.completion_tokens == 6


def test_an_unexpected_failure_starting_one_request_ends_it_alone_and_the_call_goes_on(tiny_model_dir):
    def break_the_first_span(servicer: WorkerServicer) -> None:
        start_span, calls = servicer.start_span, []

        def failing(parent):
            calls.append(parent)
            if len(calls) == 1:
                raise RuntimeError("a bug in starting")
            return start_span(parent)

        servicer.start_span = failing  # type: ignore[method-assign]

    by_tag = serve_with(
        tiny_model_dir,
        break_the_first_span,
        [
            start(1, request("a story", "start-1", max_tokens=4, ignore_eos=True)),
            start(2, request("a story", "start-2", max_tokens=6, ignore_eos=True)),
        ],
    )
    [end] = by_tag[1]
    assert end.error.code == grpc.StatusCode.INTERNAL.value[0] and "RuntimeError" in end.error.message
    assert end.error.request_scoped
    assert by_tag[2][-1].result.usage.completion_tokens == 6


def ends(events: list[worker_pb2.MultiplexedEvent]) -> list[worker_pb2.MultiplexedEvent]:
    return [e for e in events if e.WhichOneof("event") != "delta"]


def test_a_refusal_whose_bookkeeping_fails_still_ends_its_tag_once(tiny_model_dir):
    def break_rejected(servicer: WorkerServicer) -> None:
        def failing(error, span):
            raise RuntimeError("a bug in recording a refusal")

        servicer.rejected = failing  # type: ignore[method-assign]

    by_tag = serve_with(
        tiny_model_dir,
        break_rejected,
        [
            start(1, request("a story", "refused-1", temperature=-1.0)),
            start(2, request("a story", "refused-2", max_tokens=5, ignore_eos=True)),
        ],
    )
    [end] = ends(by_tag[1])
    assert end.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert ends(by_tag[2])[0].result.usage.completion_tokens == 5


def test_every_request_is_recorded_as_ended_once_whatever_failed(tiny_model_dir):
    outcomes: list[str] = []

    def break_finishing_and_record_ends(servicer: WorkerServicer) -> None:
        break_finishing_mallory(servicer)
        request_ended = servicer.request_ended

        def recording(span, outcome, started):
            outcomes.append(outcome)
            return request_ended(span, outcome, started)

        servicer.request_ended = recording  # type: ignore[method-assign]

    serve_with(
        tiny_model_dir,
        break_finishing_and_record_ends,
        [
            start(1, request("a story", "once-1", client="mallory", max_tokens=4, ignore_eos=True)),
            start(2, request("a story", "once-2", max_tokens=4, ignore_eos=True)),
        ],
    )
    assert sorted(outcomes) == ["error", "ok"]


def test_a_failure_after_a_requests_end_event_sends_no_second_end(tiny_model_dir):
    def break_recording_ok_ends(servicer: WorkerServicer) -> None:
        request_ended = servicer.request_ended

        def failing(span, outcome, started):
            if outcome == "ok":
                raise RuntimeError("a bug in recording an end")
            return request_ended(span, outcome, started)

        servicer.request_ended = failing  # type: ignore[method-assign]

    by_tag = serve_with(
        tiny_model_dir,
        break_recording_ok_ends,
        [
            start(1, request("a story", "one-end-1", max_tokens=3, ignore_eos=True)),
            start(2, request("a story", "one-end-2", max_tokens=6, ignore_eos=True)),
        ],
    )
    for tag, tokens in ((1, 3), (2, 6)):
        [end] = ends(by_tag[tag])
        assert end.result.usage.completion_tokens == tokens
