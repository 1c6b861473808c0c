import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.reference import add_rms_norm_reference, rms_norm_reference  # noqa: E402
from radixfair_engine.kernels.rms_norm import add_rms_norm, rms_norm  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]
# One token; a full power-of-two row; 96 = 64 + 32 (head + tail); 40 = 32 + 8 padded to 16; SmolLM2's 576.
SHAPES = [(1, 64), (7, 96), (13, 40), (5, 576)]
EPS = 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_fp64_reference(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    x = torch.randn(shape, dtype=dtype) * 3
    weight = torch.randn(shape[1], dtype=dtype)
    out = poisoned_like(x)

    rms_norm(x, weight, EPS, out=out)

    ref = rms_norm_reference(x.double(), weight.double(), EPS)
    assert relative_error(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_add_rms_norm_returns_norm_of_sum_and_the_sum(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    x, residual = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    weight = torch.randn(shape[1], dtype=dtype)
    out, summed = poisoned_like(x), poisoned_like(x)

    add_rms_norm(x, residual, weight, EPS, out=out, summed_out=summed)

    ref_out, ref_sum = add_rms_norm_reference(x.double(), residual.double(), weight.double(), EPS)
    assert relative_error(summed, ref_sum) < TOLERANCE[dtype]
    assert relative_error(out, ref_out) < TOLERANCE[dtype]


def test_add_rms_norm_can_write_the_sum_over_the_residual() -> None:
    x, residual = torch.randn(6, 96), torch.randn(6, 96)
    weight = torch.randn(96)
    expected_out, expected_sum = add_rms_norm_reference(x.double(), residual.double(), weight.double(), EPS)

    out, summed = add_rms_norm(x, residual, weight, EPS, summed_out=residual)

    assert summed.data_ptr() == residual.data_ptr()
    assert relative_error(summed, expected_sum) < TOLERANCE[torch.float32]
    assert relative_error(out, expected_out) < TOLERANCE[torch.float32]


def test_rms_norm_reads_rows_with_a_larger_stride() -> None:
    wide = torch.randn(9, 160)
    x = wide[:, 16:112]  # [9, 96] view, row stride 160
    weight = torch.randn(96)

    out = rms_norm(x, weight, EPS)

    assert (
        relative_error(out, rms_norm_reference(x.double(), weight.double(), EPS)) < TOLERANCE[torch.float32]
    )


def test_rms_norm_rejects_a_weight_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 64), torch.randn(32), EPS)
