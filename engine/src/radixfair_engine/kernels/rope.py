# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""Rotary position embedding (Llama's rotate-half layout) for a ragged batch, in place.

Shapes and dtypes:
  q          [T, Hq, D]  bf16/fp16/fp32, head dimension contiguous; any token and head strides
                         (the model passes views into its fused qkv projection)
  k, v       [T, Hkv, D] same dtype
  positions  [T] int64, each token's position in its own sequence
  cos_sin    [max_positions, D] fp32: cos of the D/2 frequencies, then their sin
  k_cache, v_cache [num_pages, page_size, Hkv, D], slot_mapping [T] int64 (fused form only)

``apply_rope`` rotates q and k in place. ``rope_and_write_kv`` rotates q in place
and writes rotated k and plain v straight into their cache slots, so k is read
once and never written back: the step after RoPE only ever reads K from the
cache, and one launch replaces two.

Work is laid out as rows of one (token, head) pair each: D/2 contiguous elements
per half, and no lanes lost to padding 9 or 3 heads up to a power of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous


@triton.jit
def _rotate_rows(
    src_ptr,
    dst_ptr,
    row_start,
    n_rows,
    src_stride_t,
    src_stride_h,
    dst_stride_t,
    dst_stride_h,
    positions_ptr,
    slots_ptr,
    cos_sin_ptr,
    NUM_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_R: tl.constexpr,
    ROTATE: tl.constexpr,
    TO_SLOTS: tl.constexpr,
):
    """Rows are (token, head) pairs, head fastest; rotates (or copies) src rows into dst."""
    rows = row_start + tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    tokens = (rows // NUM_HEADS).to(tl.int64)
    heads = rows % NUM_HEADS
    cols = tl.arange(0, HALF)
    src = src_ptr + (tokens * src_stride_t + heads * src_stride_h)[:, None] + cols[None, :]
    first = tl.load(src, mask=row_mask[:, None], other=0.0)
    second = tl.load(src + HALF, mask=row_mask[:, None], other=0.0)
    if ROTATE:
        pos = tl.load(positions_ptr + tokens, mask=row_mask, other=0)
        table = cos_sin_ptr + (pos * (2 * HALF))[:, None] + cols[None, :]
        cos = tl.load(table, mask=row_mask[:, None], other=0.0)
        sin = tl.load(table + HALF, mask=row_mask[:, None], other=0.0)
        first32 = first.to(tl.float32)
        second32 = second.to(tl.float32)
        first_out = first32 * cos - second32 * sin
        second_out = second32 * cos + first32 * sin
    else:
        first_out = first
        second_out = second
    if TO_SLOTS:
        dst_token = tl.load(slots_ptr + tokens, mask=row_mask, other=0)
    else:
        dst_token = tokens
    dst = dst_ptr + (dst_token * dst_stride_t + heads * dst_stride_h)[:, None] + cols[None, :]
    tl.store(dst, first_out.to(dst_ptr.dtype.element_ty), mask=row_mask[:, None])
    tl.store(dst + HALF, second_out.to(dst_ptr.dtype.element_ty), mask=row_mask[:, None])


@triton.jit
def _rope_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    k_dst_ptr,
    v_dst_ptr,
    positions_ptr,
    slots_ptr,
    cos_sin_ptr,
    num_tokens,
    q_stride_t,
    q_stride_h,
    k_stride_t,
    k_stride_h,
    v_stride_t,
    v_stride_h,
    k_dst_stride_t,
    k_dst_stride_h,
    v_dst_stride_t,
    v_dst_stride_h,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_R: tl.constexpr,
    WRITE_CACHE: tl.constexpr,
):
    # Programs [0, q_programs) rotate q rows; the rest handle k rows (and v rows when writing the cache).
    pid = tl.program_id(0)
    q_rows = num_tokens * NUM_Q_HEADS
    q_programs = tl.cdiv(q_rows, BLOCK_R)
    if pid < q_programs:
        _rotate_rows(
            q_ptr, q_ptr, pid * BLOCK_R, q_rows, q_stride_t, q_stride_h, q_stride_t, q_stride_h,
            positions_ptr, slots_ptr, cos_sin_ptr, NUM_Q_HEADS, HALF, BLOCK_R, True, False,
        )  # fmt: skip
    else:
        row_start = (pid - q_programs) * BLOCK_R
        kv_rows = num_tokens * NUM_KV_HEADS
        _rotate_rows(
            k_ptr, k_dst_ptr, row_start, kv_rows, k_stride_t, k_stride_h, k_dst_stride_t, k_dst_stride_h,
            positions_ptr, slots_ptr, cos_sin_ptr, NUM_KV_HEADS, HALF, BLOCK_R, True, WRITE_CACHE,
        )  # fmt: skip
        if WRITE_CACHE:
            _rotate_rows(
                v_ptr, v_dst_ptr, row_start, kv_rows, v_stride_t, v_stride_h, v_dst_stride_t, v_dst_stride_h,
                positions_ptr, slots_ptr, cos_sin_ptr, NUM_KV_HEADS, HALF, BLOCK_R, False, True,
            )  # fmt: skip


