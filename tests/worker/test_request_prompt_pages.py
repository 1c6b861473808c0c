"""Request.prompt_pages: the prompt's full pages, made once, the same pages match_key cuts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from radixfair_engine.request import Request, SamplingConfig
from radixfair_engine.scheduler.waiting_tree import match_key


@given(prompt=st.lists(st.integers(0, 50), min_size=1, max_size=70), page_size=st.sampled_from([1, 4, 16]))
def test_prompt_pages_are_the_full_pages_and_match_key_is_all_but_the_last_tokens_page(prompt, page_size):
    request = Request("r", "c", prompt, SamplingConfig(max_tokens=1))

    pages = request.prompt_pages(page_size)

    assert [t for page in pages for t in page] == prompt[: len(prompt) - len(prompt) % page_size]
    assert all(len(page) == page_size for page in pages)
    key = match_key(request, page_size)
    assert [t for page in pages[: (len(prompt) - 1) // page_size] for t in page] == key
    # Made once per page size: asked again, the same object; another page size, its own pages.
    assert request.prompt_pages(page_size) is pages
    other = 2 if page_size != 2 else 4
    assert [t for page in request.prompt_pages(other) for t in page] == prompt[
        : len(prompt) - len(prompt) % other
    ]
