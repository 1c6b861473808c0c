"""Weight-only quantized checkpoints: the on-disk format, the linear module and the loading hook.

Format (written by the distiller, read by the worker). config.json carries

    "radixfair_quantization": {"scheme": "int8" | "fp8", "granularity": "per_output_channel"}

and the safetensors file holds, for each quantized matrix ``X.weight``
[out, in], the quantized values (int8, or float8_e4m3fn) and a sibling
``X.weight_scale`` [out] fp32, with X.weight ~= q * scale[:, None]:

- int8: symmetric, scale = max|row| / 127, q = round(w / scale) in [-127, 127].
- fp8:  scale = max|row| / 448 (e4m3's largest finite value), q = fp8(w / scale).

Every decoder-layer projection is quantized, and so is the token embedding
(per vocabulary row, which is also the LM head's output channel when tied).
RMSNorm weights stay in full precision.

In the worker, projections become ``QuantizedLinear``: the weight stays
quantized in memory and the per-channel scale is applied to the matmul
output (x @ (q * s)^T == (x @ q^T) * s), so no dequantized copy is kept.
The embedding is dequantized once at load (it is a lookup table and the LM
head, and LlamaModel reads it as a plain tensor).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_KEY = "radixfair_quantization"
SCHEMES = ("int8", "fp8")
SCALE_SUFFIX = "_scale"
INT8_MAX = 127.0
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Rows that are all zero still get a positive scale, so dequantization gives zeros, not NaN.
_MIN_SCALE = 1e-12
_EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")


def quantize_weight(weight: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (q [out, in] int8 or float8_e4m3fn, scale [out] fp32)."""
    if weight.dim() != 2:
        raise ValueError(f"per-channel quantization wants a matrix, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    row_max = w.abs().amax(dim=1)
    if scheme == "int8":
        scale = (row_max / INT8_MAX).clamp(min=_MIN_SCALE)
        q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    elif scheme == "fp8":
        scale = (row_max / FP8_MAX).clamp(min=_MIN_SCALE)
        q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    else:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {SCHEMES}")
    return q.contiguous(), scale.contiguous()


def dequantize_weight(
    q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(q [out, in] int8/float8_e4m3fn, scale [out]) -> [out, in] ``dtype``."""
    return (q.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


def read_scheme(config_path: Path) -> str | None:
    """The checkpoint's scheme, or None for a full-precision checkpoint."""
    section = json.loads(config_path.read_text()).get(CONFIG_KEY)
    if section is None:
        return None
    scheme = section.get("scheme")
    if scheme not in SCHEMES:
        raise ValueError(f"{config_path}: {CONFIG_KEY}.scheme {scheme!r} is not one of {SCHEMES}")
    return scheme


def is_quantizable(name: str, tensor: torch.Tensor) -> bool:
    """Projection matrices and embeddings; not norms."""
    return tensor.dim() == 2 and (name.endswith("_proj.weight") or name in _EMBEDDINGS)


class QuantizedLinear(nn.Module):
    """y = (x @ q^T) * scale, for x [T, in] in the model dtype; q [out, in], scale [out].

    fp8 values are held as a uint8 view: Module.to(dtype) converts every
    floating-point buffer, and it must not turn the fp8 codes into floats.
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
    for name in _EMBEDDINGS:
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
