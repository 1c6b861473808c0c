import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.int8_matmul import (  # noqa: E402
    int8_weight_matmul,
    tile_sizes,
)
from radixfair_engine.kernels.reference import int8_weight_matmul_reference  # noqa: E402
from radixfair_model_format.quantized_checkpoint import dequantize_weight, quantize_weight  # noqa: E402


def quantized(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return quantize_weight(torch.randn(n, k, generator=generator) * 0.05, "int8")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# (M, N, K): a single decode row, ragged edges in every dimension, more rows than one tile.
# K = 64 and 128 take the unmasked (EVEN_K) loop at block_k 64, the others the masked one.
@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 40, 200), (17, 96, 130), (40, 33, 72), (5, 24, 128)])
# 0: the tile kernel for every row count; 64: the GEMV kernel for all of these.
@pytest.mark.parametrize("gemv_max_rows", [0, 64])
def test_int8_weight_matmul_matches_fp64_reference(
    dtype: torch.dtype, shape: tuple[int, int, int], gemv_max_rows: int
) -> None:
    m, n, k = shape
    q, scale = quantized(n, k)
    x = torch.randn(m, k, dtype=dtype)
    out = poisoned_like(torch.empty(m, n, dtype=dtype))

    int8_weight_matmul(x, q, scale, out=out, block_k=64, gemv_max_rows=gemv_max_rows)

    assert relative_error(out, int8_weight_matmul_reference(x, q, scale)) < TOLERANCE[dtype]


def test_int8_weight_matmul_equals_the_dequantized_linear_the_worker_computes() -> None:
    q, scale = quantized(48, 96, seed=3)
    x = torch.randn(5, 96)

    out = int8_weight_matmul(x, q, scale)

    expected = torch.nn.functional.linear(x.double(), dequantize_weight(q, scale).double())
    assert relative_error(out, expected) < TOLERANCE[torch.float32]


def test_a_strided_batch_of_rows_is_read_through_its_stride() -> None:
    q, scale = quantized(32, 64)
    wide = torch.randn(4, 128)
    x = wide[:, :64]  # rows 128 apart, each contiguous

    out = int8_weight_matmul(x, q, scale)

    assert relative_error(out, int8_weight_matmul_reference(x, q, scale)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 40, 200), (17, 96, 130), (40, 33, 72), (5, 24, 128)])
def test_the_weight_tile_loaded_as_stored_gives_the_same_product(
    dtype: torch.dtype, shape: tuple[int, int, int]
) -> None:
    m, n, k = shape
    q, scale = quantized(n, k, seed=5)
    x = torch.randn(m, k, dtype=dtype)
    out = poisoned_like(torch.empty(m, n, dtype=dtype))

    int8_weight_matmul(x, q, scale, out=out, block_k=64, weight_rows=True)

    assert relative_error(out, int8_weight_matmul_reference(x, q, scale)) < TOLERANCE[dtype]


@pytest.mark.parametrize(
    ("x", "q", "scale", "message"),
    [
        (torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int16), torch.ones(4), "q must be int8"),
        (torch.randn(2, 8), torch.zeros(4, 9, dtype=torch.int8), torch.ones(4), "shapes do not fit"),
        (torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(5), "shapes do not fit"),
        (torch.randn(8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), "want x"),
        (torch.randn(8, 2).T, torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), "contiguous"),
        # Scales are checked, not converted: a conversion would be one more op per product and step.
        (torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4).bfloat16(), "fp32"),
        (torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(8)[::2], "fp32"),
    ],
)
def test_bad_operands_are_refused_before_launch(x, q, scale, message) -> None:
    with pytest.raises(ValueError, match=message):
        int8_weight_matmul(x, q, scale)


def test_tiles_are_the_h200_sweeps_fastest_per_batch_and_width() -> None:
    # bench/results/gpu_int8_h200.json, best_tile: one 16-row tile at batch 1, 64-row tiles at 128
    # among the 64- and 128-row tiles it tried (max_block_m 64 keeps those).
    assert tile_sizes(1, 576) == (16, 16)
    assert tile_sizes(1, 3072) == (16, 32)
    assert tile_sizes(1, 49152) == (16, 128)
    assert tile_sizes(128, 960, max_block_m=64) == (64, 16)
    assert tile_sizes(128, 3072, max_block_m=64) == (64, 64)
    assert tile_sizes(128, 49152) == (128, 128)
    assert tile_sizes(20, 576) == (32, 16)


def test_above_16_rows_the_default_tiles_are_32_rows_and_at_most_32_wide() -> None:
    # 4x the programs of the batch-32 launch at batch 128 (tile_sizes says why; a prediction).
    assert tile_sizes(128, 960) == (32, 16)
    assert tile_sizes(128, 3072) == (32, 32)
    assert tile_sizes(64, 576) == (32, 16)
    assert tile_sizes(128, 576, max_block_m=16) == (16, 16)


@pytest.mark.parametrize("max_block_m", [16, 32, 64])
def test_every_row_tile_cap_gives_the_same_product(max_block_m: int) -> None:
    q, scale = quantized(40, 72, seed=4)
    x = torch.randn(70, 72)
    out = poisoned_like(torch.empty(70, 40))

    int8_weight_matmul(x, q, scale, out=out, max_block_m=max_block_m)

    assert relative_error(out, int8_weight_matmul_reference(x, q, scale)) < TOLERANCE[torch.float32]
