"""Orders of the waiting queue that several policies share: arrival order and longest prefix match."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from radixfair_engine.request import Request, RequestStatus
from radixfair_engine.scheduler.base import PrefixMatcher
from radixfair_engine.scheduler.waiting_tree import WaitingTree, prefix_order


def arrival_order(waiting: Sequence[Request]) -> list[Request]:
    """Oldest first; the sort is stable, so equal arrival times keep queue order."""
    return sorted(waiting, key=lambda r: r.arrival_time)


class PrefixMatchQueue:
    """The waiting queue in longest-prefix-match order, ties by arrival, at any depth.

    Follows the queue through the policy callbacks (``joined`` on arrival,
    ``left`` on a finish or cancel, ``admitted`` after each step), so a step
    costs no pass over the whole queue. Should the ``waiting`` list it is
    handed ever differ in length from what the callbacks said, it rebuilds
    its view from that list (set differences): the engine's queue is the
    truth. Requests no longer WAITING are never listed.
    """

    def __init__(self) -> None:
        self._members: dict[Request, None] = {}  # join order
        self._tree: WaitingTree | None = None

    def __contains__(self, request: Request) -> bool:
        return request in self._members

    def joined(self, request: Request) -> None:
        """``request`` entered the queue, new or back after a preemption (with more ``fill_ids``)."""
        self._members.pop(request, None)
        self._members[request] = None
        if self._tree is not None:
            self._tree.add(request)

    def left(self, request: Request) -> None:
        self._members.pop(request, None)
        if self._tree is not None:
            self._tree.discard(request)

    def admitted(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.left(request)

    def ordered(self, waiting: Sequence[Request], cache: PrefixMatcher) -> Iterator[tuple[int, Request]]:
        """``(cached prefix length, request)`` pairs, longest first; lazy, so stopping early is cheap."""
        if len(waiting) != len(self._members):
            self._resync(waiting)
        if self._tree is None or self._tree.page_size != cache.page_size:
            self._tree = WaitingTree(cache.page_size)
            for request in self._members:
                self._tree.add(request)
        tree = self._tree
        return (
            (length, request)
            for length, request in prefix_order(tree.groups(cache.root), tree.joined)
            if request.status is RequestStatus.WAITING
        )

    def _resync(self, waiting: Sequence[Request]) -> None:
        current = set(waiting)
        for gone in self._members.keys() - current:
            self.left(gone)
        joined = current - self._members.keys()
        # In queue order, so that equal arrival times keep the order the engine queued them in.
        for request in [r for r in waiting if r in joined]:
            self.joined(request)
