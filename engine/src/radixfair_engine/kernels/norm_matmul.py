# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""RMSNorm (and the residual add before it) folded into the matrix product that follows it.

Shapes and dtypes:
  x, residual   [M, K] bf16/fp16/fp32, last dimension contiguous, any row stride
  norm_weight   [K] same dtype
  weight        [N, K] same dtype, contiguous (an ``nn.Linear`` weight)
  row_indices   [S] int64 (optional): only rows ``x[row_indices]`` are normalised and multiplied
  returns       [M or S, N] (``norm_matmul``), or [M, N/2] for ``norm_gate_up_silu``; and the
                sum x + residual [M, K] when a residual is given

Why: at decode the batch is 1 to a few hundred rows, so each norm, activation and projection is
a separate launch of a few microseconds whose bytes would take a fraction of one. Here a program
owning a BLOCK_M x BLOCK_N output tile walks K once: each [BLOCK_M, BLOCK_K] input tile is
multiplied by the norm weight in registers right before ``tl.dot`` while the rows' sum of squares
accumulates beside it, and the per-row 1/rms scales the accumulated product at the end
(rms_norm(x) @ W^T = rstd * ((x * w) @ W^T)). The normalised activations never reach memory. The
programs of the first column block also write x + residual, which the next layer's residual
stream needs. (Version 1 reduced the rows first in a separate pass over K, then normalised in a
second: on the H200 its dependent first pass made the kernel latency-bound, bench/results/
gpu_step_fusion.md.)

Rounding: the sum is rounded to the activation dtype as the unfused add rounds; the product's
left operand is (x * w) rounded once (the unfused rms_norm rounds x * rstd, then the product with
w: one rounding more, at a different point, so bf16 results differ from the unfused chain by about
an ulp of the activations); the GEMM accumulates in fp32 and its output is rounded to the
activation dtype before any epilogue (SiLU), as the unfused kernels read a rounded tensor. fp32
dots use IEEE precision, never TF32.

``norm_gate_up_silu`` is the MLP's first half: the program computes the gate tile and the up tile
of the same columns (rows ``n`` and ``I + n`` of the fused weight) and stores only
silu(gate) * up, so the [M, 2I] projection output is never written either.

