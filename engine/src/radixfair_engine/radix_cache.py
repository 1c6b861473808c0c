"""Radix tree over token ids whose edges own KV pages, as in RadixAttention.

Every edge holds a whole number of pages, so a prefix is shared page by page.
Nodes carry a lock count: the number of running requests whose page tables
pass through them. Eviction removes unlocked leaves, least recently used
first, and gives their pages back to the allocator. A node locked by a
running request is never evicted.

A full cache is the steady state of a serving worker: every page a request
adds then comes from eviction. So eviction must not cost in proportion to
the tree. Candidates sit in a heap keyed by last access, pushed when a node
becomes an unlocked leaf; an entry whose node was touched, locked, grown or
evicted since is stale and is re-checked when it surfaces (lazy deletion),
and the heap is rebuilt when stale entries outnumber the nodes. An eviction
then costs O(log n) per page freed, amortised, where a scan of the tree
cost O(n) per call and made a full cache's decode steps ~15x slower.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from radixfair.prefix_hash import ROOT_HASH, chain_hash
from radixfair_engine.page_allocator import PageAllocator


@dataclass(eq=False)
class RadixNode:
    tokens: list[int]
    pages: list[int]
    # Chained prefix hash of each page on this edge (see radixfair.prefix_hash).
    page_hashes: list[int]
    parent: RadixNode | None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    lock_count: int = 0
    last_access: int = 0
    evicted: bool = False

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def last_hash(self) -> int:
        return self.page_hashes[-1] if self.page_hashes else ROOT_HASH


@dataclass(frozen=True)
class PrefixMatch:
    """The cached pages for the leading ``num_tokens`` tokens, ending at ``node``."""

    num_tokens: int
    pages: list[int]
    node: RadixNode


class RadixCache:
    """Prefix cache of KV pages keyed by token ids.

    The tree holds one allocator reference on each page it caches; callers
    hold their own references on the pages in their page tables.
    """

    def __init__(self, allocator: PageAllocator, page_size: int) -> None:
        self.allocator = allocator
        self.page_size = page_size
        self.root = RadixNode(tokens=[], pages=[], page_hashes=[], parent=None)
        self.root.lock_count = 1  # the root is never evicted
        self._clock = itertools.count(1)
        self._cached_pages = 0
        self._locked_pages = 0
        self._nodes = 0
        # (last_access, tie-break, node) of eviction candidates, some stale (see the module docstring).
        self._candidates: list[tuple[int, int, RadixNode]] = []
        self._order = itertools.count()
        # Work counters a test bounds: heap entries examined by evict(), tokens compared by walks.
        self.eviction_entries_examined = 0
        self.tokens_compared = 0

    # -- queries ---------------------------------------------------------

    @property
    def cached_pages(self) -> int:
        return self._cached_pages

    @property
    def evictable_pages(self) -> int:
        return self._cached_pages - self._locked_pages

    def match_length(self, token_ids: Sequence[int]) -> int:
        """Leading tokens of ``token_ids`` held in whole cached pages; changes nothing."""
        node, matched = self.root, 0
        usable = self._page_floor(len(token_ids))
        while matched < usable:
            child = node.children.get(self._page_key(token_ids, matched))
            if child is None:
                break
            same = self._common_pages(child.tokens, token_ids, matched, usable)
            matched += same * self.page_size
            if same * self.page_size < len(child.tokens):
                break
            node = child
        return matched

    def match_prefix(self, token_ids: Sequence[int]) -> PrefixMatch:
        """The longest cached page-aligned prefix; splits an edge where the match ends inside it."""
        return self._match_below(self.root, token_ids, next(self._clock))

    def _match_below(self, start: RadixNode, token_ids: Sequence[int], now: int) -> PrefixMatch:
        """``match_prefix`` of ``token_ids`` read as continuing the prefix that ends at ``start``."""
        node, matched, pages = start, 0, []
        usable = self._page_floor(len(token_ids))
        while matched < usable:
            child = node.children.get(self._page_key(token_ids, matched))
            if child is None:
                break
            same = self._common_pages(child.tokens, token_ids, matched, usable)
            if same * self.page_size < len(child.tokens):
                child = self._split(child, same)
            child.last_access = now
            pages.extend(child.pages)
            matched += len(child.tokens)
            node = child
        return PrefixMatch(num_tokens=matched, pages=pages, node=node)

    def digest(self, limit: int) -> list[int]:
        """Chained page hashes of cached prefixes, most recently used first, at most ``limit``."""
        nodes = sorted(self._iter_nodes(), key=lambda n: n.last_access, reverse=True)
        hashes: list[int] = []
        for node in nodes:
            hashes.extend(node.page_hashes)
            if len(hashes) >= limit:
                return hashes[:limit]
        return hashes

    # -- updates ---------------------------------------------------------

    def insert(self, token_ids: Sequence[int], pages: Sequence[int]) -> PrefixMatch:
        """Caches ``token_ids`` (whole pages) backed by ``pages``.

        Where the tree already holds a prefix, its own pages are kept and the
        returned match lists them: the caller should swap its duplicate pages
        for those. The tree takes a reference on every page it newly holds.
        """
        return self.insert_below(self.root, token_ids, pages)

    def insert_below(self, start: RadixNode, token_ids: Sequence[int], pages: Sequence[int]) -> PrefixMatch:
        """``insert`` of the prefix ending at ``start`` followed by ``token_ids``, walking only below it.

        ``start`` must be in the tree (a node a caller holds locked stays in it, and a split keeps a
        node's end where it was). The match returned covers ``token_ids`` alone. The prefix up to
        ``start`` counts as used now, as a walk from the root would have marked it. A running request
        caches its pages as they complete this way, at a cost in its new pages rather than its length.
        """
        if len(token_ids) % self.page_size or len(pages) != len(token_ids) // self.page_size:
            raise ValueError("insert takes whole pages: len(pages) * page_size == len(token_ids)")
        now = next(self._clock)
        ancestor = start
        while ancestor is not self.root:
            ancestor.last_access = now
            ancestor = ancestor.parent  # type: ignore[assignment]
        existing = self._match_below(start, token_ids, now)
        node = existing.node
        if existing.num_tokens < len(token_ids):
            start_page = existing.num_tokens // self.page_size
            new_pages = list(pages[start_page:])
            new_tokens = list(token_ids[existing.num_tokens :])
            hashes, previous = [], node.last_hash
            for i in range(0, len(new_tokens), self.page_size):
                previous = chain_hash(previous, new_tokens[i : i + self.page_size])
                hashes.append(previous)
            child = RadixNode(
                tokens=new_tokens,
                pages=new_pages,
                page_hashes=hashes,
                parent=node,
                last_access=next(self._clock),
            )
            node.children[self._page_key(new_tokens, 0)] = child
            self.allocator.incref(new_pages)
            self._cached_pages += len(new_pages)
            self._nodes += 1
            self._push_candidate(child)
            node = child
        return PrefixMatch(
            num_tokens=len(token_ids), pages=existing.pages + list(pages[len(existing.pages) :]), node=node
        )

    def lock(self, node: RadixNode) -> None:
        """Protects ``node`` and its ancestors from eviction."""
        while node is not self.root:
            if node.lock_count == 0:
                self._locked_pages += len(node.pages)
            node.lock_count += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: RadixNode) -> None:
        while node is not self.root:
            if node.lock_count <= 0:
                raise RuntimeError("unlock of an unlocked radix node")
            node.lock_count -= 1
            if node.lock_count == 0:
                self._locked_pages -= len(node.pages)
                if node.is_leaf:
                    self._push_candidate(node)
            node = node.parent  # type: ignore[assignment]

    def evict(self, num_pages: int) -> int:
        """Frees at least ``num_pages`` pages from unlocked leaves, LRU first; returns pages freed.

        Fewer when not enough pages are unlocked. Cost: O(log n) per heap entry examined, and the
        entries examined are the leaves freed plus stale entries, each examined once.
        """
        heap = self._candidates
        freed = 0
        while heap and freed < num_pages and self.evictable_pages > 0:
            key, _, leaf = heapq.heappop(heap)
            self.eviction_entries_examined += 1
            if leaf.evicted or not leaf.is_leaf or leaf.lock_count:
                continue  # pushed again when it next becomes an unlocked leaf
            if key != leaf.last_access:  # touched since it was pushed: back at its current place
                self._push_candidate(leaf)
                continue
            parent = leaf.parent
            assert parent is not None
            del parent.children[self._page_key(leaf.tokens, 0)]
            leaf.evicted = True
            self._nodes -= 1
            self.allocator.decref(leaf.pages)
            self._cached_pages -= len(leaf.pages)
            freed += len(leaf.pages)
            if parent is not self.root and parent.is_leaf and parent.lock_count == 0:
                self._push_candidate(parent)
        return freed

    def _push_candidate(self, node: RadixNode) -> None:
        heap = self._candidates
        if len(heap) > 2 * self._nodes + 64:
            # Mostly stale: one entry, at its current key, per node that is a candidate now. A node
            # touched since its push has only stale entries and must keep its place (O(heap),
            # amortised over the pushes since the last rebuild).
            current = {
                id(candidate): (candidate.last_access, order, candidate)
                for _, order, candidate in heap
                if not candidate.evicted and candidate.is_leaf and not candidate.lock_count
            }
            heap[:] = current.values()
            heapq.heapify(heap)
        heapq.heappush(heap, (node.last_access, next(self._order), node))

    # -- internals -------------------------------------------------------

    def _split(self, node: RadixNode, keep_pages: int) -> RadixNode:
        """Cuts ``node``'s edge after ``keep_pages`` pages; returns the new upper half."""
        cut = keep_pages * self.page_size
        parent = node.parent
        assert parent is not None
        upper = RadixNode(
            tokens=node.tokens[:cut],
            pages=node.pages[:keep_pages],
            page_hashes=node.page_hashes[:keep_pages],
            parent=parent,
            lock_count=node.lock_count,
            last_access=node.last_access,
        )
        parent.children[self._page_key(upper.tokens, 0)] = upper
        self._nodes += 1
        node.tokens = node.tokens[cut:]
        node.pages = node.pages[keep_pages:]
        node.page_hashes = node.page_hashes[keep_pages:]
        node.parent = upper
        upper.children[self._page_key(node.tokens, 0)] = node
        return upper

    def _common_pages(self, edge: list[int], token_ids: Sequence[int], offset: int, usable: int) -> int:
        limit = min(len(edge), usable - offset)  # a whole number of pages
        self.tokens_compared += limit
        if edge[:limit] == list(token_ids[offset : offset + limit]):  # the common case, in one compare
            return limit // self.page_size
        pages = 0
        p = self.page_size
        while pages * p < limit and edge[pages * p : (pages + 1) * p] == list(
            token_ids[offset + pages * p : offset + (pages + 1) * p]
        ):
            pages += 1
        return pages

    def _page_key(self, token_ids: Sequence[int], offset: int) -> tuple[int, ...]:
        return tuple(token_ids[offset : offset + self.page_size])

    def _page_floor(self, length: int) -> int:
        return length - length % self.page_size

    def _iter_nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
