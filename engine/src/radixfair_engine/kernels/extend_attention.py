# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""Prefill/extend attention: causal GQA of new tokens over a cached paged prefix plus themselves.

Shapes and dtypes:
  q                 [T, Hq, D] bf16/fp16/fp32, the batch's new tokens packed ragged; D a power of two
  k_cache, v_cache  [num_pages, page_size, Hkv, D] contiguous, q's dtype, already holding this
                    step's K/V (the model writes them before attending)
  query_start_loc   [B + 1] int32, sequence b's new tokens are rows query_start_loc[b]:[b+1]
  seq_lens          [B] int32, context length after this step (cached prefix + new tokens)
  page_table        [B, max_pages] int32
  returns           [T, Hq, D] in q's dtype

New token i of sequence b sits at position ``seq_lens[b] - query_len[b] + i`` and
attends keys 0..that position. Every key, prefix or new, is read from the pages,
so a chunked prefill that resumes from a cached prefix is the same code path as
a fresh prompt or a one-token decode row mixed into the batch.

One program owns BLOCK_M new tokens of one sequence and one query head; it stops
at the last key its queries may see, so fully masked tiles are never loaded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous, interpreted, output_buffer
from radixfair_engine.kernels.decode_attention import _LOG2E, _dot


@triton.jit
def _extend_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    page_table_ptr,
    out_ptr,
    q_stride_t,
    q_stride_h,
    out_stride_t,
    out_stride_h,
    page_table_stride,
    scale_log2,
    GROUP: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    block = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    first_row = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - first_row
    if block * BLOCK_M >= query_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix_len = seq_len - query_len
    kv_head = head // GROUP

    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < query_len
    query_pos = prefix_len + rows
    dims = tl.arange(0, HEAD_DIM)
    tokens = (first_row + rows).to(tl.int64)
    q = tl.load(
        q_ptr + tokens[:, None] * q_stride_t + head * q_stride_h + dims[None, :],
        mask=row_mask[:, None],
        other=0.0,
    )

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    page_row = page_table_ptr + seq.to(tl.int64) * page_table_stride
    # The last valid query of this block sees keys up to its own position.
    key_end = tl.minimum(prefix_len + (block + 1) * BLOCK_M, seq_len)
    for block_start in range(0, key_end, BLOCK_N):
        keys = block_start + tl.arange(0, BLOCK_N)
        key_mask = keys < key_end
        pages = tl.load(page_row + keys // PAGE_SIZE, mask=key_mask, other=0).to(tl.int64)
        slots = pages * PAGE_SIZE + keys % PAGE_SIZE
        kv_offsets = (slots * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM)[:, None] + dims[None, :]
        k = tl.load(k_cache_ptr + kv_offsets, mask=key_mask[:, None], other=0.0)
        scores = _dot(q, tl.trans(k), UPCAST_DOT, IEEE_DOT) * scale_log2
        visible = (keys[None, :] <= query_pos[:, None]) & key_mask[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        # Rows past query_len see nothing; keep their max finite so no NaN is formed.
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        new_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        correction = tl.exp2(row_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        row_sum = row_sum * correction + tl.sum(probs, axis=1)
        v = tl.load(v_cache_ptr + kv_offsets, mask=key_mask[:, None], other=0.0)
        acc = acc * correction[:, None] + _dot(probs.to(v.dtype), v, UPCAST_DOT, IEEE_DOT)
        row_max = new_max

    result = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
    tl.store(
        out_ptr + tokens[:, None] * out_stride_t + head * out_stride_h + dims[None, :],
        result.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None],
    )


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    max_query_len: int,
    scale: float,
    out: torch.Tensor | None = None,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Causal GQA of q [T, Hq, D] over each sequence's paged context -> [T, Hq, D]."""
    _check(q, k_cache, v_cache, query_start_loc, seq_lens, page_table)
    out = output_buffer(out, q, tuple(q.shape))
    num_tokens, num_heads, head_dim = q.shape
    batch = seq_lens.shape[0]
    if num_tokens == 0 or batch == 0:
        return out
    num_kv_heads, page_size = k_cache.shape[2], k_cache.shape[1]
    # Short batches (decode rows, small chunks) need no 64-row blocks.
    block_m = max(16, min(block_m, triton.next_power_of_2(max_query_len)))
    grid = (triton.cdiv(max_query_len, block_m), batch, num_heads)
    _extend_kernel[grid](
        q,
        k_cache,
        v_cache,
        query_start_loc,
        seq_lens,
        page_table,
        out,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        page_table.stride(0),
        scale * _LOG2E,
        GROUP=num_heads // num_kv_heads,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        PAGE_SIZE=page_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        UPCAST_DOT=interpreted(q),
        IEEE_DOT=q.dtype == torch.float32,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def _check(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape or k_cache.shape[3] != q.shape[2]:
        raise ValueError("extend attention wants q [T, Hq, D] and caches [num_pages, page_size, Hkv, D]")
    if q.shape[1] % k_cache.shape[2] or q.shape[2] & (q.shape[2] - 1):
        raise ValueError("query heads must group evenly over KV heads, and head_dim be a power of two")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.dtype != q.dtype:
        raise ValueError("the caches must be contiguous and of q's dtype")
    int32 = torch.int32
    if query_start_loc.dtype != int32 or seq_lens.dtype != int32 or page_table.dtype != int32:
        raise ValueError("query_start_loc, seq_lens and page_table must be int32")
    if query_start_loc.shape != (seq_lens.shape[0] + 1,) or page_table.shape[0] != seq_lens.shape[0]:
        raise ValueError("query_start_loc must be [B + 1] and page_table [B, max_pages]")
    check_last_dim_contiguous("q", q)
