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

The digest a worker publishes for routers (page hashes, most recently used
first) must not cost in proportion to the tree either: the engine process
builds it every quarter second on the serving path, and sorting every node by
last access took ~6.5% of that process's samples on a busy H200 host. The
cache keeps a recency list of its nodes, least recently used first: touching
a node moves it to the end, so the list stays sorted by last access, and a
digest reads from the end until it has ``limit`` hashes. ``_touch``,
``_touch_path``, ``_add_node`` and ``_remove_leaf`` are the only writers of
a node's access time and of the tree's membership, so no path can leave the
list out of step with the tree.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
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
    # Clock tick of the last match or insert through this node. Written only by RadixCache._touch, which
    # also moves the node in the cache's recency list (read through ``last_access``).
    _last_access: int = 0
    evicted: bool = False

    @property
    def last_access(self) -> int:
        return self._last_access

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
        # Every node but the root, least recently used first (see the module docstring). An OrderedDict
        # moves a node to the end in O(1) and is walked from the end without copying.
        self._recency: OrderedDict[RadixNode, None] = OrderedDict()
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

    @property
    def _nodes(self) -> int:
        """Nodes in the tree, the root aside."""
        return len(self._recency)

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
                child = self._split(child, same, now)
            else:
                self._touch(child, now)
            pages.extend(child.pages)
            matched += len(child.tokens)
            node = child
        return PrefixMatch(num_tokens=matched, pages=pages, node=node)

    def digest(self, limit: int) -> list[int]:
        """Chained page hashes of cached prefixes, most recently used first, at most ``limit``.

        Nodes of equal last access come in either order; a node's own hashes in edge order. Cost:
        O(limit), as every node holds at least one page, whatever the size of the tree.
        """
        hashes: list[int] = []
        if limit <= 0:
            return hashes
        for node in reversed(self._recency):
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
        self._touch_path(start, now)
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
            child = self._add_node(node, new_tokens, new_pages, hashes, next(self._clock))
            self.allocator.incref(new_pages)
            self._cached_pages += len(new_pages)
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
            if key != leaf._last_access:  # touched since it was pushed: back at its current place
                self._push_candidate(leaf)
                continue
            parent = self._remove_leaf(leaf)
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
                id(candidate): (candidate._last_access, order, candidate)
                for _, order, candidate in heap
                if not candidate.evicted and candidate.is_leaf and not candidate.lock_count
            }
            heap[:] = current.values()
            heapq.heapify(heap)
        heapq.heappush(heap, (node._last_access, next(self._order), node))

    # -- tree membership and access times: the only writers ---------------

    def _touch(self, node: RadixNode, now: int) -> None:
        """Marks ``node`` used at ``now``, the newest tick, and moves it to the recency list's end.

        Every caller passes the tick its operation drew last, so the list stays sorted by last access.
        """
        node._last_access = now
        self._recency.move_to_end(node)

    def _touch_path(self, node: RadixNode, now: int) -> None:
        """``_touch`` of ``node`` and each of its ancestors but the root.

        A running request caching a decode page touches its whole path, ~10 nodes deep: the loop binds
        the move once, which halves what the recency list adds to that walk.
        """
        move_to_end, root = self._recency.move_to_end, self.root
        while node is not root:
            node._last_access = now
            move_to_end(node)
            node = node.parent  # type: ignore[assignment]

    def _add_node(
        self,
        parent: RadixNode,
        tokens: list[int],
        pages: list[int],
        page_hashes: list[int],
        now: int,
        lock_count: int = 0,
    ) -> RadixNode:
        """A new node under ``parent`` (replacing any child with its first page), used at ``now``."""
        node = RadixNode(
            tokens=tokens,
            pages=pages,
            page_hashes=page_hashes,
            parent=parent,
            lock_count=lock_count,
            _last_access=now,
        )
        parent.children[self._page_key(tokens, 0)] = node
        self._recency[node] = None
        return node

    def _remove_leaf(self, leaf: RadixNode) -> RadixNode:
        """Takes ``leaf`` out of the tree and the recency list; returns its parent."""
        parent = leaf.parent
        assert parent is not None and leaf.is_leaf
        del parent.children[self._page_key(leaf.tokens, 0)]
        del self._recency[leaf]
        leaf.evicted = True
        return parent

    # -- internals -------------------------------------------------------

    def _split(self, node: RadixNode, keep_pages: int, now: int) -> RadixNode:
        """Cuts ``node``'s edge after ``keep_pages`` pages; returns the new upper half, used at ``now``.

        The lower half keeps its access time and its place in the recency list.
        """
        cut = keep_pages * self.page_size
        parent = node.parent
        assert parent is not None
        upper = self._add_node(
            parent,
            node.tokens[:cut],
            node.pages[:keep_pages],
            node.page_hashes[:keep_pages],
            now,
            lock_count=node.lock_count,
        )
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
