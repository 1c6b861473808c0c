"""Which sequences of a decode batch share a cached prefix, found from their page tables.

The radix cache hands every request that matches a cached prefix the same physical
pages for it, so two sequences whose page tables start with the same page ids share
those tokens' K/V. Cascade decode attention (``cascade_decode_attention``) reads
such a shared prefix once per group instead of once per sequence; this module
finds the groups on the host, with numpy, from the batch's page tables.

Only whole pages are shared, and never the page that holds a sequence's newest token
(it is being written this step): a prefix that ends mid-page leaves that page to
each sequence's own part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from radixfair_engine.config import EngineConfig

# Anchors tried per first page: each costs one vectorised compare of the key's page-table rows.
_ANCHORS_PER_KEY = 8


@dataclass(frozen=True)
class PrefixSharingConfig:
    """When grouping pays: a group must save at least ``min_saved_tokens`` K/V reads per layer.

    A group of n sequences sharing p tokens saves (n - 1) * p token reads; below the
    threshold the extra launches cost more than the bytes saved, and a batch with no
    group that pays runs the plain decode kernel. The default is measured, not derived: on
    the H200 (bench/results/gpu_cascade_h200.md, 2026-11-30, SmolLM2-135M shapes, batch 128)
    the engine's decode step with cascade was faster than with the plain kernel for a
    4,096-token shared prefix (520k tokens saved) and slower for 1,024 (130k saved), so
    grouping starts between the two until a later run moves it. ``block_m`` is the query
    rows one prefix program holds (sequences * query heads per KV head).
    """

    enabled: bool = True
    min_group_size: int = 2
    min_shared_pages: int = 1
    min_saved_tokens: int = EngineConfig.cascade_min_saved_tokens
    block_m: int = 64
    # Both parts in one launch plus a merge launch, instead of the shared part, then the own part
    # with the merge in its epilogue (kernels.cascade_decode_attention); off until measured.
    concurrent_parts: bool = False


@dataclass(frozen=True)
class PrefixGroups:
    """A decode batch's shared-prefix groups, as the cascade kernel reads them (all int32).

    Sequence b reads its first ``seq_prefix_len[b]`` tokens through its group (0: in no
    group) and the rest, up to ``seq_lens[b]``, from its own pages. An item is one
    program's slice of a group: up to ``block_m // gqa`` member sequences, listed in
    ``members[item_member_start[i] : + item_member_count[i]]``, attending over the
    first ``item_prefix_len[i]`` tokens of page-table row ``item_row[i]``. Items past
    ``num_items`` have no members (fixed-size buffers under CUDA graphs).
    """

    seq_prefix_len: torch.Tensor  # [B]
    item_row: torch.Tensor  # [I]
    item_prefix_len: torch.Tensor  # [I]
    item_member_start: torch.Tensor  # [I]
    item_member_count: torch.Tensor  # [I]
    members: torch.Tensor  # [B], grouped sequences first, then padding
    # Host facts for choosing the launch shape (under a graph: the capture's bounds).
    num_items: int
    max_prefix_len: int
    max_own_len: int
    block_m: int
    concurrent_parts: bool = False


@dataclass(frozen=True)
class HostGroups:
    """The numpy arrays behind ``PrefixGroups`` (see there), before they go to the device."""

    seq_prefix_len: np.ndarray
    item_row: np.ndarray
    item_prefix_len: np.ndarray
    item_member_start: np.ndarray
    item_member_count: np.ndarray
    members: np.ndarray
    num_items: int
    max_prefix_len: int
    max_own_len: int
    block_m: int
    concurrent_parts: bool = False

    def to_device(
        self, upload: Callable[[torch.Tensor], torch.Tensor], capacity: int | None = None
    ) -> PrefixGroups:
        """Tensors moved by ``upload``; item arrays padded with empty items to ``capacity``."""
        items = self.num_items if capacity is None else capacity

        def up(array: np.ndarray, length: int) -> torch.Tensor:
            padded = np.zeros(length, dtype=np.int32)
            padded[: len(array)] = array
            return upload(torch.from_numpy(padded))

        return PrefixGroups(
            seq_prefix_len=up(self.seq_prefix_len, len(self.seq_prefix_len)),
            item_row=up(self.item_row, items),
            item_prefix_len=up(self.item_prefix_len, items),
            item_member_start=up(self.item_member_start, items),
            item_member_count=up(self.item_member_count, items),
            members=up(self.members, len(self.seq_prefix_len)),
            num_items=self.num_items,
            max_prefix_len=self.max_prefix_len,
            max_own_len=self.max_own_len,
            block_m=self.block_m,
            concurrent_parts=self.concurrent_parts,
        )


def find_prefix_groups(
    page_table: np.ndarray, seq_lens: np.ndarray, page_size: int, gqa: int, config: PrefixSharingConfig
) -> HostGroups | None:
    """Groups of sequences sharing leading pages, or None when no group pays (see PrefixSharingConfig).

    page_table [B, max_pages] and seq_lens [B] integer arrays (a row of length 0 is padding
    and joins no group). Sequences are keyed by their first page; within a key, the shared
    length of the k members with the longest common prefix with an anchor (the first member
    left) is the k-th longest, and k is chosen to save the most reads ((k - 1) * shared).
    Those left out try again with the next anchor (two system prompts behind one shared
    template page are two groups), up to ``_ANCHORS_PER_KEY`` anchors, which bounds the host
    time a step spends here. Sequences in no group that pays are in no group.
    """
    if not config.enabled:
        return None
    batch = len(seq_lens)
    seq_lens = np.asarray(seq_lens[:batch], dtype=np.int64)
    table = np.asarray(page_table[:batch])
    # Whole pages strictly before the page holding the newest token (written this step).
    whole_pages = np.maximum(seq_lens - 1, 0) // page_size
    candidates = np.flatnonzero(whole_pages >= config.min_shared_pages)
    if len(candidates) < config.min_group_size:
        return None
    if not _may_pay(len(candidates), int(whole_pages[candidates].max()), page_size, config):
        # The common case on a long shared prefix below the threshold (1,024 tokens at batch 128):
        # decided from the batch's shape before any sort or compare.
        return None
    # This runs on the host every decode step: a batch of unrelated prompts (every first page its
    # own) must cost a few cheap numpy calls (np.unique with inverse costs several times a sort).
    first_pages = np.sort(table[candidates, 0])
    if config.min_group_size > 1 and not (first_pages[1:] == first_pages[:-1]).any():
        return None
    _, inverse = np.unique(table[candidates, 0], return_inverse=True)
    counts = np.bincount(inverse)
    if counts.max() < config.min_group_size:
        return None
    # Members of each key in ascending row order (a stable sort keeps candidates' order).
    by_key = candidates[np.argsort(inverse, kind="stable")]
    ends = np.cumsum(counts)
    per_item = max(1, config.block_m // gqa)
    seq_prefix_len = np.zeros(batch, dtype=np.int32)
    members: list[np.ndarray] = []
    items: list[tuple[int, int, int, int]] = []  # row, prefix_len, member_start, member_count
    member_total = 0
    for key_index in np.flatnonzero(counts >= config.min_group_size):
        left = by_key[ends[key_index] - counts[key_index] : ends[key_index]]
        if not _may_pay(len(left), int(whole_pages[left].max()), page_size, config):
            continue
        for _ in range(_ANCHORS_PER_KEY):
            if len(left) < config.min_group_size:
                break
            chosen, shared_pages, runs = _best_prefix(table, whole_pages, left)
            shared = shared_pages * page_size
            count = len(chosen)
            pays = count >= config.min_group_size and shared_pages >= config.min_shared_pages
            saved = (count - 1) * shared
            if not pays or saved < config.min_saved_tokens:
                # The skip's bound is on reads saved: sound only when this anchor fell short of those.
                # Its best may instead have been too small a group (min_group_size > 2), where another
                # anchor's best, saving less, is a larger group that pays.
                if saved < config.min_saved_tokens and not _may_share_more(
                    table, whole_pages, left[1:], runs[1:]
                ):
                    break  # no other anchor can do better (see _may_share_more)
                left = left[1:]  # this anchor shares too little with anyone
                continue
            left = left[~np.isin(left, chosen)]
            seq_prefix_len[chosen] = shared
            members.append(chosen)
            for first in range(0, count, per_item):
                items.append((int(chosen[0]), shared, member_total + first, min(per_item, count - first)))
            member_total += count
    if not items:
        return None
    columns = np.array(items, dtype=np.int32).T
    return HostGroups(
        seq_prefix_len=seq_prefix_len,
        item_row=columns[0],
        item_prefix_len=columns[1],
        item_member_start=columns[2],
        item_member_count=columns[3],
        members=np.concatenate(members).astype(np.int32),
        num_items=len(items),
        max_prefix_len=int(columns[1].max()),
        max_own_len=int((seq_lens - seq_prefix_len).max()),
        block_m=config.block_m,
        concurrent_parts=config.concurrent_parts,
    )


def _may_pay(count: int, max_whole_pages: int, page_size: int, config: PrefixSharingConfig) -> bool:
    """Whether ``count`` sequences, none with more than ``max_whole_pages`` whole pages, could form a
    group that pays: the most any group of them saves is all but one reading all those pages."""
    return (count - 1) * max_whole_pages * page_size >= config.min_saved_tokens


def _best_prefix(
    table: np.ndarray, whole_pages: np.ndarray, group: np.ndarray
) -> tuple[np.ndarray, int, np.ndarray]:
    """The members (first member first) and whole pages they share that save the most reads, and
    each member's shared whole pages with the first (in ``group``'s order)."""
    width = int(whole_pages[group].max())
    first = group[0]
    same = table[group, :width] == table[first, :width]
    # Leading run of pages equal to the first member's, capped by each member's own whole pages.
    run = np.where(same.all(axis=1), width, np.argmin(same, axis=1))
    common = np.minimum(run, np.minimum(whole_pages[group], whole_pages[first]))
    order = np.argsort(-common, kind="stable")
    ranked = common[order]
    # Taking the k members with the longest runs shares ranked[k - 1] pages and saves (k - 1) of them.
    savings = np.arange(len(ranked)) * ranked
    best = int(np.argmax(savings))
    chosen = np.sort(group[order[: best + 1]])
    if chosen[0] != first:  # the first member's own run is its whole length, so it ranks first
        chosen = np.concatenate(([first], chosen[chosen != first]))
    return chosen, int(ranked[best]), common


def _may_share_more(table: np.ndarray, whole_pages: np.ndarray, rest: np.ndarray, runs: np.ndarray) -> bool:
    """Whether another anchor among ``rest`` could save more reads than the one whose ``runs`` (each
    member's shared whole pages with it) were just ranked.

    Prefixes nest: two members x, y of rest share min(runs[x], runs[y]) pages when those differ, and
    at least that many when they are equal. Another anchor a therefore shares no more with any
    member than the ranked anchor does, unless a and the member share pages beyond their common
    run, which needs both to hold a further whole page and the same page id right after the run.
    With no two such members agreeing on that page, every other anchor's savings are bounded by
    the ranked one's: when those fell short of ``min_saved_tokens``, the rest of the key is skipped
    (the caller asks only then: a bound on savings says nothing about a group too small to pay).
    This keeps a batch behind one shared system prompt (every suffix its own) to one compare per
    step instead of one per anchor tried.
    """
    extendable = whole_pages[rest] > runs
    if np.count_nonzero(extendable) < 2:
        return False
    at = runs[extendable].astype(np.int64)
    next_page = table[rest[extendable], at].astype(np.int64)
    keys = np.sort((at << 32) | (next_page & 0xFFFFFFFF))
    return bool((keys[1:] == keys[:-1]).any())
