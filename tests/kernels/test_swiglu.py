import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.reference import silu_and_mul_reference  # noqa: E402
from radixfair_engine.kernels.swiglu import silu_and_mul  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8), (5, 40), (3, 1536), (17, 96)])
def test_silu_and_mul_matches_fp64_reference(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    rows, intermediate = shape
    gate_up = torch.randn(rows, 2 * intermediate, dtype=dtype) * 4
    out = poisoned_like(gate_up[:, :intermediate].contiguous())

    silu_and_mul(gate_up, out=out, block_n=32)

    assert relative_error(out, silu_and_mul_reference(gate_up.double())) < TOLERANCE[dtype]


def test_silu_and_mul_rejects_an_odd_width() -> None:
    with pytest.raises(ValueError, match="2I"):
        silu_and_mul(torch.randn(2, 7))
