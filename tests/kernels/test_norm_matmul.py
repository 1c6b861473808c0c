"""RMSNorm folded into the matmul after it (and SwiGLU into the gate/up product), in the CPU interpreter.

fp32 is held to the fp64 reference; bf16 to the unfused chain of our own kernels in bf16
(add_rms_norm, F.linear, silu_and_mul), which rounds at the same points: against fp64 the
bf16 roundings of three chained ops add up past the single-op tolerance.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.norm_matmul import (  # noqa: E402
    norm_gate_up_silu,
    norm_matmul,
    tile_sizes,
)
from radixfair_engine.kernels.reference import norm_gate_up_silu_reference, norm_matmul_reference  # noqa: E402
from radixfair_engine.kernels.rms_norm import add_rms_norm, rms_norm  # noqa: E402
from radixfair_engine.kernels.swiglu import silu_and_mul  # noqa: E402

EPS = 1e-5
# bf16 against the same roundings done by separate ops. Triton 3.6's interpreter converts fp32 to
# bf16 by truncation (measured: half of all values land one ulp below torch's round-to-nearest), so
# the projection output's conversion alone can be one ulp, up to 2^-7 relative, off the cuBLAS-like
# reference: 4e-3 to 9e-3 seen. On the GPU the conversion rounds to nearest.
CHAIN_TOLERANCE = TOLERANCE[torch.bfloat16]


def operands(m: int, k: int, n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=generator).to(dtype)
    residual = torch.randn(m, k, generator=generator).to(dtype)
    norm_weight = (1 + 0.3 * torch.randn(k, generator=generator)).to(dtype)
    weight = (torch.randn(n, k, generator=generator) / k**0.5).to(dtype)
    return x, residual, norm_weight, weight


def fp64(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.double() for t in tensors]


# (M, K, N): one decode row; ragged M, K not a multiple of the 64-wide K step, N not of the tile;
# SmolLM2's K = 576 with more rows than one 16-row tile.
SHAPES = [(1, 64, 48), (7, 100, 40), (19, 576, 96)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_residual", [True, False])
def test_norm_matmul_matches_fp64_reference_in_fp32(shape: tuple[int, int, int], with_residual: bool) -> None:
    m, k, n = shape
    x, residual, norm_weight, weight = operands(m, k, n, torch.float32)
    residual = residual if with_residual else None
    out, summed_out = poisoned_like(torch.empty(m, n)), poisoned_like(x)

    result, summed = norm_matmul(
        x, residual, norm_weight, EPS, weight, out=out, summed_out=summed_out if with_residual else None
    )

    ref, ref_sum = norm_matmul_reference(*fp64(x, residual, norm_weight), EPS, weight.double())
    assert result.data_ptr() == out.data_ptr()
    assert relative_error(result, ref) < TOLERANCE[torch.float32]
    assert relative_error(summed, ref_sum) < TOLERANCE[torch.float32]
    if not with_residual:
        assert summed.data_ptr() == x.data_ptr()


@pytest.mark.parametrize("shape", SHAPES)
def test_norm_matmul_in_bf16_equals_the_unfused_ops(shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    x, residual, norm_weight, weight = operands(m, k, n, torch.bfloat16)

    result, summed = norm_matmul(x, residual, norm_weight, EPS, weight)

    normed, expected_sum = add_rms_norm(x, residual, norm_weight, EPS)
    assert torch.equal(summed, expected_sum)
    assert relative_error(result, F.linear(normed.double(), weight.double())) < CHAIN_TOLERANCE


@pytest.mark.parametrize("shape", SHAPES)
def test_norm_gate_up_silu_matches_fp64_reference_in_fp32(shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    x, residual, norm_weight, weight = operands(m, k, 2 * n, torch.float32)
    out, summed_out = poisoned_like(torch.empty(m, n)), poisoned_like(x)

    result, summed = norm_gate_up_silu(x, residual, norm_weight, EPS, weight, out=out, summed_out=summed_out)

    ref, ref_sum = norm_gate_up_silu_reference(*fp64(x, residual, norm_weight), EPS, weight.double())
    assert relative_error(result, ref) < TOLERANCE[torch.float32]
    assert relative_error(summed, ref_sum) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("shape", SHAPES)
def test_norm_gate_up_silu_in_bf16_equals_the_unfused_ops(shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    x, residual, norm_weight, weight = operands(m, k, 2 * n, torch.bfloat16)

    result, _ = norm_gate_up_silu(x, residual, norm_weight, EPS, weight)

    normed, _ = add_rms_norm(x, residual, norm_weight, EPS)
    # The unfused chain, its projection in fp64 then rounded to bf16 as cuBLAS rounds its output.
    expected = silu_and_mul(F.linear(normed.double(), weight.double()).to(torch.bfloat16))
    assert relative_error(result, expected) < CHAIN_TOLERANCE


def test_the_first_layer_form_without_residual_normalises_x_alone() -> None:
    x, _, norm_weight, weight = operands(5, 96, 64, torch.float32)

    result, summed = norm_gate_up_silu(x, None, norm_weight, EPS, weight)

    expected = silu_and_mul(F.linear(rms_norm(x, norm_weight, EPS).double(), weight.double()))
    assert summed.data_ptr() == x.data_ptr()
    assert relative_error(result, expected) < TOLERANCE[torch.float32]


def test_the_lm_head_form_gathers_rows_and_writes_fp32_logits_rounded_to_the_activation_dtype() -> None:
    x, residual, norm_weight, weight = operands(9, 64, 80, torch.bfloat16)
    rows = torch.tensor([8, 0, 3], dtype=torch.int64)

    logits, _ = norm_matmul(x, residual, norm_weight, EPS, weight, row_indices=rows, out_dtype=torch.float32)

    normed, _ = add_rms_norm(x, residual, norm_weight, EPS)
    expected = F.linear(normed[rows].double(), weight.double())
    assert logits.dtype == torch.float32 and logits.shape == (3, 80)
    # Every logit is a bf16 value: the unfused head's bf16 output, cast to fp32.
    assert torch.equal(logits, logits.to(torch.bfloat16).float())
    assert relative_error(logits, expected) < CHAIN_TOLERANCE


def test_without_a_norm_it_is_a_plain_matmul_reading_strided_rows() -> None:
    wide = torch.randn(6, 300)
    x = wide[:, 40:240]  # rows 300 apart, each contiguous; K = 200 is not a multiple of 64
    weight = torch.randn(72, 200) / 200**0.5

    out, _ = norm_matmul(x, None, None, 0.0, weight)

    assert relative_error(out, x.double() @ weight.double().T) < TOLERANCE[torch.float32]


@settings(max_examples=20)  # each example is a few interpreted launches
@given(
    m=st.integers(1, 40),
    k=st.sampled_from([16, 48, 64, 130]),
    n=st.integers(1, 70),
    block_m=st.sampled_from([16, 32]),
    block_n=st.sampled_from([16, 32]),
)
def test_any_tiling_of_a_ragged_problem_writes_every_output_once(
    m: int, k: int, n: int, block_m: int, block_n: int
) -> None:
    x, residual, norm_weight, weight = operands(m, k, 2 * n, torch.float32, seed=m * 131 + n)
    out, summed_out = poisoned_like(torch.empty(m, n)), poisoned_like(x)

    norm_gate_up_silu(
        x, residual, norm_weight, EPS, weight, out=out, summed_out=summed_out,
        block_m=block_m, block_n=block_n, block_k=16,
    )  # fmt: skip

    ref, ref_sum = norm_gate_up_silu_reference(*fp64(x, residual, norm_weight), EPS, weight.double())
    assert torch.isfinite(out).all() and torch.isfinite(summed_out).all()
    assert relative_error(summed_out, ref_sum) < TOLERANCE[torch.float32]
    # Elementwise, not relative to the norm: one output of a 1 x 1 problem may nearly cancel.
    # An fp32 dot of K terms errs by at most ~K * 2^-24 of the sum of |terms|; silu' <= 1.1.
    normed, _ = norm_matmul_reference(*fp64(x, residual, norm_weight), EPS, torch.eye(k, dtype=torch.float64))
    gate_up = F.linear(normed, weight.double())
    gate, up = gate_up.chunk(2, dim=-1)
    mag_gate, mag_up = F.linear(normed.abs(), weight.double().abs()).chunk(2, dim=-1)
    bound = 4 * k * 2.0**-24 * (1.1 * mag_gate * up.abs() + F.silu(gate).abs() * mag_up) + 1e-30
    assert ((out.double() - ref).abs() <= bound).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": torch.randn(8, 9)}, "want x"),
        ({"weight": torch.randn(8, 16, dtype=torch.float64)}, "dtype"),
        ({"norm_weight": torch.ones(15)}, "norm_weight"),
        ({"residual": torch.randn(3, 16), "norm_weight": None}, "only added in front of a norm"),
        ({"residual": torch.randn(3, 16)}, "does not match"),
        ({"x": torch.randn(16, 4).T}, "contiguous"),
        ({"row_indices": torch.tensor([0], dtype=torch.int32)}, "int64"),
    ],
)
def test_bad_operands_are_refused_before_launch(kwargs: dict, message: str) -> None:
    args = {
        "x": torch.randn(4, 16),
        "residual": None,
        "norm_weight": torch.ones(16),
        "eps": EPS,
        "weight": torch.randn(8, 16),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        norm_matmul(**args)


def test_the_sum_may_not_overwrite_the_residual_other_programs_still_read() -> None:
    x, residual, norm_weight, weight = operands(4, 32, 32, torch.float32)
    with pytest.raises(ValueError, match="alias"):
        norm_matmul(x, residual, norm_weight, EPS, weight, summed_out=residual)


def test_decode_batches_get_narrow_tiles_on_the_gpu_and_few_wide_ones_in_the_interpreter() -> None:
    assert tile_sizes(1, 960, on_cpu=False) == (16, 16)
    assert tile_sizes(1, 3072, on_cpu=False) == (16, 16)
    assert tile_sizes(128, 1536, on_cpu=False) == (64, 32)
    assert tile_sizes(1, 49152, on_cpu=False) == (16, 128)
    assert tile_sizes(1, 49152, on_cpu=True) == (16, 16384)
