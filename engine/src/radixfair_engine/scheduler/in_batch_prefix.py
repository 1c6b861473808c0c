"""In-batch prefix sharing: one request computes a shared prefix nobody has cached, the others wait for it.

Requests that arrive together on a cold shared prefix all match nothing in the
radix cache, so every one admitted in that step would prefill the whole prefix
itself (measured: hit rate 0.44 at 4 concurrent requests against 0.78 one at a
time). The engine inserts a request's computed full pages into the cache after
every chunk (notes/DECISIONS.md "Engine"), so a request that waits until a
*leader* has computed the prefix then matches it.

The rule, one place for every prefix-ordering policy: a waiting request is
*held* while some leader will compute at least ``threshold_pages`` pages of its
prefix that the cache does not hold yet. Leaders are the running requests
still prefilling, plus those admitted earlier in the same step. A held request
is skipped, not refused: the policy's walk goes on past it, and it is neither
admitted nor charged. The hold ends by itself, so nothing starves on it:

- the leader's prefill inserts those pages, the request's cached match grows
  to within ``threshold_pages`` of what they share, and it is admissible;
- a leader that is preempted, finished or aborted is no longer running, so it
  no longer holds anyone (a new leader is chosen by the next admission).

A hold lasts at most one leader's prefill: ``ceil(prompt / max_batched_tokens)``
steps while that leader keeps its place.
"""

from __future__ import annotations

from collections.abc import Iterable

from radixfair_engine.request import Request, RequestStatus, page_chain
from radixfair_engine.scheduler.base import PrefixMatcher
from radixfair_engine.scheduler.waiting_tree import match_key


class InBatchPrefixHold:
    """Which waiting requests to hold back this step, given the leaders so far (one instance per step).

    Leaders' full pages are kept as the set of their page chains (``request.page_chain``: entry k
    stands for a sequence's first k + 1 pages), so the pages a candidate shares with some leader
    are found by bisecting its chain against that set: an unrelated request costs one set lookup, a
    related one O(log pages) lookups plus one cache match over the pages it shares. (It was a trie
    of page tuples, walked page by page: on a 1,024-token shared prefix, 64 tuple hashes a candidate
    a step.)
    """

    def __init__(self, cache: PrefixMatcher, threshold_pages: int, leaders: Iterable[Request]) -> None:
        self._cache = cache
        self._page_size = cache.page_size
        self._threshold = threshold_pages
        self._led: set[int] = set()
        self._pending = list(leaders) if threshold_pages > 0 else []

    def lead(self, request: Request) -> None:
        """``request`` was just admitted: it now computes its prefix for the others."""
        if self._threshold > 0:
            self._pending.append(request)

    def holds(self, request: Request) -> bool:
        """True when a leader will compute >= ``threshold_pages`` uncached pages of ``request``'s prefix."""
        threshold = self._threshold
        if threshold <= 0:
            return False
        self._add_pending()
        led = self._led
        if not led:
            return False
        p = self._page_size
        if request.output_ids:  # preempted: its key runs into its output
            chain = page_chain(match_key(request, p), p)
        else:  # match_key of a fresh request: its prompt's full pages but the one holding the last token
            chain = request.prompt_page_chain(p)[: (len(request.prompt_ids) - 1) // p]
        if len(chain) < threshold or chain[threshold - 1] not in led:
            return False
        shared = _shared_pages(chain, led, threshold)
        cached = self._cache.match_length(request.token_slice(0, shared * p)) // p
        return shared - cached >= threshold

    def _add_pending(self) -> None:
        p = self._page_size
        for leader in self._pending:
            if leader.status is not RequestStatus.RUNNING:
                continue  # preempted or finished earlier in this step: it computes nothing now
            # Every full page of its prompt ends up in the cache, the last one included.
            self._led.update(leader.prompt_page_chain(p))
        self._pending.clear()


def _shared_pages(chain: tuple[int, ...], led: set[int], known: int) -> int:
    """The most leading pages of ``chain`` some leader holds, given that it holds the first ``known``.

    Membership is monotone along a chain (a leader holding pages 0..k holds every shorter prefix), so
    the longest held prefix is found by bisection.
    """
    low, high = known, len(chain)  # chain[:low] held; chain[:high + 1] is past the end or not held
    while low < high:
        middle = (low + high + 1) // 2
        if chain[middle - 1] in led:
            low = middle
        else:
            high = middle - 1
    return low
