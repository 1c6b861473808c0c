# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""Paged decode attention with grouped-query heads: one new token per sequence.

Shapes and dtypes:
  q                 [B, Hq, D] bf16/fp16/fp32 (row b is sequence b's only new token), D a power of two
  k_cache, v_cache  [num_pages, page_size, Hkv, D] contiguous, q's dtype; Hq = G * Hkv
  page_table        [B, max_pages] int32, sequence b's context lives in pages page_table[b, :]
  seq_lens          [B] int32, context length including the new token (0 gives a zero row)
  split_counters    [>= B * Hkv] int32, zero (optional; see below), left zero
  returns           [B, Hq, D] in q's dtype

One program owns one (sequence, KV head, split): it loads the G query heads
that share the KV head as one [G padded to 16, D] tile, so each K/V tile is
read from memory once for the whole group and both products run on the tensor
cores. Long contexts are cut into ``num_splits`` ranges (flash-decoding) so
that small batches still fill the GPU; the splits' partial results are merged
exactly (log-sum-exp). Split ranges are computed on the device from seq_lens,
so one grid serves any lengths (what a captured CUDA graph needs).

Two ways to merge. Without ``split_counters``, a second, tiny kernel merges
(two launches). With them, one launch: every split program stores its partial,
then counts itself in on its (sequence, KV head)'s counter with an acq_rel
atomic, and the program that arrives last merges the group's partials and sets
the counter back to zero, so the next launch (or graph replay) finds it zeroed.
Split programs that find no keys arrive too. The counters must live as long as
any CUDA graph that captured them and must not be shared by launches that can
run at the same time (two streams).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous, interpreted, output_buffer

_LOG2E = 1.4426950408889634
# Keys per tile; 128 was fastest at B=128, ctx 1,024 on the H100 (bench/results/kernels.md sweep).
DEFAULT_BLOCK_N = 128


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    page_table_ptr,
    seq_lens_ptr,
    out_ptr,
    partial_out_ptr,
    partial_lse_ptr,
    split_counters_ptr,
    q_stride_b,
    q_stride_h,
    out_stride_b,
    out_stride_h,
    page_table_stride,
    scale_log2,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    MERGE_IN_KERNEL: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    # KV heads are the fastest grid axis: the programs reading one sequence's pages run side
    # by side, so each page's 128-byte head rows are fetched from DRAM together.
    kv_head = tl.program_id(0)
    seq = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    # Split ranges are whole BLOCK_N tiles, so only the last tile of a sequence is partial.
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    group = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + group
    dims = tl.arange(0, HEAD_DIM)
    group_mask = (group < GROUP)[:, None]
    q = tl.load(
        q_ptr + seq * q_stride_b + heads[:, None] * q_stride_h + dims[None, :], mask=group_mask, other=0.0
    )

    row_max = tl.full([BLOCK_G], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    page_row = page_table_ptr + seq.to(tl.int64) * page_table_stride
    for block_start in range(start, end, BLOCK_N):
        keys = block_start + tl.arange(0, BLOCK_N)
        key_mask = keys < end
        pages = tl.load(page_row + keys // PAGE_SIZE, mask=key_mask, other=0).to(tl.int64)
        slots = pages * PAGE_SIZE + keys % PAGE_SIZE
        kv_offsets = (slots * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM)[:, None] + dims[None, :]
        k = tl.load(k_cache_ptr + kv_offsets, mask=key_mask[:, None], other=0.0)
        scores = _dot(q, tl.trans(k), UPCAST_DOT, IEEE_DOT) * scale_log2
        scores = tl.where(key_mask[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        correction = tl.exp2(row_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        row_sum = row_sum * correction + tl.sum(probs, axis=1)
        v = tl.load(v_cache_ptr + kv_offsets, mask=key_mask[:, None], other=0.0)
        acc = acc * correction[:, None] + _dot(probs.to(v.dtype), v, UPCAST_DOT, IEEE_DOT)
        row_max = new_max

    # An empty range (a split past the end, or a padded sequence of length 0) has row_sum 0.
    safe_sum = tl.where(row_sum > 0, row_sum, 1.0)
    result = acc / safe_sum[:, None]
    if NUM_SPLITS == 1:
        out = out_ptr + seq * out_stride_b + heads[:, None] * out_stride_h + dims[None, :]
        tl.store(out, result.to(out_ptr.dtype.element_ty), mask=group_mask)
    else:
        # Partials are [B, Hq, NUM_SPLITS, D] fp32 and their log2-sum-exp2 [B, Hq, NUM_SPLITS].
        lse = tl.where(row_sum > 0, row_max + tl.log2(safe_sum), float("-inf"))
        slot = (seq * NUM_KV_HEADS * GROUP + heads) * NUM_SPLITS + split
        tl.store(partial_lse_ptr + slot, lse, mask=group < GROUP)
        tl.store(partial_out_ptr + slot[:, None] * HEAD_DIM + dims[None, :], result, mask=group_mask)
        if MERGE_IN_KERNEL:
            _arrive_and_merge_last(
                partial_out_ptr,
                partial_lse_ptr,
                split_counters_ptr + seq * NUM_KV_HEADS + kv_head,
                out_ptr + seq * out_stride_b,
                out_stride_h,
                seq * NUM_KV_HEADS * GROUP + kv_head * GROUP,
                kv_head * GROUP,
                GROUP,
                HEAD_DIM,
                NUM_SPLITS,
            )


@triton.jit
def _arrive_and_merge_last(
    partial_out_ptr,
    partial_lse_ptr,
    counter_ptr,
    seq_out_ptr,
    out_stride_h,
    first_row,
    first_head,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """Counts this split program in; the last of the NUM_SPLITS merges the GROUP heads' partials.

    Ordering: the barrier puts every thread's partial stores before the (single-thread) atomic,
    whose release publishes them at GPU scope; the last arrival's acquire (and the barrier Triton
    puts after a scalar atomic to share its result) orders the merge's loads after all of them.
    The merge loads bypass L1 (``.cg``), which a peer SM's stores never update.
    """
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    if arrived == NUM_SPLITS - 1:
        # Unrolled: as a loop it took 113 registers on sm_90 (SmolLM2 shapes), unrolled 96 as before.
        for g in tl.static_range(GROUP):
            _merge_head(
                partial_out_ptr,
                partial_lse_ptr,
                (first_row + g) * NUM_SPLITS,
                seq_out_ptr + (first_head + g) * out_stride_h,
                HEAD_DIM,
                NUM_SPLITS,
                ".cg",
            )
        # Every split has arrived, so no program of this launch touches the counter again, and
        # the next launch on the stream sees the zero.
        tl.store(counter_ptr, 0)


@triton.jit
def _merge_head(
    partial_out_ptr,
    partial_lse_ptr,
    base,
    head_out_ptr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    CACHE: tl.constexpr,
):
    """One head's NUM_SPLITS partials (rows base.. of the partial buffers) -> its output row."""
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    lse = tl.load(partial_lse_ptr + base + splits, cache_modifier=CACHE)
    top = tl.max(lse, axis=0)
    # All splits empty only for a zero-length (padded) sequence: write zeros, not NaN.
    top = tl.where(top == float("-inf"), 0.0, top)
    weights = tl.exp2(lse - top)
    partial = tl.load(
        partial_out_ptr + (base + splits)[:, None] * HEAD_DIM + dims[None, :], cache_modifier=CACHE
    )
    total = tl.sum(weights, axis=0)
    merged = tl.sum(partial * weights[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(head_out_ptr + dims, merged.to(head_out_ptr.dtype.element_ty))


@triton.jit
def _merge_splits_kernel(
    partial_out_ptr,
    partial_lse_ptr,
    out_ptr,
    out_stride_b,
    out_stride_h,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    _merge_head(
        partial_out_ptr,
        partial_lse_ptr,
        (seq * NUM_HEADS + head) * NUM_SPLITS,
        out_ptr + seq * out_stride_b + head * out_stride_h,
        HEAD_DIM,
        NUM_SPLITS,
        "",
    )


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int = 1,
    block_n: int = DEFAULT_BLOCK_N,
    num_warps: int = 4,
    num_stages: int = 2,
    split_counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, Hq, D] over paged K/V -> [B, Hq, D]; ``num_splits`` must be a power of two.

    ``split_counters`` (``new_split_counters``): with several splits, merge in the same launch
    (the last split program of each sequence and KV head merges); without, a second kernel merges.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads, page_size = k_cache.shape[2], k_cache.shape[1]
    _check(q, k_cache, v_cache, page_table, seq_lens, num_splits)
    if split_counters is not None:
        _check_counters(split_counters, batch * num_kv_heads, q.device)
    out = output_buffer(out, q, tuple(q.shape))
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    if num_splits > 1:
        partial_out = torch.empty(
            (batch, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device
        )
        partial_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        partial_out = partial_lse = out  # unused
    merge_in_kernel = num_splits > 1 and split_counters is not None
    _decode_kernel[(num_kv_heads, batch, num_splits)](
        q,
        k_cache,
        v_cache,
        page_table,
        seq_lens,
        out,
        partial_out,
        partial_lse,
        split_counters if merge_in_kernel else seq_lens,  # unused without the in-kernel merge
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        page_table.stride(0),
        scale * _LOG2E,
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        PAGE_SIZE=page_size,
        BLOCK_N=block_n,
        NUM_SPLITS=num_splits,
        MERGE_IN_KERNEL=merge_in_kernel,
        UPCAST_DOT=interpreted(q),
        IEEE_DOT=q.dtype == torch.float32,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1 and not merge_in_kernel:
        _merge_splits_kernel[(batch, num_heads)](
            partial_out,
            partial_lse,
            out,
            out.stride(0),
            out.stride(1),
            NUM_HEADS=num_heads,
            HEAD_DIM=head_dim,
            NUM_SPLITS=num_splits,
            num_warps=1,
        )
    return out


def new_split_counters(batch: int, num_kv_heads: int, device: torch.device | str) -> torch.Tensor:
    """Zeroed arrival counters for one-launch split decode of up to ``batch`` sequences.

    Allocate them once, outside any CUDA graph capture, and keep them alive as long as the
    graphs that use them: every launch leaves them zero again, so they are never re-zeroed.
    """
    return torch.zeros(batch * num_kv_heads, dtype=torch.int32, device=device)


def _check(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    num_splits: int,
) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape or k_cache.shape[3] != q.shape[2]:
        raise ValueError("decode attention wants q [B, Hq, D] and caches [num_pages, page_size, Hkv, D]")
    if q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"{q.shape[1]} query heads do not group evenly over {k_cache.shape[2]} KV heads")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.dtype != q.dtype:
        raise ValueError("the caches must be contiguous and of q's dtype")
    if page_table.dtype != torch.int32 or seq_lens.dtype != torch.int32 or seq_lens.shape != (q.shape[0],):
        raise ValueError("page_table [B, max_pages] and seq_lens [B] must be int32")
    if num_splits < 1 or num_splits & (num_splits - 1) or q.shape[2] & (q.shape[2] - 1):
        raise ValueError("num_splits and head_dim must be powers of two")
    check_last_dim_contiguous("q", q)


def _check_counters(counters: torch.Tensor, needed: int, device: torch.device) -> None:
    if counters.dtype != torch.int32 or counters.device != device or not counters.is_contiguous():
        raise ValueError(f"split_counters must be contiguous int32 on {device}, got {counters.dtype}")
    if counters.numel() < needed:
        raise ValueError(f"split_counters holds {counters.numel()} counters; B * Hkv = {needed} needed")


def choose_num_splits(
    batch: int, num_kv_heads: int, max_seq_len: int, num_sms: int, block_n: int = DEFAULT_BLOCK_N
) -> int:
    """Enough splits that the grid covers the SMs about twice, never below one tile per split."""
    programs = max(1, batch * num_kv_heads)
    wanted = math.ceil(2 * num_sms / programs)
    most = max(1, max_seq_len // (2 * block_n))
    splits = 1
    while splits * 2 <= min(wanted, most, 64):
        splits *= 2
    return splits
