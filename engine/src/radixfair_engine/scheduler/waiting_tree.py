"""A radix tree of the waiting requests, walked against the radix cache to order them by prefix match.

Sorting the whole queue by ``cache.match_length`` costs one walk down the
cache per waiting request, every step: a hot 1,500-token document shared by
300 waiting requests is compared 300 times. That is why SGLang (and we, until
2026-11) gave up prefix order above 128 waiting requests, exactly under the
overload where locality matters most. Here the waiting requests themselves
form a page-keyed radix tree, kept up to date as requests join and leave
(O(prompt pages) once per arrival). One step then walks the waiting tree and
the cache tree side by side, and compares each cached page that some waiting
request starts with once, however many requests share it. Children are
matched by intersecting the two trees' child keys, so requests whose prompt
the cache does not hold cost nothing in the walk. What comes out is a list of
groups, each a subtree of waiting requests that share one match length;
requests are only listed when the admission walk reaches their group.

Cost of one step: the walk is O(cached pages on waiting paths + matched
nodes), independent of how many waiting requests the cache does not hold.
A group's requests in order (arrival, then join order) are listed once and
kept on its node until a request joins or leaves that subtree, so a step
re-lists only the groups that changed since the last one (typically the
admitted request's and the new arrival's); a match level is then a lazy
merge of its groups' lists, O(groups in the level) to start and O(log of
that) per request taken. What is not bounded here: DLPM's walk still steps
over a spent client's requests one by one.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from radixfair_engine.request import Request

_ARRIVAL = operator.attrgetter("arrival_time")


class CacheNode(Protocol):
    """What the walk reads of a radix cache node: its edge tokens (whole pages) and children."""

    tokens: list[int]
    children: dict[tuple[int, ...], CacheNode]


class _Node:
    """An edge of whole pages; ``requests`` end exactly here; ``size`` counts the subtree's requests."""

    __slots__ = ("tokens", "children", "requests", "parent", "size", "listing")

    def __init__(self, tokens: list[int], parent: _Node | None) -> None:
        self.tokens = tokens
        self.children: dict[tuple[int, ...], _Node] = {}
        self.requests: dict[Request, None] = {}  # insertion-ordered set
        self.parent = parent
        self.size = 0
        # The last listing of this subtree in order, less some children: (those children, list).
        # Dropped whenever a request joins or leaves the subtree.
        self.listing: tuple[frozenset[tuple[int, ...]], list[Request]] | None = None


def match_key(request: Request, page_size: int) -> list[int]:
    """The tokens admission can find in the cache: all of ``fill_ids`` but the last, whole pages."""
    usable = len(request.fill_ids) - 1
    return request.fill_ids[: usable - usable % page_size]


