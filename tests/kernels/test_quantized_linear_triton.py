"""A quantized projection through the Triton backend's weight-only kernel equals QuantizedLinear's own path.

QuantizedLinear.forward (the reference) converts the codes to the activation dtype and multiplies
with F.linear, then scales; the Triton backend's ``quantized_linear`` multiplies the codes in
registers (kernels/int8_matmul.py). Both run here, the kernel in Triton's CPU interpreter.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.config import EngineConfig  # noqa: E402
from radixfair_engine.model.quantized_linear import QuantizedKernelConfig, QuantizedLinear  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402
from radixfair_model_format.quantized_checkpoint import quantize_weight  # noqa: E402

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}


def quantized_layer(scheme: str, n: int, k: int, dtype: torch.dtype, seed: int = 0) -> QuantizedLinear:
    generator = torch.Generator().manual_seed(seed)
    # Rows of different magnitude, so each channel's scale matters.
    weight = torch.randn(n, k, generator=generator) * torch.logspace(-2, 0, n)[:, None]
    q, scale = quantize_weight(weight, scheme)
    layer = QuantizedLinear(k, n, scheme)
    layer.weight.copy_(q.view(layer.weight.dtype))
    layer.weight_scale.copy_(scale)
    return layer.to(dtype)  # as the loader does


def allowed_difference(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |kernel - reference| from the arithmetic of both paths.

    With y = (x @ v^T) * s exact and A = (|x| @ |v|^T) * s: each path's fp32 sums differ from the
    exact ones by at most K * 2^-24 * A (any order); the kernel then rounds once to the output
    dtype (u * |y|), the reference three times in bf16 (the product, the scale, the scaled
    product: 3u * |y|). In fp32 both round in fp32. Their difference is within the sum, with
    slack for the second-order terms.
    """
    codes = layer.weight.view(torch.float8_e4m3fn) if layer.scheme == "fp8" else layer.weight
    values, scale, x64 = codes.double(), layer.weight_scale.double(), x.double()
    exact = (x64 @ values.T) * scale
    magnitude = (x64.abs() @ values.abs().T) * scale
    k = x.shape[1]
    u = UNIT_ROUNDOFF[x.dtype]
    return 1.1 * (4 * u * exact.abs() + 2 * (k + 2) * 2.0**-24 * magnitude)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 48, 96), (5, 40, 200), (33, 24, 72)])
def test_the_triton_path_matches_quantized_linears_own(scheme: str, dtype: torch.dtype, rows, n, k) -> None:
    layer = quantized_layer(scheme, n, k, dtype)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1)).to(dtype)
    backend = TritonBackend(num_sms=1)

    out = backend.quantized_linear(x, layer.weight, layer.weight_scale, layer.scheme)

    assert out is not None and out.dtype == dtype and out.shape == (rows, n)
    difference = (out.double() - layer(x).double()).abs()
    assert (difference <= allowed_difference(layer, x)).all()


def test_products_above_triton_max_rows_are_left_to_the_module() -> None:
    layer = quantized_layer("int8", 16, 32, torch.float32)
    backend = TritonBackend(num_sms=1, quantized=QuantizedKernelConfig(triton_max_rows=4))
    args = (layer.weight, layer.weight_scale, layer.scheme)

    assert backend.quantized_linear(torch.randn(4, 32), *args) is not None
    assert backend.quantized_linear(torch.randn(5, 32), *args) is None
    off = TritonBackend(num_sms=1, quantized=QuantizedKernelConfig(triton_max_rows=0))
    assert off.quantized_linear(torch.randn(1, 32), *args) is None


def test_the_scales_stay_fp32_when_the_model_moves_to_bf16() -> None:
    layer = quantized_layer("fp8", 16, 32, torch.float32)
    scale = layer.weight_scale.clone()

    layer = layer.to(torch.bfloat16)

    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, scale)
    assert layer.weight.dtype == torch.uint8


def test_a_negative_row_limit_is_refused_at_the_config() -> None:
    with pytest.raises(ValueError, match="triton_max_rows"):
        QuantizedKernelConfig(triton_max_rows=-1)
    with pytest.raises(ValueError, match="quantized_triton_max_rows"):
        EngineConfig(quantized_triton_max_rows=-1)
