"""IncrementalDetokenizer: streamed deltas add up to the full decode, whatever the grouping of ids.

The serving front and the engine both build a stream's text from these deltas, and the result's text
is their concatenation, so the invariant is checked against a whole-sequence decode with the real
SmolLM2 tokenizer (byte-level BPE: one character can span several tokens).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair.tokenization import PromptEncoder

# Multi-byte characters split over byte-level tokens, and the chat template's special tokens.
_AWKWARD_TEXT = "naïve café 世界 🙂🚀 Ωμέγα — ok\n\tdone <|im_start|>user\n"


@pytest.fixture(scope="module")
def encoder(smollm2_dir) -> PromptEncoder:
    return PromptEncoder(smollm2_dir)


@pytest.fixture(scope="module")
def token_choices(encoder) -> list[int]:
    return sorted(set(encoder.encode_text(_AWKWARD_TEXT)))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_deltas_add_up_to_the_full_decode_for_any_grouping(encoder, token_choices, data):
    token_ids = data.draw(
        st.lists(st.sampled_from(token_choices) | st.integers(0, encoder.vocab_size - 1), min_size=1)
    )
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(token_ids) - 1)))))
    groups = [token_ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(token_ids)]) if a < b]
    detokenizer = encoder.new_detokenizer()
    deltas = [detokenizer.push(group) for group in groups]
    streamed = "".join(deltas)
    assert streamed == detokenizer.text
    full = encoder.decode(token_ids)
    if full.endswith("\ufffd"):  # an unfinished character is held back, never emitted in halves
        assert full.startswith(streamed)
    else:
        assert streamed == full


def test_a_character_split_over_tokens_is_emitted_once_whole(encoder):
    ids = encoder.encode_text("🙂")
    assert len(ids) > 1  # byte-level BPE splits the emoji's four bytes
    detokenizer = encoder.new_detokenizer()
    deltas = [detokenizer.push([i]) for i in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "🙂"
