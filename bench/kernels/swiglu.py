"""SwiGLU over the fused gate/up projection (kernels/swiglu.py) against torch, torch.compile, Liger."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.kernels.harness import (
    BF16,
    DEVICE,
    DTYPE,
    INTER,
    TORCH,
    Case,
    Record,
    Sizes,
    SweepRows,
    compiled,
    try_liger,
)
from radixfair_engine.kernels import swiglu
from radixfair_engine.kernels.accuracy import poisoned_like, relative_error
from radixfair_engine.kernels.reference import silu_and_mul_reference

SIZES = (4096, 65536)  # tokens: L2-resident, and DRAM-bound


def cases(tokens: int) -> list[Case]:
    gate_up = torch.randn(tokens, 2 * INTER, dtype=DTYPE, device=DEVICE)
    case = Case("swiglu (fused gate_up)", f"T={tokens}", tokens * INTER * BF16 * 3)
    case.impls["ours"] = lambda: swiglu.silu_and_mul(gate_up)
    case.impls["torch eager"] = lambda: TORCH.silu_and_mul(gate_up)
    silu_compiled = compiled(TORCH.silu_and_mul)
    case.impls["torch.compile"] = lambda: silu_compiled(gate_up)
    liger = try_liger("swiglu")
    if liger is not None:
        case.impls["liger"] = lambda: liger.apply(gate_up)  # type: ignore[attr-defined]
    return [case]


def sweep(sweeper: SweepRows, tokens: int = 65536) -> None:
    """The row-streaming version's block sizes at 64k tokens (run 1 left it 4% behind Liger)."""
    gate_up = torch.randn(tokens, 2 * INTER, dtype=DTYPE, device=DEVICE)
    for block_m in (1, 2, 4, 8):
        for block_n in (256, 512):
            for warps in (2, 4, 8):
                sweeper.record(
                    "swiglu",
                    f"block_m={block_m} block_n={block_n} warps={warps}",
                    lambda b=block_m, n=block_n, w=warps: swiglu.silu_and_mul(
                        gate_up, block_m=b, block_n=n, num_warps=w
                    ),
                    tokens * INTER * BF16 * 3,
                )


def check(dtype: torch.dtype, sizes: Sizes, record: Record) -> None:
    for tokens in sizes.tokens:
        gate_up = torch.randn(tokens, 2 * INTER, dtype=dtype, device=DEVICE) * 3
        out = poisoned_like(gate_up[:, :INTER].contiguous())
        swiglu.silu_and_mul(gate_up, out=out)
        record("swiglu", dtype, f"T={tokens}", relative_error(out, silu_and_mul_reference(gate_up.double())))


def launches(tokens: int) -> list[tuple[str, Callable[[], object]]]:
    gate_up = torch.randn(tokens, 2 * INTER, dtype=DTYPE)
    return [("swiglu", lambda: swiglu.silu_and_mul(gate_up))]
