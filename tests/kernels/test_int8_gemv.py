"""The weight-only kernel's GEMV form (a handful of rows, no tl.dot) against its tile form and fp64.

kernels/int8_matmul.py computes up to ``gemv_max_rows`` rows with one program per (4 or 8 output
channels, row) that loads its channels' whole K at once. Both forms take the same codes and
scales; they may differ only in the order of their fp32 sums, then round once to the output dtype.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from radixfair_engine.config import EngineConfig  # noqa: E402
from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.int8_matmul import (  # noqa: E402
    fp8_weight_matmul,
    gemv_tile_sizes,
    int8_weight_matmul,
)
from radixfair_engine.kernels.reference import (  # noqa: E402
    fp8_weight_matmul_reference,
    int8_weight_matmul_reference,
)
from radixfair_engine.model.quantized_linear import QuantizedKernelConfig  # noqa: E402
from radixfair_model_format.quantized_checkpoint import quantize_weight  # noqa: E402

MATMULS = {"int8": (int8_weight_matmul, int8_weight_matmul_reference)}
MATMULS["fp8"] = (fp8_weight_matmul, fp8_weight_matmul_reference)


def codes(scheme: str, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Rows of different magnitude, so each channel's scale matters.
    weight = torch.randn(n, k, generator=generator) * torch.logspace(-2, 0, n)[:, None]
    q, scale = quantize_weight(weight, scheme)
    return (q if scheme == "int8" else q.view(torch.uint8)), scale


@settings(max_examples=12, deadline=None)
@given(
    scheme=st.sampled_from(["int8", "fp8"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    m=st.integers(1, 4),
    n=st.integers(1, 300),  # past 256: more than one program a row in the interpreter too
    k=st.integers(1, 300),
    seed=st.integers(0, 2**16),
)
def test_the_gemv_form_matches_fp64_for_any_ragged_shape(scheme, dtype, m, n, k, seed) -> None:
    q, scale = codes(scheme, n, k, seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    matmul, reference = MATMULS[scheme]
    out = poisoned_like(torch.empty(m, n, dtype=dtype))

    matmul(x, q, scale, out=out, gemv_max_rows=m)

    assert relative_error(out, reference(x, q, scale)) < TOLERANCE[dtype]


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_a_k_longer_than_one_gemv_step_is_walked_to_its_end(scheme: str) -> None:
    # gemv_tile_sizes caps a step at 2,048 of K: 2,100 takes a second, masked step.
    q, scale = codes(scheme, 12, 2100, seed=5)
    x = torch.randn(2, 2100)
    matmul, reference = MATMULS[scheme]

    out = matmul(x, q, scale, gemv_max_rows=2)

    assert relative_error(out, reference(x, q, scale)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_rows_above_the_gemv_limit_take_the_tile_form_with_the_same_result(scheme: str) -> None:
    q, scale = codes(scheme, 24, 96, seed=2)
    x = torch.randn(5, 96).bfloat16()
    matmul, _ = MATMULS[scheme]

    gemv = matmul(x, q, scale, gemv_max_rows=5)
    tile = matmul(x, q, scale, gemv_max_rows=4)

    # Each is within one bf16 rounding of the exact product, so within two of each other.
    assert torch.allclose(gemv.float(), tile.float(), rtol=2 * 2.0**-8, atol=1e-6)


def test_gemv_tiles_cover_smollm2s_projections_in_enough_programs_and_one_k_step() -> None:
    # 576-wide outputs in 4-channel programs: 144 a row, more than an H200's 132 SMs.
    assert gemv_tile_sizes(576, 1536) == (4, 2048)
    assert gemv_tile_sizes(960, 576) == (4, 1024)
    assert gemv_tile_sizes(3072, 576) == (8, 1024)
    assert gemv_tile_sizes(3072, 1536) == (4, 2048)  # at most 8,192 codes a program
    assert gemv_tile_sizes(576, 8192) == (4, 2048)
    # The interpreter runs programs one after another: few, wide ones there.
    assert gemv_tile_sizes(576, 1536, on_cpu=True) == (256, 2048)
    assert gemv_tile_sizes(40, 96, on_cpu=True) == (64, 128)


@pytest.mark.parametrize(
    ("field", "value"), [("gemv_max_rows", -1), ("tile_max_block_m", 48), ("tile_max_block_m", 8)]
)
def test_kernel_choices_out_of_range_are_refused_at_the_config(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        QuantizedKernelConfig(**{field: value})
    with pytest.raises(ValueError, match=f"quantized_{field}"):
        EngineConfig(**{f"quantized_{field}": value})
