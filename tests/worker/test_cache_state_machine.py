"""PageBinder and RadixCache under any interleaving of the engine's operations, checked after every step.

A hypothesis state machine binds, computes, samples (with overlap's placeholders), resolves, caches,
preempts, finishes and evicts several requests over a two-token alphabet (so prefixes are shared and
edges split) in a small page pool. After every step:

- every page's reference count is the number of request tables holding it plus one if the tree caches it,
  and a page is on the free list exactly when that count is zero;
- every node's lock count is the number of running requests whose locked node is it or below it, and the
  cache's page counters match the tree;
- a cached page holds the K/V of exactly its path's tokens, and a request's computed pages its own tokens;
- every unlocked leaf is reachable by eviction: on a copy, evicting everything leaves only locked nodes
  and frees every page no request holds;
- the tree (edges, pages, lock counts, access times) and every page table equal those of a twin binder
  that caches completed pages by an insert from the root, as before ``insert_below``.
"""

from __future__ import annotations

import copy

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from radixfair.prefix_hash import chain_hash
from radixfair_engine.page_binding import PageBinder
from radixfair_engine.radix_cache import RadixNode
from radixfair_engine.request import PLACEHOLDER_TOKEN, Request, SamplingConfig

PAGE_SIZE = 2
NUM_PAGES = 14
MAX_PENDING = 2
UNKNOWN = None  # a slot of a page nothing has written yet


