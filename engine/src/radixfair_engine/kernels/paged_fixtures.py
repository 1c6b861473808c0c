"""Random paged K/V contexts for the attention kernels' tests, GPU check and benchmark.

Pages are handed out in a random order, so every sequence's context is scattered
over the pool as the radix cache would leave it after sharing and eviction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PagedContext:
    """B sequences whose last ``query_lens[b]`` of ``seq_lens[b]`` tokens are new this step."""

    k_cache: torch.Tensor  # [num_pages, page_size, Hkv, D]
    v_cache: torch.Tensor
    page_table: torch.Tensor  # [B, max_pages] int32, padded with 0
    seq_lens: torch.Tensor  # [B] int32
    query_start_loc: torch.Tensor  # [B + 1] int32
    slot_mapping: torch.Tensor  # [T] int64, slots of the new tokens
    positions: torch.Tensor  # [T] int64
    seq_lens_host: list[int]
    query_lens_host: list[int]

    @property
    def query_start_host(self) -> list[int]:
        starts = [0]
        for length in self.query_lens_host:
            starts.append(starts[-1] + length)
        return starts


def random_paged_context(
    seq_lens: list[int],
    query_lens: list[int],
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    spare_pages: int = 3,
) -> PagedContext:
    """Random K/V (never zeros) in a shuffled page pool with ``spare_pages`` pages nobody owns."""
    if any(q > s for q, s in zip(query_lens, seq_lens)):
        raise ValueError("a sequence cannot have more new tokens than context")
    pages_per_seq = [-(-length // page_size) for length in seq_lens]
    num_pages = sum(pages_per_seq) + spare_pages
    order = torch.randperm(num_pages).tolist()
    page_table = torch.zeros((len(seq_lens), max(1, max(pages_per_seq, default=1))), dtype=torch.int32)
    slots: list[int] = []
    positions: list[int] = []
    taken = 0
    for b, (seq_len, query_len) in enumerate(zip(seq_lens, query_lens)):
        pages = order[taken : taken + pages_per_seq[b]]
        taken += pages_per_seq[b]
        page_table[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        for pos in range(seq_len - query_len, seq_len):
            slots.append(pages[pos // page_size] * page_size + pos % page_size)
            positions.append(pos)
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    starts = [0]
    for length in query_lens:
        starts.append(starts[-1] + length)
    return PagedContext(
        k_cache=torch.randn(shape, dtype=dtype, device=device),
        v_cache=torch.randn(shape, dtype=dtype, device=device),
        page_table=page_table.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        seq_lens_host=list(seq_lens),
        query_lens_host=list(query_lens),
    )


def random_shared_prefix_context(
    seq_lens: list[int],
    group_of: list[int],
    shared_tokens: list[int],
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    spare_pages: int = 3,
) -> PagedContext:
    """Decode contexts (one new token each) where groups share leading pages, as the radix cache leaves them.

    Sequence b is in group ``group_of[b]`` (-1: none); the whole pages of its group's
    ``shared_tokens[g]`` are the same physical pages for every member; a page the shared
    prefix ends inside, and everything after, is the sequence's own. Page ids are shuffled.
    """
    if any(g >= 0 and shared_tokens[g] > length for g, length in zip(group_of, seq_lens)):
        raise ValueError("a sequence cannot be shorter than its group's shared prefix")
    next_page = 0

    def fresh(count: int) -> list[int]:
        nonlocal next_page
        next_page += count
        return list(range(next_page - count, next_page))

    group_pages = [fresh(tokens // page_size) for tokens in shared_tokens]
    tables: list[list[int]] = []
    for seq_len, group in zip(seq_lens, group_of):
        shared = group_pages[group] if group >= 0 else []
        tables.append(shared + fresh(-(-seq_len // page_size) - len(shared)))
    num_pages = next_page + spare_pages
    order = torch.randperm(num_pages).tolist()
    page_table = torch.zeros((len(seq_lens), max(1, max(map(len, tables), default=1))), dtype=torch.int32)
    slots: list[int] = []
    for b, (seq_len, pages) in enumerate(zip(seq_lens, tables)):
        pages = [order[p] for p in pages]
        page_table[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        if seq_len:
            slots.append(pages[(seq_len - 1) // page_size] * page_size + (seq_len - 1) % page_size)
    query_lens = [min(1, length) for length in seq_lens]
    starts = [0]
    for length in query_lens:
        starts.append(starts[-1] + length)
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    return PagedContext(
        k_cache=torch.randn(shape, dtype=dtype, device=device),
        v_cache=torch.randn(shape, dtype=dtype, device=device),
        page_table=page_table.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        positions=torch.tensor(
            [length - 1 for length in seq_lens if length], dtype=torch.int64, device=device
        ),
        seq_lens_host=list(seq_lens),
        query_lens_host=query_lens,
    )
