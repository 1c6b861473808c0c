"""The streamed text is the result text: the concatenated deltas equal ``final_text``.

Text that may be the start of a stop string is held back from the stream; it
must still reach the stream whatever ends the generation: a stop string, a
stop token id or EOS, max_tokens, the context window, or a cancel, with or
without overlap scheduling, and whatever else shares the batch.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from worker.engine_harness import greedy, make_stack, run_to_completion

from radixfair_engine.engine import Engine
from radixfair_engine.request import FinishReason, Request, SamplingConfig

PROMPT = [100, 200, 300, 400]
MAX_TOKENS = 12
LONG_STOP = "@" * 20  # never generated, so up to 19 characters are always held back


@pytest.fixture(scope="module")
def stacks(tiny_model_dir):
    settings_ = {"num_pages": 128, "page_size": 4, "max_context_tokens": 32}
    return {
        "sync": make_stack(tiny_model_dir, overlap_schedule=False, **settings_),
        "overlap": make_stack(tiny_model_dir, overlap_schedule=True, **settings_),
    }


@pytest.fixture(scope="module")
def reference(stacks) -> Request:
    """The greedy continuation of PROMPT: its tokens and text are where stops are drawn from."""
    request = greedy(PROMPT, MAX_TOKENS, "reference", ignore_eos=True)
    run_to_completion(stacks["sync"].engine, [request])
    assert len(request.final_text) > 20, "the tiny model's text is too short to draw stops from"
    return request


def streamed_text(engine: Engine, requests: list[Request], cancel_at: dict[str, int]) -> dict[str, str]:
    """Runs the requests, cancelling each named one at its step; returns each one's concatenated deltas."""
    text = {r.request_id: "" for r in requests}
    for request in requests:
        engine.submit(request)
    for step in range(1_000):
        if not engine.has_work():
            return text
        for request_id, at in cancel_at.items():
            if at == step:
                engine.abort(request_id)
        for output in engine.step():
            assert output.error is None
            text[output.request.request_id] += output.text_delta
    raise AssertionError("engine still busy after 1000 steps")


def test_held_back_text_is_streamed_when_a_stop_token_ends_the_generation(stacks, reference):
    # The case: a long stop string holds text back, then a stop id (like EOS) ends it.
    stop_id = reference.output_ids[8]
    request = greedy(
        PROMPT, MAX_TOKENS, uuid.uuid4().hex, stop_strings=(LONG_STOP,), stop_token_ids=(stop_id,)
    )

    text = streamed_text(stacks["sync"].engine, [request], {})

    assert request.finish_reason is FinishReason.STOP
    assert request.final_text and text[request.request_id] == request.final_text
    assert reference.final_text.startswith(request.final_text)


@st.composite
def sampling(draw: st.DrawFn, reference: Request) -> SamplingConfig:
    ref_text = reference.final_text
    start = draw(st.integers(0, len(ref_text) - 1))
    from_text = ref_text[start : start + draw(st.integers(1, 6))]
    stops = draw(
        st.lists(st.sampled_from([from_text, LONG_STOP, " ", "a"]) | st.text(min_size=1), max_size=3)
    )
    stop_ids = draw(st.lists(st.sampled_from(reference.output_ids) | st.integers(0, 49151), max_size=2))
    sampled = draw(st.booleans())
    return SamplingConfig(
        max_tokens=draw(st.integers(1, MAX_TOKENS)),
        temperature=0.8 if sampled else 0.0,
        seed=draw(st.integers(0, 2**32)) if sampled else None,
        stop_token_ids=tuple(stop_ids),
        stop_strings=tuple(stops),
        ignore_eos=draw(st.booleans()),
    )


@given(data=st.data())
@settings(max_examples=20)
def test_concatenated_deltas_equal_the_final_text_for_every_finish(stacks, reference, data):
    engine = stacks[data.draw(st.sampled_from(["sync", "overlap"]), label="engine")].engine
    configs = data.draw(st.lists(sampling(reference), min_size=1, max_size=3), label="requests")
    # Prompts differ in length so requests finish at different steps; PROMPT itself hits the reference.
    requests = [
        Request(uuid.uuid4().hex, "client", PROMPT + [500] * i, config) for i, config in enumerate(configs)
    ]
    cancels = data.draw(
        st.lists(st.integers(0, MAX_TOKENS) | st.none(), min_size=3, max_size=3), label="cancel"
    )
    cancel_at = {r.request_id: at for r, at in zip(requests, cancels) if at is not None}

    text = streamed_text(engine, requests, cancel_at)

    for request in requests:
        assert request.is_finished
        assert text[request.request_id] == request.final_text
        # The cut is at the earliest stop string, so none survives in the text.
        assert not any(stop in request.final_text for stop in request.sampling.stop_strings)
    assert not engine.running and not engine.waiting
