"""The radix cache's digest and recency list under any interleaving of the cache's operations.

A hypothesis state machine inserts (from the root and below a held node, as a running request caches
its completed pages), matches (touching paths and splitting edges), holds and lets go of nodes, and
evicts, over a three-token alphabet with two-token pages, so prefixes are shared and edges split
often. After every step:

- the recency list holds exactly the tree's nodes, each once, in non-decreasing order of last access;
- ``digest(limit)``, for limits below, at and above the number of cached pages, equals the reference:
  every node sorted by last access, most recent first, its page hashes concatenated in edge order,
  cut at ``limit``; nodes of equal last access may come in either order, so the reference breaks
  those ties the way the digest did and must then equal it exactly.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from radixfair_engine.page_allocator import PageAllocator
from radixfair_engine.radix_cache import RadixCache, RadixNode

PAGE = 2
NUM_PAGES = 24
tokens_strategy = st.lists(st.integers(0, 2), max_size=12)


def tree_nodes(cache: RadixCache) -> list[RadixNode]:
    out, stack = [], list(cache.root.children.values())
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children.values())
    return out


def reference_digest(cache: RadixCache, limit: int, digest: list[int]) -> list[int]:
    """All nodes by last access, most recent first, hashes concatenated and cut at ``limit``.

    Ties in last access are broken by where ``digest`` put the node (nodes it left out go last), so a
    digest that orders any two nodes of different access times wrongly, splits or reorders a node's
    hashes, skips a node or adds one differs from this."""
    nodes = tree_nodes(cache)
    owner = {h: node for node in nodes for h in node.page_hashes}
    rank: dict[int, int] = {}
    for position, page_hash in enumerate(digest):
        node = owner.get(page_hash)
        if node is not None:
            rank.setdefault(id(node), position)
    ordered = sorted(nodes, key=lambda n: (-n.last_access, rank.get(id(n), math.inf)))
    return [h for node in ordered for h in node.page_hashes][: max(limit, 0)]


def path_tokens(node: RadixNode) -> list[int]:
    parts = []
    while node.parent is not None:
        parts.append(node.tokens)
        node = node.parent
    return [t for part in reversed(parts) for t in part]


def whole_pages(tokens: list[int]) -> list[int]:
    return tokens[: len(tokens) - len(tokens) % PAGE]


class DigestMachine(RuleBasedStateMachine):
    """One cache fed random operations; ``held`` are the nodes locked as running requests lock them."""

    @initialize()
    def start(self) -> None:
        self.cache = RadixCache(PageAllocator(NUM_PAGES), PAGE)
        self.held: list[RadixNode] = []

    def _fresh_pages(self, count: int) -> list[int] | None:
        allocator = self.cache.allocator
        if allocator.num_free < count:
            self.cache.evict(count - allocator.num_free)
        return allocator.allocate(count) if allocator.num_free >= count else None

    # -- operations ------------------------------------------------------

    @rule(tokens=tokens_strategy)
    def insert(self, tokens: list[int]) -> None:
        """A finished request caches its prompt and output: own pages, insert, drop its references."""
        tokens = whole_pages(tokens)
        pages = self._fresh_pages(len(tokens) // PAGE)
        if pages is None:
            return
        self.cache.insert(tokens, pages)
        self.cache.allocator.decref(pages)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), tokens=tokens_strategy)
    def insert_below(self, data: st.DataObject, tokens: list[int]) -> None:
        """A running request caches its newly completed pages below the node it holds, and holds theirs."""
        index = data.draw(st.integers(0, len(self.held) - 1))
        tokens = whole_pages(tokens)
        pages = self._fresh_pages(len(tokens) // PAGE)
        if pages is None:
            return
        match = self.cache.insert_below(self.held[index], tokens, pages)
        self.cache.allocator.decref(pages)
        self.cache.lock(match.node)
        self.cache.unlock(self.held[index])
        self.held[index] = match.node

    @rule(tokens=tokens_strategy, hold=st.booleans())
    def match(self, tokens: list[int], hold: bool) -> None:
        """A request is admitted (its path touched, an edge split where the match ends inside it)."""
        match = self.cache.match_prefix(tokens)
        if hold:
            self.cache.lock(match.node)
            self.held.append(match.node)

    @rule(data=st.data(), repeats=st.integers(2, 60))
    def match_repeatedly(self, data: st.DataObject, repeats: int) -> None:
        """Hot paths matched over and over between two digests (many touches of the same nodes)."""
        leaves = [n for n in tree_nodes(self.cache) if n.is_leaf]
        node = data.draw(st.sampled_from(leaves)) if leaves and data.draw(st.booleans()) else None
        tokens = path_tokens(node) if node is not None else data.draw(tokens_strategy)
        for _ in range(repeats):
            self.cache.match_prefix(tokens)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1))
        self.cache.unlock(self.held.pop(index))

    @rule(pages=st.integers(0, NUM_PAGES))
    def evict(self, pages: int) -> None:
        self.cache.evict(pages)

    @rule(tokens=tokens_strategy, pages=st.integers(1, NUM_PAGES))
    def insert_then_evict(self, tokens: list[int], pages: int) -> None:
        """Nodes added, touched and evicted again before any digest reads the recency list."""
        self.insert(tokens)
        self.match(tokens[:-1], hold=False)
        self.cache.evict(pages)

    @rule(tokens=tokens_strategy)
    def measure(self, tokens: list[int]) -> None:
        """``match_length`` only reads: the digest and every access time stay as they were."""
        before = (self.cache.digest(NUM_PAGES), [n.last_access for n in self.cache._recency])
        self.cache.match_length(tokens)
        assert (self.cache.digest(NUM_PAGES), [n.last_access for n in self.cache._recency]) == before

    # -- invariants ------------------------------------------------------

    @invariant()
    def recency_list_holds_exactly_the_tree(self) -> None:
        if not hasattr(self, "cache"):
            return
        listed = list(self.cache._recency)
        nodes = tree_nodes(self.cache)
        assert len(listed) == len(nodes) == self.cache._nodes
        assert {id(n) for n in listed} == {id(n) for n in nodes}
        assert not any(n.evicted for n in listed)
        times = [n.last_access for n in listed]
        assert times == sorted(times), "the recency list is out of last-access order"

    @invariant()
    def digest_equals_the_reference(self) -> None:
        if not hasattr(self, "cache"):
            return
        total = self.cache.cached_pages
        for limit in sorted({0, 1, 2, 3, 5, total // 2, total - 1, total, total + 3}):
            digest = self.cache.digest(limit)
            assert digest == reference_digest(self.cache, limit, digest), f"limit {limit}"


DigestMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestDigestAndRecencyList = DigestMachine.TestCase


def test_a_nodes_access_time_cannot_be_written_past_the_cache():
    """Only the cache moves a node in its recency list, so a node's access time has no public setter."""
    cache = RadixCache(PageAllocator(4), PAGE)
    pages = cache.allocator.allocate(1)
    node = cache.insert([1, 2], pages).node
    with pytest.raises(AttributeError):
        node.last_access = 0  # type: ignore[misc]


def test_digest_of_a_large_cache_is_its_most_recent_pages_newest_first():
    """With far more cached pages than the limit, the digest is the last-touched prefixes' hashes."""
    cache = RadixCache(PageAllocator(3000), PAGE)
    prefixes = [[i // 50, i % 50, 7, 7] for i in range(1000)]  # 1,000 edges of two pages
    for tokens in prefixes:
        pages = cache.allocator.allocate(2)
        cache.insert(tokens, pages)
        cache.allocator.decref(pages)
    touched = [cache.match_prefix(tokens).node for tokens in prefixes[100:103]]
    assert cache.digest(6) == [h for node in reversed(touched) for h in node.page_hashes]
