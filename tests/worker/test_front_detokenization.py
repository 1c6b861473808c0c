"""Text made by the serving front is the text the engine would have made, byte for byte.

A request with no stop strings is detokenized by its RequestStream on the
front, from the ids of each engine update. Whatever the grouping of ids
into updates (coalesced batches) and whatever ends it, the streamed text
equals the result's text and the engine's own TextStream text.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radixfair.errors import RequestFailedError
from radixfair.tokenization import PromptEncoder
from radixfair_engine.request import FinishReason
from radixfair_engine.text_stream import TextStream
from radixfair_worker.engine_protocol import RequestOutcome
from radixfair_worker.request_stream import RequestStream

# Multi-byte characters split over byte-level tokens: an incomplete character is held back.
_AWKWARD_TEXT = "naïve café 世界 🙂🚀 Ωμέγα — ok\n\tdone"

OUTCOME = RequestOutcome(FinishReason.LENGTH, 0, 0, 0, None, None, None, text="")


@pytest.fixture(scope="module")
def encoder(smollm2_dir) -> PromptEncoder:
    return PromptEncoder(smollm2_dir)


@pytest.fixture(scope="module")
def token_choices(encoder) -> list[int]:
    return sorted(set(encoder.encode_text(_AWKWARD_TEXT)))


def engine_text(encoder: PromptEncoder, token_ids: list[int], stop_token: bool) -> str:
    """What the engine's OutputProcessor makes: token by token, the stop token never pushed."""
    stream = TextStream(encoder.new_detokenizer(), ())
    text = "".join(stream.push([t])[0] for t in (token_ids[:-1] if stop_token else token_ids))
    text += stream.finish()
    assert text == stream.text
    return text


@given(data=st.data())
def test_front_text_of_any_update_grouping_equals_the_engines_text_and_the_results(
    encoder, token_choices, data
):
    token_ids = data.draw(
        st.lists(st.sampled_from(token_choices) | st.integers(0, encoder.vocab_size - 1), min_size=1)
    )
    stop_token = data.draw(st.booleans(), label="ends on a stop token or EOS")
    # Cut points: which ids arrive together in one update (the engine coalesces batches).
    cut_points = st.integers(1, len(token_ids) - 1) if len(token_ids) > 1 else st.nothing()
    cuts = sorted(data.draw(st.sets(cut_points), label="cuts"))
    groups = [token_ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(token_ids)])]
    end = dataclasses.replace(OUTCOME, finish_reason=FinishReason.STOP if stop_token else FinishReason.LENGTH)

    stream = RequestStream("r0", 0.0, text=TextStream(encoder.new_detokenizer(), ()))
    for group in groups[:-1]:
        assert stream.push(group, "") is None
    assert stream.push(groups[-1], "", end) is not None
    chunk = stream.take_pending()

    expected = engine_text(encoder, token_ids, stop_token)
    assert chunk.token_ids == token_ids
    assert chunk.text.encode() == expected.encode()
    assert isinstance(chunk.end, RequestOutcome) and chunk.end.text == expected
    assert chunk.end.finish_reason is end.finish_reason


def test_a_request_whose_text_fails_on_the_front_ends_with_a_request_scoped_error(encoder):
    stream = RequestStream("r0", 0.0, text=TextStream(encoder.new_detokenizer(), ()))
    assert stream.push([100, 200], "") is None
    recorded = stream.push([-5], "")  # an id the real tokenizer cannot decode
    assert isinstance(recorded, RequestFailedError) and "detokenizing" in str(recorded)
    first = stream.take_pending()
    assert first is not None and first.end is recorded and first.token_ids == []
    assert stream.push([3], "", OUTCOME) is None  # nothing follows an end


@given(data=st.data())
def test_a_text_stream_without_stop_strings_streams_every_character_as_soon_as_it_is_whole(
    encoder, token_choices, data
):
    token_ids = data.draw(st.lists(st.sampled_from(token_choices) | st.integers(0, encoder.vocab_size - 1)))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(token_ids))), label="cuts"))
    groups = [token_ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(token_ids)])]
    stream, reference = TextStream(encoder.new_detokenizer(), ()), encoder.new_detokenizer()

    deltas = [stream.push(group) for group in groups]

    # Nothing is held back: each push streams what the detokenizer made of it, and no stop is found.
    assert deltas == [(reference.push(group), False) for group in groups]
    assert stream.finish() == "" and stream.text == reference.text == "".join(d for d, _ in deltas)