class RootInsertBinder(PageBinder):
    """The binder as it was before ``insert_below``: completed pages are inserted from the root."""

    def cache_computed(self, request: Request) -> None:
        known = len(request.prompt_ids) + len(request.output_ids) - request.pending_tokens
        computed = min(request.num_computed_tokens, known)
        if computed < request.num_inserted_tokens + self.page_size:
            return
        full = computed - computed % self.page_size
        match = self.cache.insert(request.fill_ids[:full], request.page_table[: full // self.page_size])
        for index, page in enumerate(match.pages):
            if request.page_table[index] != page:
                self.allocator.incref([page])
                self.allocator.decref([request.page_table[index]])
                table = list(request.page_table)
                table[index] = page
                request.page_table = table
        self.cache.lock(match.node)
        self.cache.unlock(request.locked_node)
        request.locked_node = match.node
        request.num_inserted_tokens = full


def tree_nodes(root: RadixNode) -> list[RadixNode]:
    out, stack = [], list(root.children.values())
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children.values())
    return out


def path_tokens(node: RadixNode) -> list[int]:
    parts = []
    while node.parent is not None:
        parts.append(node.tokens)
        node = node.parent
    return [t for part in reversed(parts) for t in part]


def tree_shape(node: RadixNode) -> tuple:
    """The subtree below ``node`` as plain values, children in key order."""
    return tuple(
        (key, tuple(child.tokens), tuple(child.pages), child.lock_count, child.last_access, tree_shape(child))
        for key, child in sorted(node.children.items())
    )


class CacheMachine(RuleBasedStateMachine):
    """One binder under test and its root-insert twin, fed the same operations."""

    @initialize()
    def start(self) -> None:
        self.binder = PageBinder(NUM_PAGES, PAGE_SIZE)
        self.twin = RootInsertBinder(NUM_PAGES, PAGE_SIZE)
        self.running: list[tuple[Request, Request]] = []
        self.waiting: list[tuple[Request, Request]] = []
        # The K/V each page holds, slot by slot (a token id, a placeholder's, or unknown).
        self.content: dict[int, list[int | None]] = {p: [UNKNOWN] * PAGE_SIZE for p in range(NUM_PAGES)}
        self.count = 0

    # -- operations ------------------------------------------------------

    @rule(prompt=st.lists(st.integers(0, 1), min_size=1, max_size=9))
    def arrive(self, prompt: list[int]) -> None:
        self.count += 1
        pair = tuple(
            Request(f"r{self.count}", "c", list(prompt), SamplingConfig(max_tokens=64)) for _ in "ab"
        )
        self.waiting.append(pair)  # type: ignore[arg-type]

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def admit(self, data: st.DataObject) -> None:
        pair = data.draw(st.sampled_from(self.waiting))
        request, twin = pair
        cached = self.binder.bind_prefix(request)
        assert self.twin.bind_prefix(twin) == cached
        if cached is None:
            assert request.page_table == [] and request.locked_node is None
            return
        assert cached % PAGE_SIZE == 0 and cached < request.num_tokens
        self.waiting.remove(pair)
        self.running.append(pair)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), tokens=st.integers(1, 6))
    def compute(self, data: st.DataObject, tokens: int) -> None:
        """A prefill chunk or decode step writes K/V for the next ``tokens`` positions; all then cache."""
        request, twin = data.draw(st.sampled_from(self.running))
        start = request.num_computed_tokens
        end = min(request.num_tokens, start + tokens)
        fill = request.fill_ids
        for position in range(start, end):
            page = request.page_table[position // PAGE_SIZE]
            holders = self.binder.allocator.refcount(page)
            assert holders == 1, f"page {page} is written while {holders} hold it"
            self.content[page][position % PAGE_SIZE] = fill[position]
        request.num_computed_tokens = twin.num_computed_tokens = end
        for pair in list(self.running):
            self._both_request(pair, "cache_computed")

    @precondition(lambda self: self.running)
    @rule(data=st.data(), token=st.integers(0, 1))
    def sample(self, data: st.DataObject, token: int) -> None:
        """The next token: known now, or (overlap) a placeholder that a later step resolves."""
        pair = data.draw(st.sampled_from(self.running))
        request = pair[0]
        if request.num_computed_tokens < request.num_tokens:
            return  # its last token is not computed yet: nothing to sample from
        missing = self.binder.missing_pages(request, request.num_tokens + 1)
        fits = self.binder.reserve(missing) if missing > 0 else True
        assert (self.twin.reserve(missing) if missing > 0 else True) == fits
        if not fits:
            return
        placeholder = request.pending_tokens < MAX_PENDING and data.draw(st.booleans())
        for each, binder in zip(pair, (self.binder, self.twin)):
            if missing > 0:
                binder.extend(each, missing)
            each.output_ids.append(PLACEHOLDER_TOKEN if placeholder else token)
            each.pending_tokens += placeholder
        if placeholder:
            return
        self._both_request(pair, "cache_computed")

    @precondition(lambda self: any(r.pending_tokens for r, _ in self.running))
    @rule(data=st.data(), token=st.integers(0, 1))
    def resolve(self, data: st.DataObject, token: int) -> None:
        """The oldest placeholder's token arrives (its K/V, if computed, now counts as that token's)."""
        pair = data.draw(st.sampled_from([p for p in self.running if p[0].pending_tokens]))
        for each in pair:
            index = len(each.output_ids) - each.pending_tokens
            each.output_ids[index] = token
            each.pending_tokens -= 1
        request = pair[0]
        position = len(request.prompt_ids) + len(request.output_ids) - request.pending_tokens - 1
        if position < request.num_computed_tokens:
            self.content[request.page_table[position // PAGE_SIZE]][position % PAGE_SIZE] = token
        self._both_request(pair, "cache_computed")

    @precondition(lambda self: self.running)
    @rule(data=st.data(), preempt=st.booleans())
    def leave(self, data: st.DataObject, preempt: bool) -> None:
        """Finished (unlaunched tokens dropped first, as the engine does) or preempted back to waiting."""
        pair = data.draw(st.sampled_from(self.running))
        self.running.remove(pair)
        for each, binder in zip(pair, (self.binder, self.twin)):
            if each.pending_tokens:
                del each.output_ids[-each.pending_tokens :]
                each.pending_tokens = 0
                each.num_computed_tokens = min(each.num_computed_tokens, each.num_tokens - 1)
            binder.release(each)
            if preempt:
                each.num_computed_tokens = each.num_inserted_tokens = 0
        if preempt:
            self.waiting.insert(0, pair)

    @rule(pages=st.integers(0, NUM_PAGES))
    def evict(self, pages: int) -> None:
        before = self.binder.allocator.num_free
        freed = self.binder.cache.evict(pages)
        assert self.twin.cache.evict(pages) == freed
        assert self.binder.allocator.num_free == before + freed
        if freed < pages:
            assert self.binder.cache.evictable_pages == 0

    @rule(data=st.data(), repeats=st.integers(1, 100), hold=st.booleans())
    def touch(self, data: st.DataObject, repeats: int, hold: bool) -> None:
        """Other requests match (splitting edges, making a leaf's heap entries stale), and maybe lock
        and let go, over and over (stale entries pile up until the heap is rebuilt)."""
        leaves = [path_tokens(node) for node in tree_nodes(self.binder.cache.root) if node.is_leaf]
        tokens = data.draw(st.lists(st.integers(0, 1), max_size=10) | st.sampled_from(leaves or [[]]))
        for binder in (self.binder, self.twin):
            for _ in range(repeats):
                match = binder.cache.match_prefix(tokens)
                if hold:
                    binder.cache.lock(match.node)
                    binder.cache.unlock(match.node)

    def _both_request(self, pair: tuple[Request, Request], method: str) -> None:
        getattr(self.binder, method)(pair[0])
        getattr(self.twin, method)(pair[1])

    # -- invariants ------------------------------------------------------

    @invariant()
    def references_match_holders(self) -> None:
        if not hasattr(self, "binder"):
            return
        allocator, cache = self.binder.allocator, self.binder.cache
        nodes = tree_nodes(cache.root)
        expected = [0] * NUM_PAGES
        for request, _ in self.running:
            for page in request.page_table:
                expected[page] += 1
        tree_pages = [page for node in nodes for page in node.pages]
        assert len(tree_pages) == len(set(tree_pages)), "a page is cached twice"
        for page in tree_pages:
            expected[page] += 1
        assert [allocator.refcount(p) for p in range(NUM_PAGES)] == expected
        free = list(allocator._free)
        assert len(free) == len(set(free)) and set(free) == {p for p in range(NUM_PAGES) if not expected[p]}
        assert cache.cached_pages == len(tree_pages) and cache._nodes == len(nodes)
        for request, _ in self.waiting:
            assert request.page_table == [] and request.locked_node is None

    @invariant()
    def locks_match_running_requests(self) -> None:
        if not hasattr(self, "binder"):
            return
        cache = self.binder.cache
        locks: dict[int, int] = {}
        for request, _ in self.running:
            node = request.locked_node
            assert not node.evicted
            while node is not cache.root:
                locks[id(node)] = locks.get(id(node), 0) + 1
                node = node.parent
        nodes = tree_nodes(cache.root)
        for node in nodes:
            assert node.lock_count == locks.get(id(node), 0)
        assert cache._locked_pages == sum(len(n.pages) for n in nodes if n.lock_count)

    @invariant()
    def pages_hold_their_tokens(self) -> None:
        if not hasattr(self, "binder"):
            return
        cache = self.binder.cache
        for node in tree_nodes(cache.root):
            assert not node.evicted and node.parent.children[tuple(node.tokens[:PAGE_SIZE])] is node
            assert node.tokens and len(node.tokens) == len(node.pages) * PAGE_SIZE
            path = path_tokens(node)
            start = len(path) - len(node.tokens)
            previous = node.parent.last_hash
            for index, page in enumerate(node.pages):
                tokens = path[start + index * PAGE_SIZE : start + (index + 1) * PAGE_SIZE]
                assert self.content[page] == tokens, f"cached page {page} holds other tokens"
                previous = chain_hash(previous, tokens)
                assert node.page_hashes[index] == previous
        for request, _ in self.running:
            fill = request.fill_ids
            for position in range(request.num_computed_tokens):
                page = request.page_table[position // PAGE_SIZE]
                assert self.content[page][position % PAGE_SIZE] == fill[position]
            # The locked node ends exactly where the request's inserted prefix does, on its own pages.
            assert path_tokens(request.locked_node) == fill[: request.num_inserted_tokens]
            along, node = [], request.locked_node
            while node is not cache.root:
                along[:0] = node.pages
                node = node.parent
            assert request.page_table[: len(along)] == along

    @invariant()
    def every_unlocked_leaf_is_evictable(self) -> None:
        if not hasattr(self, "binder"):
            return
        binder, _ = copy.deepcopy((self.binder, [r for r, _ in self.running]))
        binder.cache.evict(10 * NUM_PAGES)
        remaining = tree_nodes(binder.cache.root)
        assert all(node.lock_count for node in remaining), "an unlocked node survived evicting everything"
        assert binder.cache.evictable_pages == 0
        held = {page for request, _ in self.running for page in request.page_table}
        held |= {page for node in remaining for page in node.pages}
        assert binder.allocator.num_free == NUM_PAGES - len(held)

    @invariant()
    def equals_the_root_insert_twin(self) -> None:
        if not hasattr(self, "binder"):
            return
        assert tree_shape(self.binder.cache.root) == tree_shape(self.twin.cache.root)
        for request, twin in [*self.running, *self.waiting]:
            assert request.page_table == twin.page_table
            assert request.num_inserted_tokens == twin.num_inserted_tokens
            if request.locked_node is not None:
                assert path_tokens(request.locked_node) == path_tokens(twin.locked_node)
        assert self.binder.allocator.num_free == self.twin.allocator.num_free

    def teardown(self) -> None:
        if not hasattr(self, "binder"):
            return
        for pair in list(self.running):
            for each, binder in zip(pair, (self.binder, self.twin)):
                if each.pending_tokens:
                    del each.output_ids[-each.pending_tokens :]
                    each.pending_tokens = 0
                    each.num_computed_tokens = min(each.num_computed_tokens, each.num_tokens - 1)
                binder.release(each)
        for binder in (self.binder, self.twin):
            assert binder.allocator.num_free + binder.cache.cached_pages == NUM_PAGES
            binder.cache.evict(10 * NUM_PAGES)
            assert binder.allocator.num_free == NUM_PAGES and binder.cache.cached_pages == 0


CacheMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
test_cache_state_machine = CacheMachine.TestCase
