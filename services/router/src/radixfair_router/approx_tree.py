"""The router's approximate picture of what each worker has cached.

A radix tree over token ids. Each node remembers which workers (probably)
hold the prefix ending at it, and when each was last sent there. The router
inserts a prompt for the worker it routes to; it never sees the worker's
evictions directly, so the picture is corrected from the workers' load
reports (see ``WorkerCacheView``) and bounded in memory by evicting least
recently used leaves.

Invariant: worker marks are closed under ancestors. If a node carries worker
w, so does every node above it, because holding a prefix means holding all
of its prefixes. Insert marks whole paths and forgetting removes whole
subtrees, which keeps it true, and lets ``match`` read off each worker's
match length as the depth of the deepest node that carries it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass


class _Node:
    __slots__ = ("key", "children", "parent", "workers")

    def __init__(self, key: tuple[int, ...], parent: _Node | None) -> None:
        self.key = key
        self.children: dict[int, _Node] = {}
        self.parent = parent
        # worker id -> monotonic time it was last routed a prompt through here
        self.workers: dict[str, float] = {}


@dataclass(frozen=True)
class WorkerMatch:
    """How much of a prompt one worker holds, by the tree, and when it last got it."""

    tokens: int
    last_access: float


class ApproxRadixTree:
    """Token prefixes -> workers, LRU-evicted to at most ``max_tokens`` tokens of edges."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens <= 0:
            raise ValueError("max_tokens must be positive")
        self._max_tokens = max_tokens
        self._root = _Node((), None)
        self._total_tokens = 0
        self._worker_tokens: dict[str, int] = {}

    @property
    def total_tokens(self) -> int:
        return self._total_tokens

    def worker_tokens(self, worker_id: str) -> int:
        """Tokens the tree believes ``worker_id`` holds (cache_aware's size measure)."""
        return self._worker_tokens.get(worker_id, 0)

    def insert(self, tokens: Sequence[int], worker_id: str, now: float | None = None) -> None:
        """Record that ``worker_id`` now holds ``tokens`` (and so all of its prefixes)."""
        now = time.monotonic() if now is None else now
        node, pos = self._root, 0
        tokens = tuple(tokens)
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                child = _Node(tokens[pos:], node)
                node.children[tokens[pos]] = child
                self._total_tokens += len(child.key)
            else:
                common = _common_length(child.key, tokens, pos)
                if common < len(child.key):
                    child = self._split(child, common)
            self._mark(child, worker_id, now)
            pos += len(child.key)
            node = child
        if self._total_tokens > self._max_tokens:
            self._evict(int(self._max_tokens * 0.9))

    def match(self, tokens: Sequence[int]) -> dict[str, WorkerMatch]:
        """Per worker, the longest prefix of ``tokens`` it holds by the tree's record."""
        result: dict[str, WorkerMatch] = {}
        node, pos = self._root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            common = _common_length(child.key, tokens, pos)
            for worker_id, access in child.workers.items():
                result[worker_id] = WorkerMatch(pos + common, access)
            if common < len(child.key):
                break
            pos += common
            node = child
        return result

    def forget(self, tokens: Sequence[int], worker_id: str, keep_tokens: int) -> None:
        """``worker_id`` holds at most ``tokens[:keep_tokens]``: drop its marks beyond that."""
        node, pos = self._root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None or worker_id not in child.workers:
                return
            common = _common_length(child.key, tokens, pos)
            if pos + len(child.key) > keep_tokens:
                if keep_tokens > pos:
                    # The worker keeps the head of this edge: split it off; ``child`` is the tail.
                    self._split(child, keep_tokens - pos)
                self._unmark_subtree(child, worker_id)
                return
            if common < len(child.key):
                return
            pos += common
            node = child

    def remove_worker(self, worker_id: str) -> None:
        for child in list(self._root.children.values()):
            self._unmark_subtree(child, worker_id)

    def _mark(self, node: _Node, worker_id: str, now: float) -> None:
        previous = node.workers.get(worker_id)
        if previous is None:
            self._add_worker_tokens(worker_id, len(node.key))
        # Never move an access time back: a late-learned report must not age a fresh route.
        node.workers[worker_id] = now if previous is None else max(previous, now)

    def _unmark_subtree(self, node: _Node, worker_id: str) -> None:
        stack = [node]
        while stack:
            current = stack.pop()
            if worker_id not in current.workers:
                continue
            if len(current.workers) == 1:
                # Only this worker held it, so by closure nobody else holds anything below.
                self._detach(current)
                continue
            del current.workers[worker_id]
            self._add_worker_tokens(worker_id, -len(current.key))
            stack.extend(current.children.values())

    def _detach(self, node: _Node) -> None:
        """Removes ``node`` and its subtree from the tree and from every count."""
        assert node.parent is not None
        del node.parent.children[node.key[0]]
        stack = [node]
        while stack:
            current = stack.pop()
            self._total_tokens -= len(current.key)
            for worker_id in current.workers:
                self._add_worker_tokens(worker_id, -len(current.key))
            stack.extend(current.children.values())

    def _add_worker_tokens(self, worker_id: str, delta: int) -> None:
        total = self._worker_tokens.get(worker_id, 0) + delta
        if total:
            self._worker_tokens[worker_id] = total
        else:
            self._worker_tokens.pop(worker_id, None)

    def _split(self, node: _Node, at: int) -> _Node:
        """Splits ``node``'s edge after ``at`` tokens; returns the new upper node."""
        assert node.parent is not None and 0 < at < len(node.key)
        upper = _Node(node.key[:at], node.parent)
        upper.workers = dict(node.workers)
        node.parent.children[upper.key[0]] = upper
        node.key = node.key[at:]
        node.parent = upper
        upper.children[node.key[0]] = node
        return upper

    def _evict(self, target_tokens: int) -> None:
        """Removes least recently used leaves until the tree holds at most ``target_tokens``."""
        order = itertools.count()
        heap = [(_last_access(leaf), next(order), leaf) for leaf in self._leaves()]
        heapq.heapify(heap)
        while heap and self._total_tokens > target_tokens:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            self._detach(leaf)
            if parent.parent is not None and not parent.children:
                heapq.heappush(heap, (_last_access(parent), next(order), parent))

    def _leaves(self) -> list[_Node]:
        leaves, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                leaves.append(node)
        return leaves


def _common_length(key: tuple[int, ...], tokens: Sequence[int], start: int) -> int:
    limit = min(len(key), len(tokens) - start)
    # Usually the whole edge matches: one C-level comparison instead of a Python loop per token.
    if key[:limit] == tuple(tokens[start : start + limit]):
        return limit
    i = 0
    while i < limit and key[i] == tokens[start + i]:
        i += 1
    return i


def _last_access(node: _Node) -> float:
    return max(node.workers.values(), default=0.0)
