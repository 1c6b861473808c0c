# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""RMSNorm, alone and fused with the residual add that precedes it in a Llama block.

Shapes and dtypes:
  x, residual  [T, H] (bf16, fp16 or fp32; last dimension contiguous, any row stride)
  weight       [H]
  returns      normed [T, H] in x.dtype (and the sum x + residual [T, H] for the fused form)

Semantics follow Hugging Face Llama (and ``TorchBackend``): the sum is rounded to
x.dtype first, the mean square is reduced in fp32, ``x * rstd`` is rounded to
x.dtype, and only then multiplied by the weight.

Defaults (2 rows a program, 2 warps) come from the H100 sweeps in bench/results/: every
block size sat within ~1% at 65,536 tokens, this one at the front, and small decode batches
get more programs than with larger blocks.

Why the row is loaded as two power-of-two pieces: Triton blocks are powers of
two, and SmolLM2's hidden size 576 padded to 1024 would leave 44% of every
block's lanes masked. 576 = 512 + 64 moves the same bytes with no idle lanes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous, output_buffer


@triton.jit
def _piece_mask(rows, cols, row_mask, n_cols, FULL: tl.constexpr):
    mask = row_mask[:, None]
    if not FULL:
        mask = mask & (cols < n_cols)[None, :]
    return mask


@triton.jit
def _load_piece(ptr, rows, row_stride, cols, row_mask, n_cols, FULL: tl.constexpr):
    mask = _piece_mask(rows, cols, row_mask, n_cols, FULL)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_piece(ptr, rows, row_stride, cols, row_mask, n_cols, value, FULL: tl.constexpr):
    mask = _piece_mask(rows, cols, row_mask, n_cols, FULL)
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    sum_ptr,
    n_rows,
    n_cols,
    x_stride,
    residual_stride,
    out_stride,
    sum_stride,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_COLS: tl.constexpr,  # largest power of two <= n_cols, always full
    TAIL_COLS: tl.constexpr,  # power of two covering n_cols - HEAD_COLS, masked; 0 if none
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < n_rows
    head_cols = tl.arange(0, HEAD_COLS)
    x_head = _load_piece(x_ptr, rows, x_stride, head_cols, row_mask, n_cols, True)
    if HAS_RESIDUAL:
        r_head = _load_piece(residual_ptr, rows, residual_stride, head_cols, row_mask, n_cols, True)
        # Round the sum to the activation dtype, as the unfused `x + residual` does.
        x_head = (x_head.to(tl.float32) + r_head.to(tl.float32)).to(x_head.dtype)
        _store_piece(sum_ptr, rows, sum_stride, head_cols, row_mask, n_cols, x_head, True)
    head32 = x_head.to(tl.float32)
    square_sum = tl.sum(head32 * head32, axis=1)
    if TAIL_COLS > 0:
        tail_cols = HEAD_COLS + tl.arange(0, TAIL_COLS)
        x_tail = _load_piece(x_ptr, rows, x_stride, tail_cols, row_mask, n_cols, False)
        if HAS_RESIDUAL:
            r_tail = _load_piece(residual_ptr, rows, residual_stride, tail_cols, row_mask, n_cols, False)
            x_tail = (x_tail.to(tl.float32) + r_tail.to(tl.float32)).to(x_tail.dtype)
            _store_piece(sum_ptr, rows, sum_stride, tail_cols, row_mask, n_cols, x_tail, False)
        tail32 = x_tail.to(tl.float32)
        square_sum += tl.sum(tail32 * tail32, axis=1)
    rstd = tl.rsqrt(square_sum / n_cols + eps)[:, None]
    w_head = tl.load(weight_ptr + head_cols).to(tl.float32)
    normed = (head32 * rstd).to(x_head.dtype).to(tl.float32) * w_head[None, :]
    _store_piece(out_ptr, rows, out_stride, head_cols, row_mask, n_cols, normed, True)
    if TAIL_COLS > 0:
        w_tail = tl.load(weight_ptr + tail_cols, mask=tail_cols < n_cols, other=0.0).to(tl.float32)
        normed_tail = (tail32 * rstd).to(x_tail.dtype).to(tl.float32) * w_tail[None, :]
        _store_piece(out_ptr, rows, out_stride, tail_cols, row_mask, n_cols, normed_tail, False)


def row_pieces(n_cols: int) -> tuple[int, int]:
    """(HEAD_COLS, TAIL_COLS): a full power-of-two head and a padded power-of-two tail."""
    head = 1 << (n_cols.bit_length() - 1)
    rest = n_cols - head
    return head, (triton.next_power_of_2(rest) if rest else 0)


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    block_m: int,
    num_warps: int,
    out: torch.Tensor | None,
    summed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(
            f"rms_norm wants x [T, H] and weight [H], got {tuple(x.shape)}, {tuple(weight.shape)}"
        )
    check_last_dim_contiguous("x", x)
    n_rows, n_cols = x.shape
    out = output_buffer(out, x, tuple(x.shape))
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
        check_last_dim_contiguous("residual", residual)
        summed = output_buffer(summed, x, tuple(x.shape))
    head, tail = row_pieces(n_cols)
    grid = (triton.cdiv(n_rows, block_m),)
    _rms_norm_kernel[grid](
        x,
        x if residual is None else residual,
        weight.contiguous(),
        out,
        out if summed is None else summed,
        n_rows,
        n_cols,
        x.stride(0),
        x.stride(0) if residual is None else residual.stride(0),
        out.stride(0),
        out.stride(0) if summed is None else summed.stride(0),
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK_M=block_m,
        HEAD_COLS=head,
        TAIL_COLS=tail,
        num_warps=num_warps,
    )
    return out, summed


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
    block_m: int = 2,
    num_warps: int = 2,
) -> torch.Tensor:
    """x [T, H] -> x / rms(x) * weight, [T, H] in x.dtype (written to ``out`` when given)."""
    normed, _ = _launch(x, None, weight, eps, block_m, num_warps, out, None)
    return normed


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
    summed_out: torch.Tensor | None = None,
    block_m: int = 2,
    num_warps: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [T, H] -> (rms_norm(x + residual), x + residual), both [T, H] in x.dtype.

    ``summed_out`` may be ``residual`` itself: each element is read before it is written.
    """
    normed, summed = _launch(x, residual, weight, eps, block_m, num_warps, out, summed_out)
    assert summed is not None
    return normed, summed
