"""Reference-counted allocation of KV-cache pages."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class OutOfPagesError(RuntimeError):
    pass


class PageAllocator:
    """Hands out page ids 0..num_pages-1 and frees a page when its last holder lets go.

    Holders are running requests (one reference per page in their page
    table) and the radix tree (one reference per page it caches). A page is
    back on the free list exactly when its count drops to zero, so a page is
    never handed out twice while anyone still reads it.
    """

    def __init__(self, num_pages: int) -> None:
        if num_pages <= 0:
            raise ValueError("num_pages must be positive")
        self.num_pages = num_pages
        self._free: deque[int] = deque(range(num_pages))
        self._refcount = [0] * num_pages

    @property
    def num_free(self) -> int:
        return len(self._free)

    def refcount(self, page: int) -> int:
        return self._refcount[page]

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise OutOfPagesError(f"asked for {count} pages, {len(self._free)} free")
        pages = [self._free.popleft() for _ in range(count)]
        for page in pages:
            self._refcount[page] = 1
        return pages

    def incref(self, pages: Iterable[int]) -> None:
        for page in pages:
            if self._refcount[page] <= 0:
                raise RuntimeError(f"incref of free page {page}")
            self._refcount[page] += 1

    def decref(self, pages: Iterable[int]) -> None:
        for page in pages:
            count = self._refcount[page]
            if count <= 0:
                raise RuntimeError(f"decref of free page {page}")
            self._refcount[page] = count - 1
            if count == 1:
                self._free.append(page)
