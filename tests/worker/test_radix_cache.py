"""Radix cache and page allocator: sharing, splitting, LRU eviction, reference counts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair.prefix_hash import matched_prefix_tokens
from radixfair_engine.page_allocator import OutOfPagesError, PageAllocator
from radixfair_engine.radix_cache import RadixCache

PAGE = 4


def cache_with(num_pages: int = 64) -> RadixCache:
    return RadixCache(PageAllocator(num_pages), PAGE)


def insert_fresh(cache: RadixCache, tokens: list[int]):
    """Inserts ``tokens`` as a finished request would: own pages, insert, drop own refs."""
    pages = cache.allocator.allocate(len(tokens) // PAGE)
    match = cache.insert(tokens, pages)
    cache.allocator.decref(pages)
    return match


def test_match_is_page_aligned_and_shares_pages():
    cache = cache_with()
    first = insert_fresh(cache, list(range(12)))
    assert cache.match_length(list(range(12))) == 12
    assert cache.match_length(list(range(10)) + [99, 98]) == 8  # diverges inside page 3
    match = cache.match_prefix(list(range(10)) + [99, 98, 97])
    assert match.num_tokens == 8 and match.pages == first.pages[:2]


def test_insert_of_a_known_prefix_keeps_the_trees_pages():
    cache = cache_with()
    original = insert_fresh(cache, list(range(8)))
    duplicate_pages = cache.allocator.allocate(3)
    match = cache.insert(list(range(8)) + [50, 51, 52, 53], duplicate_pages)
    assert match.pages[:2] == original.pages
    assert match.pages[2] == duplicate_pages[2]


def test_split_edge_keeps_both_branches():
    cache = cache_with()
    insert_fresh(cache, list(range(16)))
    insert_fresh(cache, list(range(8)) + [70, 71, 72, 73])
    assert cache.match_length(list(range(16))) == 16
    assert cache.match_length(list(range(8)) + [70, 71, 72, 73]) == 12
    assert cache.cached_pages == 5


def test_eviction_is_lru_leaves_first_and_skips_locked_nodes():
    cache = cache_with(num_pages=16)
    insert_fresh(cache, [1] * 4 + [2] * 4)  # older branch
    newer = insert_fresh(cache, [1] * 4 + [3] * 4)
    locked = insert_fresh(cache, [9] * 8)
    cache.lock(locked.node)
    cache.match_prefix([1] * 4 + [3] * 4)  # touch the newer branch
    freed = cache.evict(1)
    assert freed == 1
    assert cache.match_length([1] * 4 + [2] * 4) == 4  # the older leaf went first
    assert cache.match_length([1] * 4 + [3] * 4) == 8
    cache.evict(100)
    assert cache.match_length([9] * 8) == 8  # locked: never evicted
    assert newer.node.parent is not None
    cache.unlock(locked.node)
    cache.evict(100)
    assert cache.cached_pages == 0 and cache.allocator.num_free == 16


def test_digest_hashes_match_the_shared_prefix_hash_function():
    cache = cache_with()
    tokens = list(range(100, 120))
    insert_fresh(cache, tokens)
    digest = set(cache.digest(limit=100))
    assert matched_prefix_tokens(tokens + [5, 6], PAGE, digest) == 20
    assert matched_prefix_tokens(list(range(100, 108)) + [0] * 8, PAGE, digest) == 8


def test_allocator_refuses_more_pages_than_free():
    allocator = PageAllocator(4)
    allocator.allocate(3)
    with pytest.raises(OutOfPagesError):
        allocator.allocate(2)


operations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "hold", "release", "evict"]),
        st.lists(st.integers(0, 3), min_size=0, max_size=24),
        st.integers(0, 8),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_reference_counts_and_allocation_stay_consistent(ops):
    """Invariant: every page's count = (tree holds it) + (live holders), and no page is handed out twice."""
    cache = cache_with(num_pages=48)
    allocator = cache.allocator
    holders: list[tuple[object, list[int]]] = []  # (locked node, pages held)
    for op, tokens, amount in ops:
        tokens = tokens[: len(tokens) - len(tokens) % PAGE]
        if op == "insert" and tokens and allocator.num_free >= len(tokens) // PAGE:
            insert_fresh(cache, tokens)
        elif op == "hold":
            match = cache.match_prefix(tokens)
            cache.lock(match.node)
            allocator.incref(match.pages)
            holders.append((match.node, match.pages))
        elif op == "release" and holders:
            node, pages = holders.pop(amount % len(holders))
            cache.unlock(node)
            allocator.decref(pages)
        elif op == "evict":
            cache.evict(amount)
        tree_pages = [p for node in cache._iter_nodes() for p in node.pages]
        assert len(tree_pages) == len(set(tree_pages)) == cache.cached_pages
        held = [p for _, pages in holders for p in pages]
        for page in range(allocator.num_pages):
            expected = tree_pages.count(page) + held.count(page)
            assert allocator.refcount(page) == expected
        free = list(allocator._free)
        assert len(free) == len(set(free)) and not set(free) & set(tree_pages + held)
        assert allocator.num_free + len(set(tree_pages + held)) == allocator.num_pages


