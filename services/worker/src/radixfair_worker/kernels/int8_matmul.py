# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""Weight-only int8 matmul for decode-sized batches: y = x @ (q * scale[:, None])^T.

Shapes and dtypes:
  x       [M, K] bf16/fp16/fp32, last dimension contiguous (M = decode batch, 1 to a few hundred)
  q       [N, K] int8, contiguous: the checkpoint's quantized weight (format: see
          radixfair_model_format.quantized_checkpoint: symmetric, per output channel, values in [-127, 127])
  scale   [N] fp32: the per-output-channel scale
  returns [M, N] in x.dtype

At decode a projection is bound by reading its weight, and int8 halves those bytes against bf16.
The weight tile is loaded as int8 and converted to the activation dtype in registers, so no
dequantized copy of the weight ever exists in memory; the tile product accumulates in fp32 on the
tensor cores, and the per-channel scale is applied once to the accumulated output column
(x @ (q * s)^T == (x @ q^T) * s), then the result is rounded to x.dtype.

Each program owns a BLOCK_M x BLOCK_N output tile and walks K in BLOCK_K steps. ``tl.dot`` needs
at least 16 rows, so a batch of 1 pads to 16 rows in registers (free: the weight bytes, not the
arithmetic, set the time). Small N (SmolLM2's 576-wide projections) gets narrow tiles so that
enough programs run to pull the weights at full bandwidth.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixfair_worker.kernels._launch import check_last_dim_contiguous, interpreted, output_buffer


@triton.jit
def _int8_weight_matmul_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,
    out_ptr,
    M,
    N,
    K,
    x_stride,
    q_stride,
    out_stride,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * x_stride
    # The weight tile, transposed on the fly: [BLOCK_K, BLOCK_N] of q[cols, ks].
    q_cols = q_ptr + cols.to(tl.int64)[None, :] * q_stride
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        if EVEN_K:
            # K a multiple of BLOCK_K (SmolLM2's 576 and 1536 at 64): no K mask on the hot loop.
            x = tl.load(x_rows + ks[None, :], mask=row_mask[:, None], other=0.0)
            q = tl.load(q_cols + ks[:, None], mask=col_mask[None, :], other=0)
        else:
            k_mask = ks < K
            x = tl.load(x_rows + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            q = tl.load(q_cols + ks[:, None], mask=col_mask[None, :] & k_mask[:, None], other=0)
        if DOT_FP32:
            # fp32 activations, and the CPU interpreter (whose bf16 dot is wrong, see _launch.interpreted).
            acc += tl.dot(x.to(tl.float32), q.to(tl.float32), input_precision="ieee")
        else:
            # |q| <= 127 is exact in bf16 and fp16: the conversion loses nothing.
            acc += tl.dot(x, q.to(x.dtype))
    scale = tl.load(scale_ptr + cols, mask=col_mask, other=0.0)
    acc = acc * scale[None, :]
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * out_stride + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def int8_weight_matmul(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int = 4,
) -> torch.Tensor:
    """x [M, K] @ (q [N, K] int8 * scale [N])^T -> [M, N] in x.dtype (block sizes: see tile_sizes)."""
    if x.dim() != 2 or q.dim() != 2 or scale.dim() != 1:
        raise ValueError(
            f"want x [M, K], q [N, K], scale [N]; got {tuple(x.shape)}, {tuple(q.shape)}, "
            f"{tuple(scale.shape)}"
        )
    if q.dtype != torch.int8:
        raise ValueError(f"q must be int8, got {q.dtype}")
    if x.shape[1] != q.shape[1] or scale.shape[0] != q.shape[0]:
        raise ValueError(
            f"shapes do not fit: x {tuple(x.shape)}, q {tuple(q.shape)}, scale {tuple(scale.shape)}"
        )
    check_last_dim_contiguous("x", x)
    check_last_dim_contiguous("q", q)
    m, k = x.shape
    n = q.shape[0]
    out = output_buffer(out, x, (m, n))
    if m == 0:
        return out
    default_m, default_n = tile_sizes(m, n)
    block_m, block_n = block_m or default_m, block_n or default_n
    block_k = block_k or (128 if k % 128 == 0 else 64)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _int8_weight_matmul_kernel[grid](
        x,
        q,
        scale.to(torch.float32).contiguous(),
        out,
        m,
        n,
        k,
        x.stride(0),
        q.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        EVEN_K=k % block_k == 0,
        DOT_FP32=x.dtype == torch.float32 or interpreted(x),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def tile_sizes(m: int, n: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a batch of ``m`` rows and ``n`` output channels.

    Up to 128 rows take one row tile, so each weight tile is read (and converted) once; the width
    shrinks for narrow outputs so that N / BLOCK_N programs still cover the GPU. From the first H200
    sweep (bench/results/gpu_int8_h200.md): 16-wide tiles won at batch 1 for N <= 960, 128-wide for
    the 49,152-row LM head; at batch 128 the 64-row tiles were 0.68-0.83x of bf16 cuBLAS, hence one
    128-row tile there (to be confirmed by the next sweep, which also tries block_m).
    """
    block_m = max(16, min(128, triton.next_power_of_2(m)))
    if m <= 16:
        block_n = 16 if n <= 1024 else 32 if n <= 8192 else 128
    else:
        block_n = 32 if n <= 8192 else 64
    return block_m, block_n
