"""Orders of the waiting queue that several policies share: arrival order and longest prefix match."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from radixfair_worker.request import Request
from radixfair_worker.scheduler.base import PrefixMatcher
from radixfair_worker.scheduler.waiting_tree import WaitingTree, prefix_order


def arrival_order(waiting: Sequence[Request]) -> list[Request]:
    """Oldest first; the sort is stable, so equal arrival times keep queue order."""
    return sorted(waiting, key=lambda r: r.arrival_time)


class PrefixMatchQueue:
    """The waiting queue in longest-prefix-match order, ties by arrival, at any depth.

    Keeps a ``WaitingTree`` in step with the ``waiting`` list it is handed
    each step (a set difference: requests that joined are added, those that
    left are dropped), so it needs no callbacks and cannot drift from the
    engine's queue. A policy tells it which requests it admitted, because an
    admitted request can be preempted and back in the queue, with more
    ``fill_ids``, before the next step's difference would notice it left.
    """

    def __init__(self) -> None:
        self._tree: WaitingTree | None = None

    def ordered(self, waiting: Sequence[Request], cache: PrefixMatcher) -> Iterator[tuple[int, Request]]:
        """``(cached prefix length, request)`` pairs, longest first; lazy, so stopping early is cheap."""
        tree = self._sync(waiting, cache.page_size)
        return prefix_order(tree.groups(cache.root), tree.joined)

    def admitted(self, requests: Iterable[Request]) -> None:
        if self._tree is not None:
            for request in requests:
                self._tree.discard(request)

    def _sync(self, waiting: Sequence[Request], page_size: int) -> WaitingTree:
        if self._tree is None or self._tree.page_size != page_size:
            self._tree = WaitingTree(page_size)
        tree, current = self._tree, set(waiting)
        if current != tree.requests():
            for gone in [r for r in tree.requests() if r not in current]:
                tree.discard(gone)
            for request in waiting:
                if request not in tree:
                    tree.add(request)
        return tree
