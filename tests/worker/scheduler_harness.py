"""Hand-built queues for scheduler order tests: requests, a real radix cache, a counting budget."""

from __future__ import annotations

from collections.abc import Sequence

from radixfair_engine.page_allocator import PageAllocator
from radixfair_engine.radix_cache import RadixCache
from radixfair_engine.request import Request, RequestStatus, SamplingConfig

PAGE = 4


def request(
    request_id: str,
    client: str,
    prompt: Sequence[int],
    arrival: float,
    weight: float = 1.0,
    max_tokens: int = 4,
) -> Request:
    return Request(
        request_id,
        client,
        list(prompt),
        SamplingConfig(max_tokens=max_tokens),
        weight=weight,
        arrival_time=arrival,
    )


def cache_holding(*prefixes: Sequence[int], num_pages: int = 64) -> RadixCache:
    """A real RadixCache with each prefix (a whole number of pages) inserted."""
    allocator = PageAllocator(num_pages)
    cache = RadixCache(allocator, PAGE)
    for prefix in prefixes:
        pages = allocator.allocate(len(prefix) // PAGE)
        cache.insert(list(prefix), pages)
        allocator.decref(pages)  # the tree keeps its own reference
    return cache


class CountingBudget:
    """Admits at most ``limit`` requests and records them in order.

    Test-only stand-in for the engine's per-step budget, used only in the
    pure order tests: the real AdmissionBudget is engine internals (pages,
    token chunks). Like the engine it sets the fields policies read after a
    successful ``try_admit``: the cached prefix (matched against the real
    cache, all but the last token), ``num_computed_tokens``,
    ``times_admitted`` and the status.
    """

    def __init__(self, cache: RadixCache, limit: int) -> None:
        self.cache = cache
        self.limit = limit
        self.admitted: list[str] = []

    def try_admit(self, request: Request) -> bool:
        if len(self.admitted) >= self.limit:
            return False
        matched = self.cache.match_length(request.fill_ids[:-1])
        if request.times_admitted == 0:
            request.num_cached_tokens = matched
        request.num_computed_tokens = matched
        request.times_admitted += 1
        request.status = RequestStatus.RUNNING
        self.admitted.append(request.request_id)
        return True

    def holds(self, request: Request) -> bool:
        return False  # order tests admit no leader that computes anything


def preempt(request: Request) -> None:
    """What the engine does to a running request it evicts: back to waiting, to be recomputed."""
    request.status = RequestStatus.WAITING
    request.num_computed_tokens = 0
    request.preemptions += 1


def finish(request: Request) -> None:
    request.status = RequestStatus.FINISHED