class WaitingTree:
    """The waiting requests in a page-keyed radix tree (one page = ``page_size`` tokens)."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._root = _Node([], None)
        self._where: dict[Request, _Node] = {}
        # Join order, to break ties between equal arrival times as the queue would.
        self._joins = itertools.count()
        self.joined: dict[Request, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, request: Request) -> bool:
        return request in self._where

    def add(self, request: Request) -> None:
        """Adds ``request`` under its current ``fill_ids``; re-adding moves it there."""
        self.discard(request)
        key, node, pos, p = match_key(request, self.page_size), self._root, 0, self.page_size
        while pos < len(key):
            child = node.children.get(tuple(key[pos : pos + p]))
            if child is None:
                child = _Node(key[pos:], node)
                node.children[tuple(key[pos : pos + p])] = child
                node, pos = child, len(key)
                break
            same = _common_pages(child.tokens, key, pos, p)
            if same * p < len(child.tokens):
                child = _split(child, same * p, p)
            node, pos = child, pos + same * p
        node.requests[request] = None
        self._where[request] = node
        self.joined[request] = next(self._joins)
        while node is not None:
            node.size += 1
            node.listing = None
            node = node.parent

    def discard(self, request: Request) -> None:
        node = self._where.pop(request, None)
        if node is None:
            return
        del self.joined[request]
        del node.requests[request]
        while node is not None:
            node.size -= 1
            node.listing = None
            parent = node.parent
            if node.size == 0 and parent is not None:
                del parent.children[tuple(node.tokens[: self.page_size])]
            node = parent

    def groups(self, cache_root: CacheNode) -> list[tuple[int, _Group]]:
        """Groups of waiting requests with their cached-prefix length, longest first.

        Every waiting request is in exactly one group. The cache is only read.
        """
        p = self.page_size
        found: list[tuple[int, _Group]] = []
        stack: list[tuple[_Node, int, CacheNode, int]] = [(self._root, 0, cache_root, 0)]
        while stack:
            node, depth, cnode, cpos = stack.pop()
            if cpos == len(cnode.tokens):
                # Look the smaller side's keys up in the other: a root with thousands of waiting
                # prompts the cache does not hold costs as much as the cache's few children.
                mine, theirs = node.children, cnode.children
                small, large = (mine, theirs) if len(mine) <= len(theirs) else (theirs, mine)
                keys = {key for key in small if key in large}
            else:
                next_page = tuple(cnode.tokens[cpos : cpos + p])
                keys = {next_page} if next_page in node.children else set()
            for key in keys:
                child = node.children[key]
                matched, cnode_end, cpos_end = _follow(child.tokens, cnode, cpos, p)
                if matched == len(child.tokens):
                    stack.append((child, depth + matched, cnode_end, cpos_end))
                else:
                    found.append((depth + matched, _Group(child, frozenset(), p)))
            rest = _Group(node, frozenset(keys), p)
            if rest.size:
                found.append((depth, rest))
        found.sort(key=lambda group: -group[0])
        return found


class _Group:
    """A waiting subtree, less some children (those the walk matched further)."""

    __slots__ = ("node", "excluded", "page_size", "size")

    def __init__(self, node: _Node, excluded: frozenset[tuple[int, ...]], page_size: int) -> None:
        self.node, self.excluded, self.page_size = node, excluded, page_size
        self.size = node.size - sum(node.children[k].size for k in excluded)

    def requests(self, joined: dict[Request, int]) -> list[Request]:
        """The group's requests by arrival, then join order; kept on the node until its subtree
        changes (never mutate the list returned)."""
        kept = self.node.listing
        if kept is not None and kept[0] == self.excluded:
            return kept[1]
        found = list(self.node.requests)
        stack = [c for k, c in self.node.children.items() if k not in self.excluded]
        while stack:
            node = stack.pop()
            found.extend(node.requests)
            stack.extend(node.children.values())
        # Two stable sorts with C-level keys: by join order, then by arrival.
        found.sort(key=joined.__getitem__)
        found.sort(key=_ARRIVAL)
        self.node.listing = (self.excluded, found)
        return found


def prefix_order(
    groups: Sequence[tuple[int, _Group]], joined: dict[Request, int]
) -> Iterator[tuple[int, Request]]:
    """Requests with their match length: longest match first, ties by arrival, then by join order.

    Lazy by match level: a level's requests are listed and sorted only when
    the consumer gets there, so an admission walk that stops early never
    pays for the cold tail of a deep queue.
    """

    def order(request: Request) -> tuple[float, int]:
        return request.arrival_time, joined[request]

    i = 0
    while i < len(groups):
        length, lists = groups[i][0], []
        while i < len(groups) and groups[i][0] == length:
            lists.append(groups[i][1].requests(joined))
            i += 1
        yield from ((length, request) for request in _merged(lists, joined, order))


# A level up to this many requests is merged by C-level sorts of the whole level; a larger one lazily.
EAGER_LEVEL = 512


def _merged(
    lists: list[list[Request]], joined: dict[Request, int], order: Callable[[Request], tuple[float, int]]
) -> Iterable[Request]:
    """The requests of ``lists`` (each in (arrival, join) order) in that order.

    Join indices are unique, so the order is total. A small level is concatenated and sorted with
    C-level keys (two stable sorts: join order, then arrival); a large one is merged lazily, so a
    walk that stops early pays O(lists) plus O(log lists) per request it reads, not O(level).
    """
    if len(lists) == 1:
        return lists[0]
    if sum(map(len, lists)) > EAGER_LEVEL:
        return heapq.merge(*lists, key=order)
    level = [request for part in lists for request in part]
    level.sort(key=joined.__getitem__)
    level.sort(key=_ARRIVAL)
    return level


def _follow(tokens: list[int], cnode: CacheNode, cpos: int, p: int) -> tuple[int, CacheNode, int]:
    """How many leading tokens (whole pages) of ``tokens`` the cache holds from (cnode, cpos) on."""
    matched, n = 0, len(tokens)
    while matched < n:
        if cpos == len(cnode.tokens):
            below = cnode.children.get(tuple(tokens[matched : matched + p]))
            if below is None:
                break
            cnode, cpos = below, 0
        # Both edges are whole pages: compare all the pages they still share in one C-level
        # comparison; only where they differ, find the first differing page one page at a time.
        span = min(n - matched, len(cnode.tokens) - cpos)
        if tokens[matched : matched + span] == cnode.tokens[cpos : cpos + span]:
            matched, cpos = matched + span, cpos + span
            continue
        while tokens[matched : matched + p] == cnode.tokens[cpos : cpos + p]:
            matched, cpos = matched + p, cpos + p
        break
    return matched, cnode, cpos


def _common_pages(edge: list[int], key: list[int], offset: int, p: int) -> int:
    pages, limit = 0, min(len(edge), len(key) - offset)
    while (pages + 1) * p <= limit and edge[pages * p : (pages + 1) * p] == key[
        offset + pages * p : offset + (pages + 1) * p
    ]:
        pages += 1
    return pages


def _split(node: _Node, cut: int, p: int) -> _Node:
    """Cuts ``node``'s edge after ``cut`` tokens (whole pages); returns the new upper half."""
    parent = node.parent
    assert parent is not None
    upper = _Node(node.tokens[:cut], parent)
    upper.size = node.size
    parent.children[tuple(upper.tokens[:p])] = upper
    node.tokens = node.tokens[cut:]
    node.parent = upper
    upper.children[tuple(node.tokens[:p])] = node
    return upper
