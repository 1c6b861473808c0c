"""The fp8 (e4m3) launcher of kernels/int8_matmul.py: codes held as uint8, decoded in registers."""

import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.int8_matmul import fp8_weight_matmul  # noqa: E402
from radixfair_engine.kernels.reference import fp8_activation_matmul_reference, fp8_weight_matmul_reference  # noqa: E402
from radixfair_model_format.quantized_checkpoint import dequantize_weight, quantize_weight  # noqa: E402


def fp8_codes(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes [n, k], fp32 scale [n]) as QuantizedLinear holds an fp8 checkpoint's matrix."""
    generator = torch.Generator().manual_seed(seed)
    q, scale = quantize_weight(torch.randn(n, k, generator=generator) * 0.05, "fp8")
    return q.view(torch.uint8), scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# (M, N, K): a single decode row, ragged edges in every dimension, more rows than one tile.
# K = 64 and 128 take the unmasked (EVEN_K) loop at block_k 64, the others the masked one.
@pytest.mark.parametrize("shape", [(1, 64, 64), (1, 40, 200), (3, 40, 200), (17, 96, 130), (40, 33, 72)])
# The weight tile addressed transposed, or loaded as stored and transposed in registers.
@pytest.mark.parametrize("weight_rows", [False, True])
def test_fp8_weight_matmul_matches_fp64_reference(
    dtype: torch.dtype, shape: tuple[int, int, int], weight_rows: bool
) -> None:
    m, n, k = shape
    q, scale = fp8_codes(n, k)
    x = torch.randn(m, k, dtype=dtype)
    out = poisoned_like(torch.empty(m, n, dtype=dtype))

    fp8_weight_matmul(x, q, scale, out=out, block_k=64, weight_rows=weight_rows)

    assert relative_error(out, fp8_weight_matmul_reference(x, q, scale)) < TOLERANCE[dtype]


def test_fp8_weight_matmul_equals_the_dequantized_linear_the_worker_computes() -> None:
    q, scale = fp8_codes(48, 96, seed=3)
    x = torch.randn(5, 96)

    out = fp8_weight_matmul(x, q, scale)

    weight = dequantize_weight(q.view(torch.float8_e4m3fn), scale).double()
    assert relative_error(out, torch.nn.functional.linear(x.double(), weight)) < TOLERANCE[torch.float32]


def test_every_finite_e4m3_code_decodes_to_its_value() -> None:
    # Row n of q holds every finite code (0x7f and 0xff are NaN in e4m3fn; the quantizer never writes
    # them); one-hot rows of x pick one code each, so out[k, n] is that code's value times the scale,
    # exactly: one nonzero product per fp32 sum.
    finite = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)
    q = torch.stack([finite, finite.roll(7)])  # [2, 254]
    scale = torch.tensor([1.0, 0.5])
    x = torch.eye(finite.numel())

    out = fp8_weight_matmul(x, q, scale)

    assert torch.equal(out, (q.view(torch.float8_e4m3fn).float() * scale[:, None]).T)


def test_a_float8_tensor_is_read_through_its_bytes() -> None:
    q, scale = fp8_codes(24, 64, seed=5)
    x = torch.randn(2, 64)

    assert torch.equal(
        fp8_weight_matmul(x, q.view(torch.float8_e4m3fn), scale), fp8_weight_matmul(x, q, scale)
    )


@pytest.mark.parametrize(
    ("q", "scale", "message"),
    [
        (torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), "fp8 e4m3 codes"),
        (torch.zeros(4, 9, dtype=torch.uint8), torch.ones(4), "shapes do not fit"),
        (torch.zeros(4, 8, dtype=torch.uint8), torch.ones(3), "shapes do not fit"),
    ],
)
def test_bad_operands_are_refused_before_launch(q, scale, message) -> None:
    with pytest.raises(ValueError, match=message):
        fp8_weight_matmul(torch.randn(2, 8), q, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 40, 200), (17, 96, 130), (40, 33, 72)])
@pytest.mark.parametrize("weight_rows", [False, True])
def test_fp8_activations_match_the_per_token_w8a8_reference(
    dtype: torch.dtype, shape: tuple[int, int, int], weight_rows: bool
) -> None:
    m, n, k = shape
    q, scale = fp8_codes(n, k, seed=7)
    x = torch.randn(m, k, dtype=dtype)
    x[0] = 0.0  # a row of zeros keeps scale 1 and gives zeros
    out = poisoned_like(torch.empty(m, n, dtype=dtype))

    fp8_weight_matmul(x, q, scale, out=out, block_k=64, weight_rows=weight_rows, fp8_activations=True)

    w8a8 = fp8_activation_matmul_reference(x, q, scale)
    assert relative_error(out, w8a8) < TOLERANCE[dtype]
    assert not out[0].any()
    if m > 1:
        # The activations really were rounded: e4m3 keeps 3 mantissa bits, so each element moves by up
        # to 2^-4 of itself (about 0.036 rms), and a product by about that much against weight-only.
        moved = relative_error(out[1:].double(), fp8_weight_matmul_reference(x[1:], q, scale))
        assert 0.005 < moved < 0.1


def test_fp8_activations_leave_the_gemv_rows_weight_only() -> None:
    q, scale = fp8_codes(40, 96, seed=8)
    x = torch.randn(3, 96)

    out = fp8_weight_matmul(x, q, scale, gemv_max_rows=4, fp8_activations=True)

    assert relative_error(out, fp8_weight_matmul_reference(x, q, scale)) < TOLERANCE[torch.float32]


def test_fp8_activations_round_small_values_onto_e4m3s_subnormal_grid() -> None:
    # Row max 448 (scale 1): the rest of the row is below 2^-6, where e4m3 holds multiples of 2^-9 only.
    # Ties included (2.5 and 3.5 * 2^-9 round to even: 2 and 4), and values next to 2^-6.
    small = torch.tensor(
        [0.000977, 0.00488, 0.0087890634, -0.0087890634, 0.015, 2.5 / 512, 3.5 / 512, 0.0155]
    )
    x = torch.zeros(16, 64)
    x[:, 0] = 448.0
    x[:, 1 : 1 + len(small)] = small
    # An identity weight on those columns: the output is the rounded activations themselves.
    weight = torch.zeros(64, 64)
    weight[torch.arange(64), torch.arange(64)] = 1.0
    q, scale = quantize_weight(weight, "fp8")
    q = q.view(torch.uint8)

    out = fp8_weight_matmul(x, q, scale, fp8_activations=True)

    assert relative_error(out, fp8_activation_matmul_reference(x, q, scale)) < TOLERANCE[torch.float32]
    # The identity weight (codes times scales) is 1 up to fp32 rounding; neighbouring grid points
    # differ by at least 2^-9 (over 12% of these values), so a relative 1e-6 tells them apart.
    rounded = small.to(torch.float8_e4m3fn).float()
    assert torch.allclose(out[:, 1 : 1 + len(small)], rounded.expand(16, -1), rtol=1e-6, atol=0)
