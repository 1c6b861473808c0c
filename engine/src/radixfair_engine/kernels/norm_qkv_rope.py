# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""A Llama layer's attention input in one launch: add + RMSNorm, the fused QKV projection, RoPE
on q and k, and the K/V page store.

Shapes and dtypes:
  x, residual      [T, K] bf16/fp16/fp32, last dimension contiguous (residual may be None)
  norm_weight      [K]
  qkv_weight       [(Hq + 2 Hkv) * D, K] contiguous: q heads' rows, then k heads', then v heads'
  positions        [T] int64; cos_sin [max_positions, D] fp32 (cos of D/2 frequencies, then sin)
  k_cache, v_cache [num_pages, page_size, Hkv, D] contiguous, slot_mapping [T] int64
  returns          q [T, Hq, D] rotated, and x + residual [T, K] (x itself when residual is None)

Each program owns BLOCK_M tokens and one head of the projection's output (grid: row blocks x
(Hq + 2 Hkv) heads). Rotate-half RoPE pairs column d with d + D/2 of the same head, so the program
accumulates the two halves of its head as two [BLOCK_M, D/2] products (weight rows h*D + [0, D/2)
and h*D + [D/2, D)): the rotation is then elementwise on registers, and the rotated k and the v
rows go straight to their cache slots. Neither the [T, (Hq + 2 Hkv) D] projection output nor the
normalised input is ever written to memory; of the four unfused launches (add_rms_norm, cuBLAS,
rope_and_write_kv) one is left.

