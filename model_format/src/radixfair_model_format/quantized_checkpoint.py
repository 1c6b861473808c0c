"""The weight-only quantized checkpoint format: written by the distiller, read by the worker.

config.json carries

    "radixfair_quantization": {"scheme": "int8" | "fp8", "granularity": "per_output_channel"}

and the safetensors file holds, for each quantized matrix ``X.weight``
[out, in], the quantized values (int8, or float8_e4m3fn) and a sibling
``X.weight_scale`` [out] fp32, with X.weight ~= q * scale[:, None]:

- int8: symmetric, scale = max|row| / 127, q = round(w / scale) in [-127, 127].
- fp8:  scale = max|row| / 448 (e4m3's largest finite value), q = fp8(w / scale).

Every decoder-layer projection is quantized, and so is the token embedding
(per vocabulary row, which is also the LM head's output channel when tied).
RMSNorm weights stay in full precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG_KEY = "radixfair_quantization"
SCHEMES = ("int8", "fp8")
SCALE_SUFFIX = "_scale"
INT8_MAX = 127.0
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Rows that are all zero still get a positive scale, so dequantization gives zeros, not NaN.
_MIN_SCALE = 1e-12
# The embedding matrices (Hugging Face names): quantized per vocabulary row.
EMBEDDING_WEIGHTS = ("model.embed_tokens.weight", "lm_head.weight")


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
    return tensor.dim() == 2 and (name.endswith("_proj.weight") or name in EMBEDDING_WEIGHTS)
