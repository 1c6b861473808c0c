# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""SwiGLU activation, silu(gate) * up, reading gate and up from one fused projection.

Shapes and dtypes:
  gate_up  [T, 2I] bf16/fp16/fp32, gate in columns [0, I), up in [I, 2I); last dimension contiguous
  returns  [T, I] in gate_up.dtype

Rounding follows ``F.silu(gate) * up`` in torch: silu is computed in fp32 and
rounded to the activation dtype, then multiplied by up and rounded again.
Each program walks BLOCK_M whole rows in BLOCK_N-wide chunks; SmolLM2's I = 1536
is three 512-wide chunks, so no lanes are masked at the model's shape.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous, output_buffer


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,
    out_ptr,
    n_rows,
    in_stride,
    out_stride,
    N_COLS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # A program streams BLOCK_M whole rows, chunk by chunk: consecutive programs read
    # consecutive memory (a 2D grid over column blocks touched each 6 KB row in three
    # separate passes and ran 2-4% slower at 65,536 tokens).
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = (rows < n_rows)[:, None]
    for chunk in tl.static_range((N_COLS + BLOCK_N - 1) // BLOCK_N):
        cols = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = row_mask & (cols < N_COLS)[None, :]
        gate_ptrs = gate_up_ptr + rows[:, None] * in_stride + cols[None, :]
        gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_ptrs + N_COLS, mask=mask, other=0.0)
        activated = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)
        out = activated.to(tl.float32) * up.to(tl.float32)
        out_ptrs = out_ptr + rows[:, None] * out_stride + cols[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(
    gate_up: torch.Tensor,
    out: torch.Tensor | None = None,
    block_m: int = 2,
    block_n: int = 512,
    num_warps: int = 8,
) -> torch.Tensor:
    """gate_up [T, 2I] -> silu(gate) * up, [T, I]. I is compiled in: one specialisation per model.

    Defaults from the H100 sweep at 65,536 tokens (bench/results/kernels.md): 2 rows, 512-wide
    chunks, 8 warps ran at 99% of copy bandwidth.
    """
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"silu_and_mul wants gate_up [T, 2I], got {tuple(gate_up.shape)}")
    check_last_dim_contiguous("gate_up", gate_up)
    n_rows, n_cols = gate_up.shape[0], gate_up.shape[1] // 2
    out = output_buffer(out, gate_up, (n_rows, n_cols))
    if n_rows == 0:
        return out
    block_n = min(block_n, triton.next_power_of_2(n_cols))
    _silu_and_mul_kernel[(triton.cdiv(n_rows, block_m),)](
        gate_up,
        out,
        n_rows,
        gate_up.stride(0),
        out.stride(0),
        N_COLS=n_cols,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return out