Rounding follows the unfused path: rms_norm's rounding of its output, the projection output
rounded to the activation dtype, RoPE in fp32 from that and rounded again.
D/2 must be at least 16 (``tl.dot``'s smallest tile side); SmolLM2's D = 64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous, interpreted, output_buffer
from radixfair_engine.kernels.norm_matmul import _dot, _summed_buffer, _weight_tile, _weighted_tile


@triton.jit
def _norm_qkv_rope_kernel(
    x_ptr, r_ptr, norm_ptr, w_ptr, sum_ptr, q_ptr, k_slots_ptr, v_slots_ptr,
    positions_ptr, slots_ptr, cos_sin_ptr,
    M, K, x_stride, r_stride, w_stride, sum_stride, q_stride_t, q_stride_h, kv_stride_slot, kv_stride_h,
    eps,
    HAS_RESIDUAL: tl.constexpr, NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    HALF: tl.constexpr, PART: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    # Program (row block, head * HALF / PART + part) owns head columns part*PART + [0, PART) and
    # their rotate-half partners HALF later: splitting a head in parts doubles the programs of a
    # small batch (15 heads are 15 programs for one token; too few to pull the weight at speed).
    head = tl.program_id(1) // (HALF // PART)
    part = tl.program_id(1) % (HALF // PART)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows = rows.to(tl.int64)
    halves = part * PART + tl.arange(0, PART)
    first_rows = head * (2 * HALF) + halves
    all_rows = halves < HALF  # every weight row of the head is real; _weight_tile wants a mask
    square_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc_first = tl.zeros((BLOCK_M, PART), dtype=tl.float32)
    acc_second = tl.zeros((BLOCK_M, PART), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        a, squares = _weighted_tile(
            x_ptr, r_ptr, norm_ptr, sum_ptr, rows, rows, row_mask, tl.program_id(1) == 0, ks, K, x_stride,
            r_stride, sum_stride, True, HAS_RESIDUAL, HAS_RESIDUAL, EVEN_K,
        )  # fmt: skip
        square_sum += squares
        acc_first += _dot(a, _weight_tile(w_ptr, first_rows, all_rows, ks, K, w_stride, EVEN_K), DOT_FP32)
        second_tile = _weight_tile(w_ptr, first_rows + HALF, all_rows, ks, K, w_stride, EVEN_K)
        acc_second += _dot(a, second_tile, DOT_FP32)
    # rms_norm(x) @ W^T = rstd * ((x * w) @ W^T), as in norm_matmul.
    rstd = tl.rsqrt(square_sum / K + eps)[:, None]
    acc_first = acc_first * rstd
    acc_second = acc_second * rstd
    act_dtype = x_ptr.dtype.element_ty
    # The unfused path rotates the projection's rounded output.
    first = acc_first.to(act_dtype).to(tl.float32)
    second = acc_second.to(act_dtype).to(tl.float32)
    mask = row_mask[:, None]
    if head < NUM_Q_HEADS + NUM_KV_HEADS:
        pos = tl.load(positions_ptr + rows, mask=row_mask, other=0)
        table = cos_sin_ptr + (pos * (2 * HALF))[:, None] + halves[None, :]
        cos = tl.load(table, mask=mask, other=0.0)
        sin = tl.load(table + HALF, mask=mask, other=0.0)
        rotated_first = first * cos - second * sin
        rotated_second = second * cos + first * sin
        if head < NUM_Q_HEADS:
            dst = q_ptr + (rows * q_stride_t + head * q_stride_h)[:, None] + halves[None, :]
        else:
            slots = tl.load(slots_ptr + rows, mask=row_mask, other=0)
            offset = slots * kv_stride_slot + (head - NUM_Q_HEADS) * kv_stride_h
            dst = k_slots_ptr + offset[:, None] + halves[None, :]
        tl.store(dst, rotated_first.to(act_dtype), mask=mask)
        tl.store(dst + HALF, rotated_second.to(act_dtype), mask=mask)
    else:
        slots = tl.load(slots_ptr + rows, mask=row_mask, other=0)
        offset = slots * kv_stride_slot + (head - NUM_Q_HEADS - NUM_KV_HEADS) * kv_stride_h
        dst = v_slots_ptr + offset[:, None] + halves[None, :]
        tl.store(dst, first.to(act_dtype), mask=mask)
        tl.store(dst + HALF, second.to(act_dtype), mask=mask)


def _check(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> tuple[int, int, int]:
    """(Hq, Hkv, D) after checking every operand; ValueError names the first that does not fit."""
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError("the caches must both be [num_pages, page_size, Hkv, D]")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.dtype != x.dtype:
        raise ValueError("the caches must be contiguous and of the activations' dtype")
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    rows = qkv_weight.shape[0]
    if rows % head_dim or rows // head_dim <= 2 * num_kv_heads:
        raise ValueError(f"qkv_weight has {rows} rows: not (Hq + 2*{num_kv_heads}) heads of {head_dim}")
    if head_dim & (head_dim - 1) or head_dim < 32:
        raise ValueError(f"head_dim must be a power of two >= 32 (two dot tiles of 16), got {head_dim}")
    if cos_sin.shape[-1] != head_dim or cos_sin.dtype != torch.float32 or not cos_sin.is_contiguous():
        raise ValueError("cos_sin must be a contiguous fp32 [max_positions, head_dim] table")
    tokens = x.shape[0]
    if positions.shape != (tokens,) or slot_mapping.shape != (tokens,):
        raise ValueError(f"positions and slot_mapping must be [T] = [{tokens}]")
    return rows // head_dim - 2 * num_kv_heads, num_kv_heads, head_dim


def norm_qkv_rope_write_kv(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    qkv_weight: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    q_out: torch.Tensor | None = None,
    summed_out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_k: int | None = None,
    part: int | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rotated q [T, Hq, D], x + residual [T, K]); rotated k and v land in the caches.

    ``part``: head columns per program and half (a divisor of D/2, >= 16); default 16 for up to
    16 tokens on the GPU, else D/2. ``block_k`` default: 128 for up to 16 tokens on the GPU (the
    first H200 sweep's best there), else 64.
    """
    if x.dim() != 2 or qkv_weight.dim() != 2 or qkv_weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"want x [T, K] and qkv_weight [N, K], got {tuple(x.shape)}, {tuple(qkv_weight.shape)}"
        )
    if qkv_weight.dtype != x.dtype or not qkv_weight.is_contiguous() or norm_weight.shape != (x.shape[1],):
        raise ValueError("qkv_weight must be contiguous in x's dtype and norm_weight [K]")
    check_last_dim_contiguous("x", x)
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    if residual is not None:
        check_last_dim_contiguous("residual", residual)
    q_heads, kv_heads, head_dim = _check(x, qkv_weight, positions, cos_sin, k_cache, v_cache, slot_mapping)
    tokens, k = x.shape
    q = output_buffer(q_out, x, (tokens, q_heads, head_dim))
    summed = _summed_buffer(x, residual, summed_out)
    if tokens == 0:
        return q, summed
    on_cpu = interpreted(x)
    block_m = block_m or max(16, min(64 if on_cpu else 32, triton.next_power_of_2(tokens)))
    block_k = block_k or (128 if tokens <= 16 and not on_cpu else 64)
    k_slots = k_cache.view(-1, kv_heads, head_dim)
    v_slots = v_cache.view(-1, kv_heads, head_dim)
    half = head_dim // 2
    # Parts of 16 columns (tl.dot's narrowest) for small batches; whole halves for larger ones.
    part = part or (16 if tokens <= 16 and not on_cpu else half)
    if half % part or part < 16:
        raise ValueError(f"part must divide head_dim / 2 = {half} and be >= 16, got {part}")
    grid = (triton.cdiv(tokens, block_m), (q_heads + 2 * kv_heads) * (half // part))
    _norm_qkv_rope_kernel[grid](
        x, x if residual is None else residual, norm_weight.contiguous(), qkv_weight, summed, q,
        k_slots, v_slots, positions, slot_mapping, cos_sin,
        tokens, k, x.stride(0), x.stride(0) if residual is None else residual.stride(0),
        qkv_weight.stride(0), summed.stride(0), q.stride(0), q.stride(1), k_slots.stride(0),
        k_slots.stride(1), eps,
        HAS_RESIDUAL=residual is not None, NUM_Q_HEADS=q_heads, NUM_KV_HEADS=kv_heads,
        HALF=half, PART=part, BLOCK_M=block_m, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
        DOT_FP32=x.dtype == torch.float32 or on_cpu, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return q, summed
