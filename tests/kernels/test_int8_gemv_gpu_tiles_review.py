"""Review of the weight-only GEMV form: the block sizes the GPU launches, run in the interpreter.

``_weight_only_matmul`` asks ``gemv_tile_sizes`` for the interpreter's wide blocks (up to 256
channels a program) whenever the input is on the CPU, so test_int8_gemv.py never runs the kernel at
the GPU's 4- or 8-channel blocks, nor with an input whose rows are farther apart than K. Here the
kernel is launched as the GPU path would launch it (``gemv_tile_sizes(..., on_cpu=False)``), on
small ragged shapes, with strided input rows, against the fp64 reference.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import triton  # noqa: E402

from radixfair_engine.kernels import int8_matmul  # noqa: E402
from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.reference import (  # noqa: E402
    fp8_weight_matmul_reference,
    int8_weight_matmul_reference,
)
from radixfair_model_format.quantized_checkpoint import quantize_weight  # noqa: E402

REFERENCES = {"int8": int8_weight_matmul_reference, "fp8": fp8_weight_matmul_reference}


def launch_as_on_the_gpu(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, fp8: bool) -> torch.Tensor:
    m, k = x.shape
    n = q.shape[0]
    block_n, block_k = int8_matmul.gemv_tile_sizes(n, k, on_cpu=False)
    out = poisoned_like(torch.empty(m, n, dtype=x.dtype))
    int8_matmul._weight_only_gemv_kernel[(triton.cdiv(n, block_n), m)](
        x, q, scale, out, n, k, x.stride(0), q.stride(0), out.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, FP8_CODES=fp8, num_warps=4,
    )  # fmt: skip
    return out


@settings(max_examples=10, deadline=None)
@given(
    scheme=st.sampled_from(["int8", "fp8"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    m=st.integers(1, 4),
    n=st.sampled_from([1, 3, 5, 13, 1030]),  # 1,030: above 1,024, 8 channels a program
    k=st.sampled_from([1, 7, 40, 576, 2100]),  # 2,100: a second, masked K step
    row_gap=st.integers(0, 9),
    seed=st.integers(0, 2**16),
)
def test_the_gpu_gemv_blocks_match_fp64_on_ragged_and_strided_inputs(
    scheme: str, dtype: torch.dtype, m: int, n: int, k: int, row_gap: int, seed: int
) -> None:
    if n * k > 200_000:
        k = 40  # keep the interpreter's programs few
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=generator) * torch.logspace(-2, 0, n)[:, None]
    q, scale = quantize_weight(weight, scheme)
    q = q if scheme == "int8" else q.view(torch.uint8)
    # Rows row_gap elements apart beyond K: a slice of a wider activation buffer.
    x = torch.randn(m, k + row_gap, generator=generator).to(dtype)[:, :k]

    out = launch_as_on_the_gpu(x, q, scale, fp8=scheme == "fp8")

    assert relative_error(out, REFERENCES[scheme](x, q, scale)) < TOLERANCE[dtype]
