"""Coalesced deltas: a consumer that falls behind gets several steps' tokens in one message, same text."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from radixfair.errors import EngineStoppedError
from radixfair.tokenization import PromptEncoder
from radixfair_engine.request import FinishReason
from radixfair_worker.engine_protocol import RequestOutcome
from radixfair_worker.request_stream import RequestStream
from radixfair_worker.worker_metrics import BatchHistogram

# Multi-byte characters split over several byte-level tokens, so token-by-token deltas are
# often empty (an incomplete character is held back) and coalescing has something to get wrong.
_AWKWARD_TEXT = "naïve café 世界 🙂🚀 Ωμέγα — ok\n\tdone"

OUTCOME = RequestOutcome(
    finish_reason=FinishReason.LENGTH,
    cached_tokens=0,
    completion_tokens=0,
    preemptions=0,
    admitted_time=None,
    first_token_time=None,
    finished_time=None,
    text="",
)


@pytest.fixture(scope="module")
def encoder(smollm2_dir) -> PromptEncoder:
    return PromptEncoder(smollm2_dir)


@pytest.fixture(scope="module")
def token_choices(encoder) -> list[int]:
    return sorted(set(encoder.encode_text(_AWKWARD_TEXT)))


@given(data=st.data())
def test_coalesced_deltas_carry_the_same_bytes_and_tokens_as_token_by_token_streaming(
    encoder, token_choices, data
):
    token_ids = data.draw(
        st.lists(st.sampled_from(token_choices) | st.integers(0, encoder.vocab_size - 1), min_size=1)
    )
    # Whether the consumer takes what is pending after each step: False means it fell behind.
    takes = data.draw(st.lists(st.booleans(), min_size=len(token_ids), max_size=len(token_ids)))
    detokenizer = encoder.new_detokenizer()
    per_token = [detokenizer.push([token]) for token in token_ids]

    stream = RequestStream("r0", arrival_time=0.0)
    chunks = []
    for token, text, take in zip(token_ids, per_token, takes):
        stream.push([token], text)
        if take:
            chunks.append(stream.take_pending())
    stream.push([], "", OUTCOME)
    chunks.append(stream.take_pending())

    assert "".join(c.text for c in chunks).encode() == "".join(per_token).encode()
    assert [t for c in chunks for t in c.token_ids] == token_ids
    # One message per take: a consumer that fell behind for k steps gets their k tokens at once.
    assert len(chunks) == sum(takes) + 1
    assert chunks[-1].end is OUTCOME and all(c.end is None for c in chunks[:-1])
    assert stream.outcome is OUTCOME and stream.take_pending() is None


def test_a_waiting_consumer_wakes_once_for_everything_pushed_meanwhile():
    async def scenario():
        stream = RequestStream("r0", arrival_time=0.0)
        taker = asyncio.create_task(stream.take())
        await asyncio.sleep(0)  # the consumer is now waiting
        for token in (11, 12, 13):
            stream.push([token], f"<{token}>")
        first = await taker
        stream.push([14], "<14>", OUTCOME)
        return first, await stream.take()

    first, last = asyncio.run(scenario())
    assert (first.token_ids, first.text, first.end) == ([11, 12, 13], "<11><12><13>", None)
    assert (last.token_ids, last.text, last.end) == ([14], "<14>", OUTCOME)


def test_a_failed_stream_ends_with_its_error_and_drops_what_was_not_taken():
    stream = RequestStream("r0", arrival_time=0.0)
    stream.push([1], "a")
    error = EngineStoppedError("the worker's engine process exited")
    stream.fail(error)
    stream.push([2], "b", OUTCOME)  # nothing follows an end
    chunk = stream.take_pending()
    assert (chunk.token_ids, chunk.text, chunk.end) == ([], "", error)
    assert stream.ended and stream.outcome is None and stream.take_pending() is None


@given(values=st.lists(st.lists(st.floats(0, 100, allow_nan=False), max_size=20), max_size=10))
def test_batch_histogram_exposes_what_a_per_value_histogram_would(values):
    buckets = (0.001, 0.01, 0.1, 1.0, 10.0)
    batched, per_value = CollectorRegistry(), CollectorRegistry()
    histogram = BatchHistogram("latency_seconds", "doc", buckets, batched)
    reference = Histogram("latency_seconds", "doc", buckets=buckets, registry=per_value)
    for batch in values:
        histogram.observe_many(batch)
        for value in batch:
            reference.observe(value)

    def samples(registry):
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    expected, got = samples(per_value), samples(batched)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9)
    assert b"latency_seconds_count" in generate_latest(batched)
