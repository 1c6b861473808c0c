"""The worker's side of quantized checkpoints: the linear module and the loading hook.

The format itself (config.json key, scales, int8 / fp8 arithmetic) is
radixfair_model_format.quantized_checkpoint, which the distiller writes with.

Projections become ``QuantizedLinear``: the weight stays
quantized in memory and the per-channel scale is applied to the matmul
output (x @ (q * s)^T == (x @ q^T) * s), so no dequantized copy is kept.
``QuantizedLinear.forward`` is the reference path (it converts the whole weight
to the activation dtype per call); a kernel backend may compute the product
from the codes instead (``KernelBackend.quantized_linear``: the Triton backend's
weight-only kernel, for up to ``QuantizedKernelConfig.triton_max_rows`` rows).
The embedding is dequantized once at load (it is a lookup table and the LM
head, and LlamaModel reads it as a plain tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from radixfair_model_format.quantized_checkpoint import (
    EMBEDDING_WEIGHTS,
    SCALE_SUFFIX,
    SCHEMES,
    dequantize_weight,
)


@dataclass(frozen=True)
class QuantizedKernelConfig:
    """Which quantized products the Triton backend computes with its weight-only kernel.

    ``triton_max_rows``: a product of up to this many rows (tokens) runs
    kernels/int8_matmul.py (int8, or fp8 codes); a larger one (a prefill chunk) runs
    QuantizedLinear's dequantize-then-cuBLAS path. 0 sends every product there.

    Why 128, from the H200 sweep at SmolLM2-135M's projections (bench/results/gpu_int8_h200.md):
    at 1 row the kernel takes 2.7-4.2 us against bf16 cuBLAS's 3.1-4.7 (1.08-1.31x faster) and
    the dequantizing path's 8.2-10.5; at 128 rows the kernel (64-row tiles) takes 3.8-6.9 us,
    slower than bf16 cuBLAS (3.1-4.4), but a quantized checkpoint has no bf16 weight to hand it,
    and the dequantizing path takes 9.6-12.6 us there, so the kernel is still the fastest correct
    path at 128 rows. Above 128 nothing was measured; the dequantizing path's extra cost is one
    conversion of the weight per call, whatever the rows, while the kernel's tiles were tuned for
    decode batches, so prefill chunks keep cuBLAS. 128 is also the largest decode batch the worker
    captures as a CUDA graph (EngineConfig.cuda_graph_max_batch), so every decode step is in range.
    bench/kernels/gpu_quantized_decode_bench.py sweeps the rows to move this line.

    ``gemv_max_rows``: of those, products of up to this many rows take the kernel's GEMV form
    (every program requests its whole slice of the weight at once; kernels/int8_matmul.py says
    why), the rest its tensor-core tile form; 0 keeps the tile form for every row count. 4 covers
    batch 1 (the decode batch where halving the weight bytes should show) and the smallest CUDA-graph
    sizes above it; it is a prediction until the bench's DRAM-resident product table confirms it.

    ``tile_max_block_m``: the tile form's largest row tile above 16 rows (kernels/int8_matmul.tile_sizes
    says why 32 is the default; 64 gives the tiles the worker used before). 16, 32, 64 or 128.
    """

    triton_max_rows: int = 128
    gemv_max_rows: int = 4
    tile_max_block_m: int = 32

    def __post_init__(self) -> None:
        if self.triton_max_rows < 0:
            raise ValueError(f"triton_max_rows must be >= 0, got {self.triton_max_rows}")
        if self.gemv_max_rows < 0:
            raise ValueError(f"gemv_max_rows must be >= 0, got {self.gemv_max_rows}")
        if self.tile_max_block_m not in (16, 32, 64, 128):
            raise ValueError(f"tile_max_block_m must be 16, 32, 64 or 128, got {self.tile_max_block_m}")


class QuantizedLinear(nn.Module):
    """y = (x @ q^T) * scale, for x [T, in] in the model dtype; q [out, in], scale [out].

    fp8 values are held as a uint8 view: Module.to(dtype) converts every
    floating-point buffer, and it must not turn the fp8 codes into floats.
    The scales stay fp32 through Module.to(dtype) too (see ``_apply``).
    """

    def __init__(self, in_features: int, out_features: int, scheme: str) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {scheme!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = scheme
        storage = torch.int8 if scheme == "int8" else torch.uint8
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=storage))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.weight if self.scheme == "int8" else self.weight.view(torch.float8_e4m3fn)
        return F.linear(x, q.to(x.dtype)) * self.weight_scale.to(x.dtype)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Module.to(bfloat16) would round each channel's scale to bf16 (up to 2^-8 relative error per
        # output channel, as large as int8's own rounding); the scales follow the weight's device only.
        scale = self.weight_scale
        super()._apply(fn, recurse)
        self.weight_scale = scale.to(device=self.weight.device, dtype=torch.float32)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"


def prepare_quantized_model(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    config: object,
    scheme: str,
    to_module_state: Callable[[dict[str, torch.Tensor], object], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Swaps quantized projections of ``model`` for QuantizedLinear; returns the state to load.

    ``state`` is the checkpoint in Hugging Face names; ``to_module_state``
    is the loader's own renaming and q/k/v, gate/up fusion, applied to the
    quantized values and, separately, to their scales (fusing along the
    output dimension keeps each row's scale with its row).
    """
    values = {name: t for name, t in state.items() if not name.endswith(SCALE_SUFFIX)}
    scales = {name.removesuffix(SCALE_SUFFIX): t for name, t in state.items() if name.endswith(SCALE_SUFFIX)}
    for name in EMBEDDING_WEIGHTS:
        if name in scales:
            values[name] = dequantize_weight(values[name], scales.pop(name))
    if scheme == "fp8":
        values = {n: t.view(torch.uint8) if n in scales else t for n, t in values.items()}
    module_values = to_module_state(values, config)
    module_scales = to_module_state(scales, config)
    for name, scale in module_scales.items():
        module_name = name.removesuffix(".weight")
        linear = model.get_submodule(module_name)
        quantized = QuantizedLinear(linear.in_features, linear.out_features, scheme)
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, quantized)
        module_values[f"{module_name}.weight_scale"] = scale
    return module_values
