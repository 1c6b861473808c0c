"""Request.prompt_page_chain and page_chain: one int per full page, equal exactly where the prefixes are."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from radixfair_engine.request import Request, SamplingConfig, page_chain
from radixfair_engine.scheduler.waiting_tree import match_key

# A small alphabet, so two drawn prompts often share leading pages.
tokens = st.lists(st.integers(0, 3), min_size=1, max_size=70)


@given(prompt=tokens, page_size=st.sampled_from([1, 4, 16]))
def test_the_prompt_chain_has_one_entry_per_full_page_and_is_made_once(prompt, page_size):
    request = Request("r", "c", prompt, SamplingConfig(max_tokens=1))

    chain = request.prompt_page_chain(page_size)

    assert len(chain) == len(prompt) // page_size
    assert request.prompt_page_chain(page_size) is chain
    # match_key (all but the page holding the last token) is a prefix of the prompt: its chain is too.
    key = match_key(request, page_size)
    assert page_chain(key, page_size) == chain[: (len(prompt) - 1) // page_size]
    other = 2 if page_size != 2 else 4
    assert request.prompt_page_chain(other) == page_chain(prompt, other)


@given(a=tokens, b=tokens, page_size=st.sampled_from([1, 2, 4]))
def test_entries_are_equal_exactly_where_the_leading_pages_are(a, b, page_size):
    chain_a, chain_b = page_chain(a, page_size), page_chain(b, page_size)

    for k in range(min(len(chain_a), len(chain_b))):
        same_pages = a[: (k + 1) * page_size] == b[: (k + 1) * page_size]
        assert (chain_a[k] == chain_b[k]) == same_pages
