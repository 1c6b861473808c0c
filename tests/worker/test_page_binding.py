"""PageBinder, the engine's block manager: pages are never shared with the wrong tokens, never leaked.

Requests over a tiny alphabet (so prefixes are shared) are bound, grown,
cached and released in a random interleaving. What each page "holds" is
modelled as the tokens its request wrote there; a cached prefix bound to a
later request must hold exactly that request's tokens.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair_engine.page_binding import PageBinder
from radixfair_engine.request import Request, SamplingConfig

PAGE_SIZE = 2
NUM_PAGES = 24


def write_pages(binder: PageBinder, request: Request, written: dict[int, tuple[int, ...]]) -> None:
    """The K/V every computed token of ``request`` wrote, page by page (a cached page is never rewritten)."""
    fill = request.fill_ids
    for index, page in enumerate(request.page_table):
        tokens = tuple(fill[index * PAGE_SIZE : (index + 1) * PAGE_SIZE])
        if index * PAGE_SIZE < request.num_inserted_tokens:
            assert written[page] == tokens, f"page {page} is shared but holds other tokens"
        elif tokens:
            written[page] = tokens


def only_grows(change, request: Request) -> None:  # noqa: ANN001
    """Applies ``change`` to the request's table: the same list may only have grown; any other
    change must come as a new list (the decode graphs' staging skips a row whose list and length
    it has seen, so an edit in place would leave it reading a freed page)."""
    table, before = request.page_table, list(request.page_table)
    change(request)
    if request.page_table is table:
        assert table[: len(before)] == before, "a page table was edited in place"


@given(
    prompts=st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=9), min_size=1, max_size=8),
    growth=st.lists(st.integers(0, 4), min_size=8, max_size=8),
    order=st.permutations(range(8)),
)
@settings(max_examples=200)
def test_bound_prefixes_hold_the_requests_tokens_and_every_page_comes_back(prompts, growth, order):
    binder = PageBinder(NUM_PAGES, PAGE_SIZE)
    written: dict[int, tuple[int, ...]] = {}
    requests = [Request(f"r{i}", "c", p, SamplingConfig(max_tokens=8)) for i, p in enumerate(prompts)]
    running: list[Request] = []
    for request, extra in zip(requests, growth):
        cached = binder.bind_prefix(request)
        if cached is None:  # the pool is full of running requests' pages; nothing changed
            assert request.page_table == [] and request.locked_node is None
            continue
        assert cached % PAGE_SIZE == 0 and cached < request.num_tokens
        assert binder.cache.match_length(request.fill_ids[:-1]) == cached
        # Its whole fill is computed, then it decodes ``extra`` tokens, pages growing as needed.
        request.num_computed_tokens = request.num_tokens
        write_pages(binder, request, written)
        only_grows(binder.cache_computed, request)
        for token in range(extra):
            missing = binder.missing_pages(request, request.num_tokens + 1)
            if missing > 0 and not binder.reserve(missing):
                break
            if missing > 0:
                only_grows(lambda r, count=missing: binder.extend(r, count), request)
            request.output_ids.append(token % 3)
            request.num_computed_tokens = request.num_tokens
            write_pages(binder, request, written)
            only_grows(binder.cache_computed, request)
        running.append(request)

    for index in order:  # requests leave in any order
        if index < len(running):
            binder.release(running[index])

    allocator = binder.allocator
    assert allocator.num_free + binder.cache.cached_pages == NUM_PAGES
    binder.cache.evict(NUM_PAGES)
    assert allocator.num_free == NUM_PAGES
    assert all(allocator.refcount(page) == 0 for page in range(NUM_PAGES))


def test_caching_a_decoded_page_costs_the_page_not_the_sequence():
    """A running request caches each page as it completes. The walk that does it starts below the
    node the request holds, so a page completed after a 4,096-token prompt compares about one page
    of tokens, where a walk from the root compared the whole sequence every time."""
    page, prompt_pages, decoded_pages = 16, 256, 32
    binder = PageBinder(prompt_pages + decoded_pages + 4, page)
    request = Request("r", "c", list(range(prompt_pages * page)), SamplingConfig(max_tokens=10_000))
    assert binder.bind_prefix(request) == 0
    request.num_computed_tokens = request.num_tokens
    binder.cache_computed(request)  # the prompt's pages go into the tree
    assert binder.cache.cached_pages == prompt_pages
    before = binder.cache.tokens_compared
    for step in range(decoded_pages * page):
        if binder.missing_pages(request, request.num_tokens + 1):
            assert binder.reserve(1)
            binder.extend(request, 1)
        request.output_ids.append(7 + step % 5)
        request.num_computed_tokens = request.num_tokens
        binder.cache_computed(request)
    assert binder.cache.cached_pages == prompt_pages + decoded_pages
    assert binder.cache.tokens_compared - before <= 2 * decoded_pages * page
    # The tree holds exactly the request's tokens, page for page.
    full = request.num_tokens - request.num_tokens % page
    assert binder.cache.match_length(request.fill_ids[:full]) == full
    assert binder.cache.match_prefix(request.fill_ids[:full]).pages == request.page_table[: full // page]
    binder.release(request)
    assert binder.allocator.num_free + binder.cache.cached_pages == binder.allocator.num_pages
