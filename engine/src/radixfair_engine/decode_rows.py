"""Which row of the decode batch each running request takes: a request keeps its row while it runs.

A decode step replays a CUDA graph over staged per-row buffers, and the host rewrites a row's
page-table entries only when another request takes that row (``cuda_graph_runner``: one numpy
write per changed row, from the request's page list). Ordered like the running list, every row
behind a request that leaves moves up one; under a closed loop of equal-length requests the oldest
finish first, from the front, so nearly every row moved at nearly every step, and a 1,088-token
prompt's row is 68 pages long (shared prefixes make long rows). Here a request that leaves hands its
row to the last one instead (swap-remove), so a step rewrites the rows of the requests that left
and joined, not the whole batch.

Admission order is kept beside the rows (``admission_order``): prefill chunks are still scheduled
oldest first.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from radixfair_engine.request import Request


class DecodeRows:
    """The running requests in decode-row order; O(1) to add and to remove."""

    def __init__(self) -> None:
        self._rows: list[Request] = []
        # id(request) -> (its row, its admission number)
        self._where: dict[int, tuple[int, int]] = {}
        self._admissions = itertools.count()

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._rows)

    def snapshot(self) -> list[Request]:
        """The rows now, as a list the caller may iterate while requests leave."""
        return list(self._rows)

    def add(self, request: Request) -> None:
        """Gives a newly running request the next row."""
        self._where[id(request)] = (len(self._rows), next(self._admissions))
        self._rows.append(request)

    def remove(self, request: Request) -> None:
        """Frees ``request``'s row, if it still has one; the last row's request takes it.

        The engine frees it as soon as a request will not decode again (its final token is in
        flight), not only when it finishes: a request left out of a step in the middle of the rows
        would move every row behind it for that step.
        """
        where = self._where.pop(id(request), None)
        if where is None:
            return
        row = where[0]
        last = self._rows.pop()
        if last is not request:
            self._rows[row] = last
            self._where[id(last)] = (row, self._where[id(last)][1])

    def admission_order(self, request: Request) -> int:
        """A number that grows with each admission: sort by it for oldest first (rowed requests)."""
        return self._where[id(request)][1]
