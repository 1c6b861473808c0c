# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""Stores one step's K and V rows into their paged-cache slots.

Shapes and dtypes:
  k, v              [T, Hkv, D] head dimension contiguous; any token and head strides
  k_cache, v_cache  [num_pages, page_size, Hkv, D] contiguous, same dtype as k, v
  slot_mapping      [T] int64, page * page_size + offset of each token

The model's hot path uses ``rope.rope_and_write_kv``, which does this store
inside the RoPE launch; this kernel serves callers that store K/V on their own.
Rows are (token, head) pairs, so no lanes are lost padding Hkv to a power of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous


@triton.jit
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slots_ptr,
    n_rows,
    k_stride_t,
    k_stride_h,
    v_stride_t,
    v_stride_h,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = (rows < n_rows)[:, None]
    tokens = (rows // NUM_KV_HEADS).to(tl.int64)
    heads = rows % NUM_KV_HEADS
    cols = tl.arange(0, HEAD_DIM)[None, :]
    slots = tl.load(slots_ptr + tokens, mask=rows < n_rows, other=0)
    # The cache is contiguous: slot stride Hkv * D, head stride D.
    dst = (slots * (NUM_KV_HEADS * HEAD_DIM) + heads * HEAD_DIM)[:, None] + cols
    k = tl.load(k_ptr + (tokens * k_stride_t + heads * k_stride_h)[:, None] + cols, mask=row_mask)
    v = tl.load(v_ptr + (tokens * v_stride_t + heads * v_stride_h)[:, None] + cols, mask=row_mask)
    tl.store(k_cache_ptr + dst, k, mask=row_mask)
    tl.store(v_cache_ptr + dst, v, mask=row_mask)


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_r: int = 32,
    num_warps: int = 4,
) -> None:
    """Stores k, v [T, Hkv, D] into caches [num_pages, page_size, Hkv, D] at the flat slots."""
    if (
        k.dim() != 3
        or v.shape != k.shape
        or k_cache.shape[2:] != k.shape[1:]
        or v_cache.shape != k_cache.shape
    ):
        raise ValueError("write_kv wants k, v [T, Hkv, D] and caches [num_pages, page_size, Hkv, D]")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.dtype != k.dtype:
        raise ValueError("the caches must be contiguous and of k's dtype")
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping must be [T], got {tuple(slot_mapping.shape)}")
    check_last_dim_contiguous("k", k)
    check_last_dim_contiguous("v", v)
    num_tokens, kv_heads, head_dim = k.shape
    n_rows = num_tokens * kv_heads
    if n_rows == 0:
        return
    _write_kv_kernel[(triton.cdiv(n_rows, block_r),)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        n_rows,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        NUM_KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_R=block_r,
        num_warps=num_warps,
    )