``norm_matmul`` with ``norm_weight=None`` is a plain small-M matmul (x @ weight^T): the Triton
GEMV path for projections with no norm in front (o_proj, down_proj), used where cuBLAS is
latency-bound (see bench/kernels/gpu_step_fusion_bench.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous, interpreted, output_buffer


@triton.jit
def _input_tile(
    x_ptr, r_ptr, src_rows, row_mask, ks, K, x_stride, r_stride,
    HAS_RESIDUAL: tl.constexpr, EVEN_K: tl.constexpr,
):  # fmt: skip
    """[BLOCK_M, BLOCK_K] of x (+ residual, rounded to x's dtype as the unfused add rounds)."""
    mask = row_mask[:, None]
    if not EVEN_K:
        mask = mask & (ks < K)[None, :]
    x = tl.load(x_ptr + src_rows[:, None] * x_stride + ks[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + src_rows[:, None] * r_stride + ks[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
    return x


@triton.jit
def _weighted_tile(
    x_ptr, r_ptr, norm_ptr, sum_ptr, src_rows, rows, row_mask, write_sum, ks, K, x_stride, r_stride,
    sum_stride, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, WRITE_SUM: tl.constexpr,
    EVEN_K: tl.constexpr,
):  # fmt: skip
    """(left operand for K columns ``ks``: (x + residual) * norm_weight rounded to x's dtype, and the
    rows' sum of squares over these columns in fp32); stores x + residual where ``write_sum``."""
    x = _input_tile(x_ptr, r_ptr, src_rows, row_mask, ks, K, x_stride, r_stride, HAS_RESIDUAL, EVEN_K)
    if WRITE_SUM:
        mask = row_mask[:, None] & (ks < K)[None, :] & write_sum
        tl.store(sum_ptr + rows[:, None] * sum_stride + ks[None, :], x, mask=mask)
    x32 = x.to(tl.float32)
    squares = tl.sum(x32 * x32, axis=1)
    if NORM:
        if EVEN_K:
            w = tl.load(norm_ptr + ks).to(tl.float32)
        else:
            w = tl.load(norm_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)
        x = (x32 * w[None, :]).to(x.dtype)
    return x, squares


@triton.jit
def _weight_tile(w_ptr, w_rows, w_row_mask, ks, K, w_stride, EVEN_K: tl.constexpr):
    """[BLOCK_K, BLOCK_N]: weight rows ``w_rows`` (output channels) transposed on the fly."""
    mask = w_row_mask[None, :]
    if not EVEN_K:
        mask = mask & (ks < K)[:, None]
    return tl.load(w_ptr + w_rows.to(tl.int64)[None, :] * w_stride + ks[:, None], mask=mask, other=0.0)


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    if DOT_FP32:
        # fp32 activations, and the CPU interpreter (whose bf16 dot is wrong, see _launch.interpreted).
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _norm_matmul_kernel(
    x_ptr, r_ptr, norm_ptr, w_ptr, out_ptr, sum_ptr, index_ptr,
    M, N, K, x_stride, r_stride, w_stride, out_stride, sum_stride, eps,
    NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, WRITE_SUM: tl.constexpr, HAS_INDEX: tl.constexpr,
    SWIGLU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    # N is the number of output columns: the weight's rows, or half of them with SWIGLU.
    pid_n = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    if HAS_INDEX:
        src_rows = tl.load(index_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    else:
        src_rows = rows.to(tl.int64)
    rows = rows.to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    square_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        a, squares = _weighted_tile(
            x_ptr, r_ptr, norm_ptr, sum_ptr, src_rows, rows, row_mask, pid_n == 0, ks, K, x_stride,
            r_stride, sum_stride, NORM, HAS_RESIDUAL, WRITE_SUM, EVEN_K,
        )  # fmt: skip
        square_sum += squares
        acc += _dot(a, _weight_tile(w_ptr, cols, col_mask, ks, K, w_stride, EVEN_K), DOT_FP32)
        if SWIGLU:
            up_tile = _weight_tile(w_ptr, cols + N, col_mask, ks, K, w_stride, EVEN_K)
            acc_up += _dot(a, up_tile, DOT_FP32)
    if NORM:
        # rms_norm(x) @ W^T = rstd * ((x * w) @ W^T): one pass over K, the row scale applied last.
        rstd = tl.rsqrt(square_sum / K + eps)[:, None]
        acc = acc * rstd
        acc_up = acc_up * rstd
    act_dtype = x_ptr.dtype.element_ty
    if SWIGLU:
        # Round both halves as the unfused projection's output would be, then silu_and_mul's rounding.
        gate = acc.to(act_dtype).to(tl.float32)
        up = acc_up.to(act_dtype).to(tl.float32)
        result = (gate / (1.0 + tl.exp(-gate))).to(act_dtype).to(tl.float32) * up
    else:
        result = acc.to(act_dtype)
    out_ptrs = out_ptr + rows[:, None] * out_stride + cols[None, :]
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def tile_sizes(m: int, n: int, on_cpu: bool) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for ``m`` rows and ``n`` output columns.

    On the GPU the weight's bytes set the time at decode sizes, so the tiles are narrow enough that
    N / BLOCK_N programs cover the SMs (the int8 GEMV's H200 sweep found 16-32 wide best for
    N <= 8,192 and 64-128 for the 49k-row LM head); up to 64 rows share one row tile. The CPU
    interpreter pays per program, so it gets few wide tiles. (The first H200 run of these kernels,
    bench/results/gpu_step_fusion.md, found them latency-bound at batch 1: 16-wide tiles for
    every N up to 4,096 give the gate/up product 96 programs instead of 48.)
    """
    block_m = max(16, min(64, triton.next_power_of_2(m)))
    if on_cpu:
        return block_m, max(16, min(16384, triton.next_power_of_2(n)))
    if n > 8192:
        return block_m, 128 if m <= 16 else 64
    return block_m, 16 if (m <= 16 and n <= 4096) else 32


def _check_operands(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    weight: torch.Tensor,
) -> None:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"want x [M, K] and weight [N, K], got {tuple(x.shape)}, {tuple(weight.shape)}")
    if weight.dtype != x.dtype or not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous and of x's dtype {x.dtype}, got {weight.dtype}")
    check_last_dim_contiguous("x", x)
    if norm_weight is not None and norm_weight.shape != (x.shape[1],):
        raise ValueError(f"norm_weight must be [K] = [{x.shape[1]}], got {tuple(norm_weight.shape)}")
    if residual is not None:
        if norm_weight is None:
            raise ValueError("a residual is only added in front of a norm")
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} does not match x")
        check_last_dim_contiguous("residual", residual)


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor,
    out: torch.Tensor,
    summed: torch.Tensor | None,
    row_indices: torch.Tensor | None,
    swiglu: bool,
    block_m: int | None,
    block_n: int | None,
    block_k: int | None,
    num_warps: int,
    num_stages: int,
) -> None:
    m, k = out.shape[0], x.shape[1]
    n = out.shape[1]
    on_cpu = interpreted(x)
    # 128-wide K steps keep twice the weight bytes in flight: the first H200 sweep's best for the
    # plain products at every batch and for the normed ones at batch 1, but not at batch 128.
    block_k = block_k or (64 if on_cpu or (norm_weight is not None and m > 16) else 128)
    default_m, default_n = tile_sizes(m, n, on_cpu)
    block_m, block_n = block_m or default_m, block_n or default_n
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _norm_matmul_kernel[grid](
        x, x if residual is None else residual, x if norm_weight is None else norm_weight.contiguous(),
        weight, out, out if summed is None else summed, x if row_indices is None else row_indices,
        m, n, k, x.stride(0), x.stride(0) if residual is None else residual.stride(0), weight.stride(0),
        out.stride(0), out.stride(0) if summed is None else summed.stride(0), eps,
        NORM=norm_weight is not None, HAS_RESIDUAL=residual is not None, WRITE_SUM=summed is not None,
        HAS_INDEX=row_indices is not None, SWIGLU=swiglu, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, EVEN_K=k % block_k == 0, DOT_FP32=x.dtype == torch.float32 or on_cpu,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip


def _summed_buffer(
    x: torch.Tensor, residual: torch.Tensor | None, given: torch.Tensor | None
) -> torch.Tensor:
    if residual is None:
        return x
    summed = output_buffer(given, x, tuple(x.shape))
    # Programs of other column blocks still read the residual while the first writes the sum.
    if summed.data_ptr() in (residual.data_ptr(), x.data_ptr()):
        raise ValueError("summed_out must not alias x or residual (other programs still read them)")
    return summed


def norm_matmul(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor,
    row_indices: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    summed_out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm(x + residual) @ weight^T -> ([M, N], x + residual [M, K]).

    ``residual`` None: no add, and the returned sum is x itself. ``norm_weight`` None: no norm
    either, a plain x @ weight^T (residual must then be None). ``row_indices`` [S]: only those
    rows are normalised and multiplied (the LM head's last tokens); the output is [S, N], rounded
    to x.dtype and stored as ``out_dtype`` (default x.dtype), and the sum is not written (it is
    returned as x). Raises ValueError on shapes, dtypes or layouts the kernel cannot take.
    """
    _check_operands(x, residual, norm_weight, weight)
    if row_indices is not None and (row_indices.dim() != 1 or row_indices.dtype != torch.int64):
        raise ValueError("row_indices must be a 1-D int64 tensor")
    rows = x.shape[0] if row_indices is None else row_indices.shape[0]
    target_dtype = out_dtype or x.dtype
    if out is None:
        out = torch.empty((rows, weight.shape[0]), dtype=target_dtype, device=x.device)
    elif tuple(out.shape) != (rows, weight.shape[0]) or out.dtype != target_dtype:
        raise ValueError(f"out must be {(rows, weight.shape[0])} {target_dtype}, got {tuple(out.shape)}")
    summed = _summed_buffer(x, residual, summed_out) if row_indices is None else x
    if rows == 0:
        return out, summed
    _launch(
        x, residual, norm_weight, eps, weight, out,
        summed if (residual is not None and row_indices is None) else None,
        row_indices, False, block_m, block_n, block_k, num_warps, num_stages,
    )  # fmt: skip
    return out, summed


def norm_gate_up_silu(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weight: torch.Tensor,
    out: torch.Tensor | None = None,
    summed_out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(gate) * up of rms_norm(x + residual) @ gate_up_weight^T -> ([M, I], x + residual).

    ``gate_up_weight`` is [2I, K]: gate rows first, then up rows (the loader's fused layout).
    """
    _check_operands(x, residual, norm_weight, gate_up_weight)
    if gate_up_weight.shape[0] % 2:
        raise ValueError(f"gate_up_weight must have an even number of rows, got {gate_up_weight.shape[0]}")
    half = gate_up_weight.shape[0] // 2
    out = output_buffer(out, x, (x.shape[0], half))
    summed = _summed_buffer(x, residual, summed_out)
    if x.shape[0] == 0:
        return out, summed
    _launch(
        x, residual, norm_weight, eps, gate_up_weight, out, summed if residual is not None else None,
        None, True, block_m, block_n, block_k, num_warps, num_stages,
    )  # fmt: skip
    return out, summed
