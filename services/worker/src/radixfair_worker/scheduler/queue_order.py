"""Orders of the waiting queue that several policies share: arrival order and longest prefix match."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from radixfair_worker.request import Request
from radixfair_worker.scheduler.base import PrefixMatcher

# Above this many waiting requests, prefix-match ordering falls back to arrival
# order: every match is a walk down the radix tree, and on a very long queue the
# walks cost more than the cache hits they find (SGLang makes the same trade).
LPM_MAX_SORTED_QUEUE = 128


def arrival_order(waiting: Sequence[Request]) -> list[Request]:
    """Oldest first; the sort is stable, so equal arrival times keep queue order."""
    return sorted(waiting, key=lambda r: r.arrival_time)


def prefix_match_order(
    waiting: Sequence[Request],
    cache: PrefixMatcher,
    bonus: Callable[[Request], float] | None = None,
    max_sorted: int = LPM_MAX_SORTED_QUEUE,
) -> list[Request]:
    """Longest cached prefix of ``fill_ids`` first, ties by arrival.

    ``bonus`` adds to a request's match length (in tokens) before sorting;
    LPM-with-aging uses it for the wait-time term.
    """
    if len(waiting) > max_sorted:
        return arrival_order(waiting)
    priority = {r.request_id: cache.match_length(r.fill_ids) + (bonus(r) if bonus else 0.0) for r in waiting}
    return sorted(waiting, key=lambda r: (-priority[r.request_id], r.arrival_time))