def unlocked_leaves(cache: RadixCache) -> list:
    return [n for n in cache._iter_nodes() if n.is_leaf and n.lock_count == 0]


@settings(max_examples=80, deadline=None)
@given(operations)
def test_each_eviction_takes_the_least_recently_used_unlocked_leaf(ops):
    """The eviction heap (lazy, kept across calls) picks what a scan of the whole tree would pick."""
    cache = cache_with(num_pages=48)
    allocator = cache.allocator
    holders: list[tuple[object, list[int]]] = []
    for op, tokens, amount in ops:
        tokens = tokens[: len(tokens) - len(tokens) % PAGE]
        if op == "insert" and tokens and allocator.num_free >= len(tokens) // PAGE:
            insert_fresh(cache, tokens)
        elif op == "hold":  # also touches the path: its last access moves
            match = cache.match_prefix(tokens)
            cache.lock(match.node)
            allocator.incref(match.pages)
            holders.append((match.node, match.pages))
        elif op == "release" and holders:
            node, pages = holders.pop(amount % len(holders))
            cache.unlock(node)
            allocator.decref(pages)
        elif op == "evict":
            for _ in range(amount):
                leaves = unlocked_leaves(cache)
                oldest = min((n.last_access for n in leaves), default=None)
                before = cache.cached_pages
                freed = cache.evict(1)
                if oldest is None:
                    assert freed == 0
                    continue
                gone = [n for n in leaves if n.evicted]
                assert len(gone) == 1 and gone[0].last_access == oldest
                assert freed == len(gone[0].pages) == before - cache.cached_pages


def test_eviction_work_does_not_grow_with_the_cache():
    """A full cache is a serving worker's steady state: each page it adds comes from eviction.

    The work of an eviction is bounded by the leaves it frees plus the entries made stale since
    (touches, locks), never by the size of the tree: here 2,000 cached leaves, 300 touched, and
    500 evictions of one page examine at most 500 + 300 heap entries, where a scan of the tree per
    eviction examines 2,000 nodes each time.
    """
    leaves, touched, evictions = 2000, 300, 500
    cache = cache_with(num_pages=leaves)
    for i in range(leaves):
        insert_fresh(cache, [i // 256, i % 256, 7, 7])
    for i in range(0, 2 * touched, 2):
        cache.match_prefix([i // 256, i % 256, 7, 7])
    assert cache.eviction_entries_examined == 0
    for _ in range(evictions):
        assert cache.evict(1) == 1
    assert cache.eviction_entries_examined <= evictions + touched
    assert cache.cached_pages == leaves - evictions
    # The touched leaves are the most recent: none of them went first.
    assert all(cache.match_length([i // 256, i % 256, 7, 7]) == 4 for i in range(0, 2 * touched, 2))
