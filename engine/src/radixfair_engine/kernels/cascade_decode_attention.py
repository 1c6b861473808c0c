# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""Cascade decode attention: a prefix shared by a group of sequences is read once per group.

Shapes and dtypes (as ``paged_decode_attention``):
  q                 [B, Hq, D] bf16/fp16/fp32, one new token per sequence, D a power of two
  k_cache, v_cache  [num_pages, page_size, Hkv, D] contiguous, q's dtype; Hq = gqa * Hkv
  page_table        [B, max_pages] int32;  seq_lens [B] int32 (0: a padding row, gets zeros)
  groups            PrefixGroups (kernels.prefix_groups): who shares which leading pages
  returns           [B, Hq, D] in q's dtype

Softmax attention over a context split in two parts is exactly recoverable from each
part's normalised output o_i and log-sum-exp l_i: o = sum_i exp(l_i - l) o_i with
l = log sum_i exp(l_i) (Hydragen; FlashInfer's cascade attention). So each sequence's
attention is computed as
  1. the shared part: one program per (KV head, item, split) stacks the queries of up to
     ``block_m // gqa`` member sequences ([block_m, D], member-major) and runs them over
     the group's prefix pages, so a prefix K/V tile is loaded once for all of them and
     both products are [block_m x BLOCK_N] tensor-core matrix products instead of
     matrix-vector ones; it writes fp32 partials and their log2-sum-exp2;
  2. the own part: the paged decode loop over keys seq_prefix_len[b]..seq_lens[b] of
     sequence b's own pages, whose epilogue merges in the shared partials (one split)
     or whose partials a small merge kernel combines with them (several splits).
Every grid is sized from buffer shapes, never from group contents, so one captured
CUDA graph serves any grouping of its batch size.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous, interpreted, output_buffer
from radixfair_engine.kernels.decode_attention import DEFAULT_BLOCK_N, _dot
from radixfair_engine.kernels.prefix_groups import PrefixGroups

_LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile_loop(
    q,
    k_cache_ptr,
    v_cache_ptr,
    page_row,
    start,
    end,
    kv_head,
    scale_log2,
    BLOCK_M: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    """Online softmax of q [BLOCK_M, D] over keys start..end of one page row: (acc, max, sum), log2 units."""
    dims = tl.arange(0, HEAD_DIM)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
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
    return acc, row_max, row_sum


@triton.jit
def _shared_part(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    page_table_ptr,
    item_row_ptr,
    item_prefix_len_ptr,
    item_member_start_ptr,
    item_member_count_ptr,
    members_ptr,
    prefix_out_ptr,
    prefix_lse_ptr,
    q_stride_b,
    q_stride_h,
    page_table_stride,
    scale_log2,
    kv_head,
    item,
    split,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    """One (KV head, item, split) of the shared part: its members' queries over one prefix range."""
    count = tl.load(item_member_count_ptr + item)
    if count > 0:  # an empty item (a CUDA-graph buffer slot) stores nothing
        prefix_len = tl.load(item_prefix_len_ptr + item)
        split_len = tl.cdiv(tl.cdiv(prefix_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
        start = split * split_len
        end = tl.minimum(start + split_len, prefix_len)
        # Row r is query head r % GROUP (of this KV head) of member r // GROUP.
        rows = tl.arange(0, BLOCK_M)
        member = rows // GROUP
        valid = member < count
        first = tl.load(item_member_start_ptr + item)
        seq = tl.load(members_ptr + first + member, mask=valid, other=0).to(tl.int64)
        heads = kv_head * GROUP + rows % GROUP
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(
            q_ptr + seq[:, None] * q_stride_b + heads[:, None] * q_stride_h + dims[None, :],
            mask=valid[:, None],
            other=0.0,
        )
        row = tl.load(item_row_ptr + item).to(tl.int64)
        acc, row_max, row_sum = _attend_tile_loop(
            q,
            k_cache_ptr,
            v_cache_ptr,
            page_table_ptr + row * page_table_stride,
            start,
            end,
            kv_head,
            scale_log2,
            BLOCK_M,
            NUM_KV_HEADS,
            HEAD_DIM,
            PAGE_SIZE,
            BLOCK_N,
            UPCAST_DOT,
            IEEE_DOT,
        )
        # A split past the prefix's end stores lse -inf (weight 0 in the merge).
        safe_sum = tl.where(row_sum > 0, row_sum, 1.0)
        lse = tl.where(row_sum > 0, row_max + tl.log2(safe_sum), float("-inf"))
        # Partials are [B, Hq, NUM_SPLITS, D] fp32 and their log2-sum-exp2 [B, Hq, NUM_SPLITS].
        slot = (seq * (NUM_KV_HEADS * GROUP) + heads) * NUM_SPLITS + split
        tl.store(prefix_lse_ptr + slot, lse, mask=valid)
        tl.store(
            prefix_out_ptr + slot[:, None] * HEAD_DIM + dims[None, :],
            acc / safe_sum[:, None],
            mask=valid[:, None],
        )


@triton.jit
def _shared_prefix_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    page_table_ptr,
    item_row_ptr,
    item_prefix_len_ptr,
    item_member_start_ptr,
    item_member_count_ptr,
    members_ptr,
    prefix_out_ptr,
    prefix_lse_ptr,
    q_stride_b,
    q_stride_h,
    page_table_stride,
    scale_log2,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    item = tl.program_id(1)
    # Under a graph most programs are empty slots (the grid is sized for the batch; H200 run of
    # 2026-11-30: a step with cascade was slower than the attention alone predicted): leave first.
    if tl.load(item_member_count_ptr + item) == 0:
        return
    _shared_part(
        q_ptr,
        k_cache_ptr,
        v_cache_ptr,
        page_table_ptr,
        item_row_ptr,
        item_prefix_len_ptr,
        item_member_start_ptr,
        item_member_count_ptr,
        members_ptr,
        prefix_out_ptr,
        prefix_lse_ptr,
        q_stride_b,
        q_stride_h,
        page_table_stride,
        scale_log2,
        tl.program_id(0),
        item,
        tl.program_id(2),
        GROUP,
        BLOCK_M,
        NUM_KV_HEADS,
        HEAD_DIM,
        PAGE_SIZE,
        BLOCK_N,
        NUM_SPLITS,
        UPCAST_DOT,
        IEEE_DOT,
    )


@triton.jit
def _own_partial(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    page_table_ptr,
    seq_lens_ptr,
    seq_prefix_len_ptr,
    own_out_ptr,
    own_lse_ptr,
    q_stride_b,
    q_stride_h,
    page_table_stride,
    scale_log2,
    kv_head,
    seq,
    split,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    """One (KV head, sequence, split) of the own part, stored as a partial for the merge kernel."""
    seq_len = tl.load(seq_lens_ptr + seq)
    own_start = tl.load(seq_prefix_len_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len - own_start, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = own_start + split * split_len
    end = tl.minimum(start + split_len, seq_len)
    group = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + group
    dims = tl.arange(0, HEAD_DIM)
    in_group = group < GROUP
    q = tl.load(
        q_ptr + seq * q_stride_b + heads[:, None] * q_stride_h + dims[None, :],
        mask=in_group[:, None],
        other=0.0,
    )
    acc, row_max, row_sum = _attend_tile_loop(
        q,
        k_cache_ptr,
        v_cache_ptr,
        page_table_ptr + seq.to(tl.int64) * page_table_stride,
        start,
        end,
        kv_head,
        scale_log2,
        BLOCK_G,
        NUM_KV_HEADS,
        HEAD_DIM,
        PAGE_SIZE,
        BLOCK_N,
        UPCAST_DOT,
        IEEE_DOT,
    )
    safe_sum = tl.where(row_sum > 0, row_sum, 1.0)
    lse = tl.where(row_sum > 0, row_max + tl.log2(safe_sum), float("-inf"))
    slot = (seq * (NUM_KV_HEADS * GROUP) + heads) * NUM_SPLITS + split
    tl.store(own_lse_ptr + slot, lse, mask=in_group)
    tl.store(
        own_out_ptr + slot[:, None] * HEAD_DIM + dims[None, :],
        acc / safe_sum[:, None],
        mask=in_group[:, None],
    )


@triton.jit
def _both_parts_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    page_table_ptr,
    seq_lens_ptr,
    seq_prefix_len_ptr,
    item_row_ptr,
    item_prefix_len_ptr,
    item_member_start_ptr,
    item_member_count_ptr,
    members_ptr,
    own_out_ptr,
    own_lse_ptr,
    prefix_out_ptr,
    prefix_lse_ptr,
    q_stride_b,
    q_stride_h,
    page_table_stride,
    scale_log2,
    own_programs,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_M: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    OWN_SPLITS: tl.constexpr,
    PREFIX_SPLITS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    # Both parts in one launch, so the shared part's short, latency-bound programs run beside the
    # own part's instead of before them; the merge kernel then combines the partials.
    kv_head = tl.program_id(0)
    index = tl.program_id(1)
    if index < own_programs:
        _own_partial(
            q_ptr,
            k_cache_ptr,
            v_cache_ptr,
            page_table_ptr,
            seq_lens_ptr,
            seq_prefix_len_ptr,
            own_out_ptr,
            own_lse_ptr,
            q_stride_b,
            q_stride_h,
            page_table_stride,
            scale_log2,
            kv_head,
            index // OWN_SPLITS,
            index % OWN_SPLITS,
            GROUP,
            BLOCK_G,
            NUM_KV_HEADS,
            HEAD_DIM,
            PAGE_SIZE,
            BLOCK_N,
            OWN_SPLITS,
            UPCAST_DOT,
            IEEE_DOT,
        )
    else:
        rest = index - own_programs
        _shared_part(
            q_ptr,
            k_cache_ptr,
            v_cache_ptr,
            page_table_ptr,
            item_row_ptr,
            item_prefix_len_ptr,
            item_member_start_ptr,
            item_member_count_ptr,
            members_ptr,
            prefix_out_ptr,
            prefix_lse_ptr,
            q_stride_b,
            q_stride_h,
            page_table_stride,
            scale_log2,
            kv_head,
            rest // PREFIX_SPLITS,
            rest % PREFIX_SPLITS,
            GROUP,
            BLOCK_M,
            NUM_KV_HEADS,
            HEAD_DIM,
            PAGE_SIZE,
            BLOCK_N,
            PREFIX_SPLITS,
            UPCAST_DOT,
            IEEE_DOT,
        )


@triton.jit
def _own_part_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    page_table_ptr,
    seq_lens_ptr,
    seq_prefix_len_ptr,
    prefix_out_ptr,
    prefix_lse_ptr,
    out_ptr,
    own_out_ptr,
    own_lse_ptr,
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
    PREFIX_SPLITS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    kv_head = tl.program_id(0)
    seq = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    own_start = tl.load(seq_prefix_len_ptr + seq)
    own_len = seq_len - own_start
    split_len = tl.cdiv(tl.cdiv(own_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = own_start + split * split_len
    end = tl.minimum(start + split_len, seq_len)

    group = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + group
    dims = tl.arange(0, HEAD_DIM)
    in_group = group < GROUP
    q = tl.load(
        q_ptr + seq * q_stride_b + heads[:, None] * q_stride_h + dims[None, :],
        mask=in_group[:, None],
        other=0.0,
    )
    acc, row_max, row_sum = _attend_tile_loop(
        q,
        k_cache_ptr,
        v_cache_ptr,
        page_table_ptr + seq.to(tl.int64) * page_table_stride,
        start,
        end,
        kv_head,
        scale_log2,
        BLOCK_G,
        NUM_KV_HEADS,
        HEAD_DIM,
        PAGE_SIZE,
        BLOCK_N,
        UPCAST_DOT,
        IEEE_DOT,
    )
    safe_sum = tl.where(row_sum > 0, row_sum, 1.0)
    lse = tl.where(row_sum > 0, row_max + tl.log2(safe_sum), float("-inf"))
    result = acc / safe_sum[:, None]
    base = seq * (NUM_KV_HEADS * GROUP) + heads
    if NUM_SPLITS == 1:
        # Merge the group's prefix partials in (none for a sequence in no group).
        shared = (tl.zeros([BLOCK_G], tl.int32) + own_start) > 0
        prefix_mask = in_group & shared
        top = lse
        for s in tl.static_range(PREFIX_SPLITS):
            part = tl.load(prefix_lse_ptr + base * PREFIX_SPLITS + s, mask=prefix_mask, other=float("-inf"))
            top = tl.maximum(top, part)
        # Only a padding row (no context at all) has every part empty: it gets zeros, not NaN.
        top = tl.where(top == float("-inf"), 0.0, top)
        weight = tl.exp2(lse - top)
        total = weight
        merged = result * weight[:, None]
        for s in tl.static_range(PREFIX_SPLITS):
            part = tl.load(prefix_lse_ptr + base * PREFIX_SPLITS + s, mask=prefix_mask, other=float("-inf"))
            part_weight = tl.exp2(part - top)
            part_out = tl.load(
                prefix_out_ptr + (base * PREFIX_SPLITS + s)[:, None] * HEAD_DIM + dims[None, :],
                mask=prefix_mask[:, None],
                other=0.0,
            )
            merged += part_out * part_weight[:, None]
            total += part_weight
        merged = merged / tl.where(total > 0, total, 1.0)[:, None]
        out = out_ptr + seq * out_stride_b + heads[:, None] * out_stride_h + dims[None, :]
        tl.store(out, merged.to(out_ptr.dtype.element_ty), mask=in_group[:, None])
    else:
        slot = base * NUM_SPLITS + split
        tl.store(own_lse_ptr + slot, lse, mask=in_group)
        tl.store(own_out_ptr + slot[:, None] * HEAD_DIM + dims[None, :], result, mask=in_group[:, None])


@triton.jit
def _merge_parts_kernel(
    own_out_ptr,
    own_lse_ptr,
    prefix_out_ptr,
    prefix_lse_ptr,
    seq_prefix_len_ptr,
    out_ptr,
    out_stride_b,
    out_stride_h,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    OWN_SPLITS: tl.constexpr,
    PREFIX_SPLITS: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    base = seq * NUM_HEADS + head
    dims = tl.arange(0, HEAD_DIM)
    top = tl.load(own_lse_ptr + base * OWN_SPLITS)
    for s in tl.static_range(1, OWN_SPLITS):
        top = tl.maximum(top, tl.load(own_lse_ptr + base * OWN_SPLITS + s))
    shared = tl.load(seq_prefix_len_ptr + seq) > 0
    for s in tl.static_range(PREFIX_SPLITS):
        part = tl.load(prefix_lse_ptr + base * PREFIX_SPLITS + s, mask=shared, other=float("-inf"))
        top = tl.maximum(top, part)
    top = tl.where(top == float("-inf"), 0.0, top)
    merged = tl.zeros([HEAD_DIM], tl.float32)
    total = 0.0
    for s in tl.static_range(OWN_SPLITS):
        weight = tl.exp2(tl.load(own_lse_ptr + base * OWN_SPLITS + s) - top)
        merged += tl.load(own_out_ptr + (base * OWN_SPLITS + s) * HEAD_DIM + dims) * weight
        total += weight
    for s in tl.static_range(PREFIX_SPLITS):
        part = tl.load(prefix_lse_ptr + base * PREFIX_SPLITS + s, mask=shared, other=float("-inf"))
        weight = tl.exp2(part - top)
        part_out = tl.load(
            prefix_out_ptr + (base * PREFIX_SPLITS + s) * HEAD_DIM + dims,
            mask=(tl.zeros([HEAD_DIM], tl.int32) + shared.to(tl.int32)) > 0,
            other=0.0,
        )
        merged += part_out * weight
        total += weight
    merged = merged / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * out_stride_b + head * out_stride_h + dims, merged.to(out_ptr.dtype.element_ty))


def cascade_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    groups: PrefixGroups,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int = 1,
    prefix_splits: int = 1,
    block_n: int = DEFAULT_BLOCK_N,
    num_warps: int = 4,
    prefix_num_warps: int = 4,
    num_stages: int = 2,
    concurrent: bool = False,
) -> torch.Tensor:
    """q [B, Hq, D] over paged K/V with shared prefixes read once per item -> [B, Hq, D].

    ``num_splits`` (own part) and ``prefix_splits`` must be powers of two; the shared-part
    programs hold ``groups.block_m`` query rows (items of at most block_m // gqa members).
    The shared-part grid is (Hkv, len(groups.item_row), prefix_splits): items past
    ``num_items`` are empty and cost one early-exiting program each. ``concurrent`` runs
    both parts in one launch (num_warps for both) and merges in a second.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads, page_size = k_cache.shape[2], k_cache.shape[1]
    block_m = groups.block_m
    _check(q, k_cache, v_cache, page_table, seq_lens, groups, num_splits, prefix_splits)
    out = output_buffer(out, q, tuple(q.shape))
    if batch == 0:
        return out
    gqa = num_heads // num_kv_heads
    f32 = dict(dtype=torch.float32, device=q.device)
    prefix_out = torch.empty((batch, num_heads, prefix_splits, head_dim), **f32)
    prefix_lse = torch.empty((batch, num_heads, prefix_splits), **f32)
    common = dict(
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        PAGE_SIZE=page_size,
        BLOCK_N=block_n,
        UPCAST_DOT=interpreted(q),
        IEEE_DOT=q.dtype == torch.float32,
        num_stages=num_stages,
    )
    capacity = groups.item_row.shape[0]
    if concurrent:
        return _both_parts(q, k_cache, v_cache, page_table, seq_lens, groups, scale, out, num_splits,
                           prefix_splits, prefix_out, prefix_lse, num_warps, common)  # fmt: skip
    if capacity:
        _shared_prefix_kernel[(num_kv_heads, capacity, prefix_splits)](
            q,
            k_cache,
            v_cache,
            page_table,
            groups.item_row,
            groups.item_prefix_len,
            groups.item_member_start,
            groups.item_member_count,
            groups.members,
            prefix_out,
            prefix_lse,
            q.stride(0),
            q.stride(1),
            page_table.stride(0),
            scale * _LOG2E,
            GROUP=gqa,
            BLOCK_M=block_m,
            NUM_SPLITS=prefix_splits,
            num_warps=prefix_num_warps,
            **common,
        )
    if num_splits > 1:
        own_out = torch.empty((batch, num_heads, num_splits, head_dim), **f32)
        own_lse = torch.empty((batch, num_heads, num_splits), **f32)
    else:
        own_out, own_lse = prefix_out, prefix_lse  # unused
    _own_part_kernel[(num_kv_heads, batch, num_splits)](
        q,
        k_cache,
        v_cache,
        page_table,
        seq_lens,
        groups.seq_prefix_len,
        prefix_out,
        prefix_lse,
        out,
        own_out,
        own_lse,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        page_table.stride(0),
        scale * _LOG2E,
        GROUP=gqa,
        BLOCK_G=max(16, triton.next_power_of_2(gqa)),
        NUM_SPLITS=num_splits,
        PREFIX_SPLITS=prefix_splits,
        num_warps=num_warps,
        **common,
    )
    if num_splits > 1:
        _merge_parts_kernel[(batch, num_heads)](
            own_out,
            own_lse,
            prefix_out,
            prefix_lse,
            groups.seq_prefix_len,
            out,
            out.stride(0),
            out.stride(1),
            NUM_HEADS=num_heads,
            HEAD_DIM=head_dim,
            OWN_SPLITS=num_splits,
            PREFIX_SPLITS=prefix_splits,
            num_warps=1,
        )
    return out


def _both_parts(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    groups: PrefixGroups,
    scale: float,
    out: torch.Tensor,
    num_splits: int,
    prefix_splits: int,
    prefix_out: torch.Tensor,
    prefix_lse: torch.Tensor,
    num_warps: int,
    common: dict[str, object],
) -> torch.Tensor:
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    gqa = num_heads // num_kv_heads
    own_out = torch.empty((batch, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
    own_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
    own_programs = batch * num_splits
    shared_programs = groups.item_row.shape[0] * prefix_splits
    _both_parts_kernel[(num_kv_heads, own_programs + shared_programs)](
        q,
        k_cache,
        v_cache,
        page_table,
        seq_lens,
        groups.seq_prefix_len,
        groups.item_row,
        groups.item_prefix_len,
        groups.item_member_start,
        groups.item_member_count,
        groups.members,
        own_out,
        own_lse,
        prefix_out,
        prefix_lse,
        q.stride(0),
        q.stride(1),
        page_table.stride(0),
        scale * _LOG2E,
        own_programs,
        GROUP=gqa,
        BLOCK_G=max(16, triton.next_power_of_2(gqa)),
        BLOCK_M=groups.block_m,
        OWN_SPLITS=num_splits,
        PREFIX_SPLITS=prefix_splits,
        num_warps=num_warps,
        **common,
    )
    _merge_parts_kernel[(batch, num_heads)](
        own_out,
        own_lse,
        prefix_out,
        prefix_lse,
        groups.seq_prefix_len,
        out,
        out.stride(0),
        out.stride(1),
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        OWN_SPLITS=num_splits,
        PREFIX_SPLITS=prefix_splits,
        num_warps=1,
    )
    return out


def _check(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    groups: PrefixGroups,
    num_splits: int,
    prefix_splits: int,
) -> None:
    block_m = groups.block_m
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape or k_cache.shape[3] != q.shape[2]:
        raise ValueError("decode attention wants q [B, Hq, D] and caches [num_pages, page_size, Hkv, D]")
    if q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"{q.shape[1]} query heads do not group evenly over {k_cache.shape[2]} KV heads")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.dtype != q.dtype:
        raise ValueError("the caches must be contiguous and of q's dtype")
    if page_table.dtype != torch.int32 or seq_lens.dtype != torch.int32 or seq_lens.shape != (q.shape[0],):
        raise ValueError("page_table [B, max_pages] and seq_lens [B] must be int32")
    if groups.seq_prefix_len.shape != (q.shape[0],) or groups.members.shape != (q.shape[0],):
        raise ValueError("groups must describe the batch's B sequences")
    for value in (num_splits, prefix_splits, block_m, q.shape[2]):
        if value < 1 or value & (value - 1):
            raise ValueError("num_splits, prefix_splits, block_m and head_dim must be powers of two")
    if block_m < max(16, q.shape[1] // k_cache.shape[2]):
        raise ValueError("block_m must be >= 16 (a tensor-core tile) and hold one sequence's query heads")
    check_last_dim_contiguous("q", q)


def choose_prefix_splits(
    num_items: int, num_kv_heads: int, max_prefix_len: int, num_sms: int, block_n: int = DEFAULT_BLOCK_N
) -> int:
    """Fewest power-of-two splits whose programs cover the SMs once, keeping >= one tile per split.

    More splits than that only add fp32 partials to write and merge: the shared part's bytes
    are small once read per item, so its cost is latency, and one wave is enough.
    """
    programs = max(1, num_items * num_kv_heads)
    wanted = math.ceil(num_sms / programs)
    most = max(1, max_prefix_len // block_n)
    splits = 1
    while splits < min(wanted, most, 64):
        splits *= 2
    return splits
