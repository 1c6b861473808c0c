"""Estimated prefix match per worker: the router's tree, corrected by the workers' reports.

The tree knows what the router sent where, which is fresh but blind to
evictions and to other router replicas. A worker's LoadReport lists chained
hashes of the page-aligned prefixes it holds (radixfair.prefix_hash), which
is the truth as of the report. For each worker:

- report newer than the router's last route of this prefix there (plus a
  grace period for the report to catch up) and shorter than the tree's
  match: the worker evicted it; believe the report and prune the tree;
- report longer than the tree (another replica routed it, or the tree
  evicted it first): believe the report and teach the tree;
- otherwise the tree stands (it saw a route the report has not caught up with).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from radixfair.prefix_hash import matched_pages, page_hashes
from radixfair_router.approx_tree import ApproxRadixTree, WorkerMatch
from radixfair_router.config import ApproxTreeConfig


@dataclass(frozen=True)
class ReportDigest:
    page_size: int
    hashes: frozenset[int]
    # monotonic time the report arrived
    received_at: float


class CacheView:
    """Per-worker prefix match estimates for prompts; one per router."""

    def __init__(self, config: ApproxTreeConfig) -> None:
        self._config = config
        self._tree = ApproxRadixTree(config.max_tokens)
        self._reports: dict[str, ReportDigest] = {}

    @property
    def tree(self) -> ApproxRadixTree:
        return self._tree

    def update_report(
        self, worker_id: str, page_size: int, hashes: Iterable[int], received_at: float | None = None
    ) -> None:
        if page_size <= 0:
            return
        at = time.monotonic() if received_at is None else received_at
        self._reports[worker_id] = ReportDigest(page_size, frozenset(hashes), at)

    def remove_worker(self, worker_id: str) -> None:
        self._reports.pop(worker_id, None)
        self._tree.remove_worker(worker_id)

    def record_routed(self, tokens: Sequence[int], worker_id: str, now: float | None = None) -> None:
        """The router sent ``tokens`` to ``worker_id`` at ``now`` (None: monotonic time)."""
        self._tree.insert(tokens, worker_id, now=now)

    def estimate(self, tokens: Sequence[int], worker_ids: Iterable[str]) -> dict[str, int]:
        """Leading tokens of ``tokens`` each worker is estimated to hold."""
        from_tree = self._tree.match(tokens)
        estimates = dict.fromkeys(worker_ids, 0)
        # Workers usually share one page size: hash the prompt once per size, not once per worker.
        hashes_by_page_size: dict[int, list[int]] = {}
        # Most workers hold nothing of a given prompt. Only those the tree names, those with no
        # report (the tree is all there is) and those whose report has the first page go through
        # the rules below; every other estimate stays 0 after one set lookup.
        for worker_id in estimates:
            report = self._reports.get(worker_id)
            if report is None:
                tree = from_tree.get(worker_id)
                estimates[worker_id] = tree.tokens if tree else 0
                continue
            hashes = hashes_by_page_size.get(report.page_size)
            if hashes is None:
                hashes = hashes_by_page_size[report.page_size] = page_hashes(tokens, report.page_size)
            if worker_id in from_tree or (hashes and hashes[0] in report.hashes):
                estimates[worker_id] = self._reconcile(tokens, worker_id, report, hashes, from_tree)
        return estimates

    def _reconcile(
        self,
        tokens: Sequence[int],
        worker_id: str,
        report: ReportDigest,
        hashes: list[int],
        from_tree: dict[str, WorkerMatch],
    ) -> int:
        """One worker's estimate where its report and the router's tree may disagree (module doc)."""
        tree = from_tree.get(worker_id)
        tree_tokens = tree.tokens if tree else 0
        reported = matched_pages(hashes, report.hashes) * report.page_size
        # The report only sees whole pages; a tree match inside the last page is not contradicted.
        tree_pages = tree_tokens - tree_tokens % report.page_size
        stale_tree = tree is not None and report.received_at > tree.last_access + self._config.report_grace_s
        if reported < tree_pages and stale_tree:
            self._tree.forget(tokens, worker_id, reported)
            return reported
        if reported > tree_tokens:
            self._tree.insert(tokens[:reported], worker_id, now=report.received_at)
            return reported
        return tree_tokens
