"""Binding requests to KV pages: the engine's block manager.

A running request's ``page_table`` holds the pages backing its ``fill_ids``,
one allocator reference per page, and ``locked_node`` pins the part of it
the radix cache shares against eviction. This module is the only place
those change: a request's cached prefix is bound at admission, its table
grows as it decodes, its completed pages are inserted into the cache as
their ids become known, and everything is let go when it leaves. Whom to
preempt when pages run out is the engine's decision, not this module's.

A table list is only ever extended in place; any other change replaces the
list, so holding the list and its length tells a reader (the decode graphs'
staging) whether the ids it copied are still current.
"""

from __future__ import annotations

from radixfair_engine.page_allocator import PageAllocator
from radixfair_engine.radix_cache import RadixCache
from radixfair_engine.request import Request


class PageBinder:
    """Moves KV pages between the pool, the radix cache and requests' page tables.

    Invariant: every page is referenced once per request table it is in and once more if the
    cache holds it, so ``allocator.num_free + cache.cached_pages == num_pages`` whenever no
    request runs.
    """

    def __init__(self, num_pages: int, page_size: int) -> None:
        self.page_size = page_size
        self.allocator = PageAllocator(num_pages)
        self.cache = RadixCache(self.allocator, page_size)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def missing_pages(self, request: Request, num_tokens: int) -> int:
        """Pages ``request`` must add to hold ``num_tokens`` tokens."""
        return self.pages_for(num_tokens) - len(request.page_table)

    def reserve(self, count: int) -> bool:
        """True when ``count`` pages are free, evicting unlocked cache leaves if needed."""
        shortfall = count - self.allocator.num_free
        if shortfall > 0:
            self.cache.evict(shortfall)
        return self.allocator.num_free >= count

    def extend(self, request: Request, count: int) -> None:
        """Appends ``count`` fresh pages to the request's table (``reserve`` them first)."""
        request.page_table.extend(self.allocator.allocate(count))

    def bind_prefix(self, request: Request) -> int | None:
        """Gives a waiting request its cached prefix and fresh pages for the rest of its fill ids.

        Returns the number of tokens the cache already holds (its K/V need no computing), or
        None, with nothing changed, when the pages do not fit.
        """
        fill = request.fill_ids
        # Match all but the last token: its logits are needed, so it is always computed.
        match = self.cache.match_prefix(fill[:-1])
        self.cache.lock(match.node)
        needed = self.pages_for(len(fill)) - len(match.pages)
        if not self.reserve(needed):
            self.cache.unlock(match.node)
            return None
        self.allocator.incref(match.pages)
        request.page_table = match.pages + self.allocator.allocate(needed)
        request.locked_node = match.node
        request.num_computed_tokens = request.num_inserted_tokens = match.num_tokens
        return match.num_tokens

    def cache_computed(self, request: Request) -> None:
        """Inserts the request's newly completed full pages of known ids into the radix tree."""
        # Runs twice per running request per step: the common "no page completed" exit reads fields
        # directly. num_inserted_tokens is always a whole number of pages.
        known = len(request.prompt_ids) + len(request.output_ids) - request.pending_tokens
        computed = min(request.num_computed_tokens, known)
        if computed < request.num_inserted_tokens + self.page_size:
            return
        full = computed - computed % self.page_size
        # Only the pages completed since the last call: the tree already holds the rest, below the
        # node this request keeps locked (walking from the root cost O(length) per completed page).
        done = request.num_inserted_tokens
        first_page = done // self.page_size
        match = self.cache.insert_below(
            request.locked_node,
            request.token_slice(done, full),
            request.page_table[first_page : full // self.page_size],
        )
        for index, page in enumerate(match.pages, start=first_page):
            if request.page_table[index] != page:
                # Another request cached the same tokens first: use its page, free ours. The table
                # is replaced, never edited in place: a list that changes identity only by growing
                # is how the decode graphs' staging knows a row is unchanged.
                self.allocator.incref([page])
                self.allocator.decref([request.page_table[index]])
                table = list(request.page_table)
                table[index] = page
                request.page_table = table
        self.cache.lock(match.node)
        self.cache.unlock(request.locked_node)
        request.locked_node = match.node
        request.num_inserted_tokens = full

    def release(self, request: Request) -> None:
        """Caches what the request computed, then lets go of all its pages and its lock."""
        self.cache_computed(request)
        self.cache.unlock(request.locked_node)
        self.allocator.decref(request.page_table)
        request.page_table = []
        request.locked_node = None