def _check(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"rope wants q [T, Hq, D] and k [T, Hkv, D], got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[2] % 2 or (q.shape[2] & (q.shape[2] - 1)):
        raise ValueError(f"head_dim must be a power of two, got {q.shape[2]}")
    if cos_sin.shape[-1] != q.shape[2] or cos_sin.dtype != torch.float32 or not cos_sin.is_contiguous():
        raise ValueError("cos_sin must be a contiguous fp32 [max_positions, head_dim] table")
    if positions.shape != (q.shape[0],):
        raise ValueError(f"positions must be [T], got {tuple(positions.shape)}")
    check_last_dim_contiguous("q", q)
    check_last_dim_contiguous("k", k)


def _grid(num_tokens: int, q_heads: int, kv_heads: int, block_r: int) -> tuple[int]:
    return (triton.cdiv(num_tokens * q_heads, block_r) + triton.cdiv(num_tokens * kv_heads, block_r),)


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    block_r: int = 32,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] in place; returns them."""
    _check(q, k, positions, cos_sin)
    num_tokens, q_heads, head_dim = q.shape
    if num_tokens == 0:
        return q, k
    kv_heads = k.shape[1]
    _rope_kernel[_grid(num_tokens, q_heads, kv_heads, block_r)](
        q, k, k, k, k, positions, positions, cos_sin, num_tokens,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(0), k.stride(1),
        k.stride(0), k.stride(1), k.stride(0), k.stride(1),
        NUM_Q_HEADS=q_heads, NUM_KV_HEADS=kv_heads, HALF=head_dim // 2, BLOCK_R=block_r,
        WRITE_CACHE=False, num_warps=num_warps,
    )  # fmt: skip
    return q, k


def rope_and_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_r: int = 32,
    num_warps: int = 4,
) -> torch.Tensor:
    """Rotates q in place; stores rotate(k) and v at ``slot_mapping`` in the caches; returns q.

    k itself is left unrotated: only its cache copy is used afterwards.
    """
    _check(q, k, positions, cos_sin)
    check_last_dim_contiguous("v", v)
    num_tokens, q_heads, head_dim = q.shape
    kv_heads = k.shape[1]
    if v.shape != k.shape or k_cache.shape[2:] != k.shape[1:] or v_cache.shape != k_cache.shape:
        raise ValueError("v must match k, and the caches must be [num_pages, page_size, Hkv, D]")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.dtype != k.dtype:
        raise ValueError("the caches must be contiguous and of the activations' dtype")
    if slot_mapping.shape != (num_tokens,):
        raise ValueError(f"slot_mapping must be [T], got {tuple(slot_mapping.shape)}")
    if num_tokens == 0:
        return q
    # The caches seen as [num_slots, Hkv, D].
    k_slots = k_cache.view(-1, kv_heads, head_dim)
    v_slots = v_cache.view(-1, kv_heads, head_dim)
    _rope_kernel[_grid(num_tokens, q_heads, kv_heads, block_r)](
        q, k, v, k_slots, v_slots, positions, slot_mapping, cos_sin, num_tokens,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_slots.stride(0), k_slots.stride(1), v_slots.stride(0), v_slots.stride(1),
        NUM_Q_HEADS=q_heads, NUM_KV_HEADS=kv_heads, HALF=head_dim // 2, BLOCK_R=block_r,
        WRITE_CACHE=True, num_warps=num_warps,
    )  # fmt: skip
    return q
