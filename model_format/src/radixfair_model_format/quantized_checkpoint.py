"""The weight-only quantized checkpoint format: written by the distiller, read by the worker.

config.json carries

    "radixfair_quantization": {"scheme": "int8" | "fp8", "granularity": "per_output_channel",
                               "format_version": 2, "embedding_scheme": "int8"}

and the safetensors file holds, for each quantized matrix ``X.weight``
[out, in], the quantized values (int8, or float8_e4m3fn) and a sibling
``X.weight_scale`` [out] fp32, with X.weight ~= q * scale[:, None]:

- int8: symmetric, scale = max|row| / 127, q = round(w / scale) in [-127, 127].
- fp8:  scale = max|row| / 448 (e4m3's largest finite value), q = fp8(w / scale).

Every decoder-layer projection is quantized in the checkpoint's scheme. The
token embedding (and an untied LM head) is quantized per vocabulary row, and
in format version 2 always as int8, whatever the scheme: the values' dtype on
disk says how a matrix is encoded, and dequantization is q * scale for both.

Why int8 for the embedding in an fp8 checkpoint: e4m3 keeps 3 mantissa bits,
so its rounding error is relative, up to 2^-4 of each weight (rms ~2.6% over
a row), and finer scales (per group) do not shrink it. int8's error is
absolute, half a step of max|row| / 127; for a row of n roughly Gaussian
weights max|row| ~ 3.3 sigma at n = 576, so its rms is ~0.75% of sigma,
about 3.5x below e4m3's. The tied embedding is also the LM head, whose error
lands on every logit: on SmolLM2-135M it alone costs +3.5% perplexity in
e4m3 and ~+0.1% in int8 (notes/DECISIONS.md, #15). The worker dequantizes the
embedding at load either way (a lookup table), so serving speed is unchanged.

Version 1 (no "format_version" key) stored the embedding in the scheme too; it
still reads, since every reader decodes by the stored dtype.
RMSNorm weights stay in full precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG_KEY = "radixfair_quantization"
SCHEMES = ("int8", "fp8")
FORMAT_VERSION = 2
# The versions this code reads; a newer writer's checkpoint is refused with a clear message.
READABLE_VERSIONS = (1, 2)
EMBEDDING_SCHEME = "int8"
_CODE_DTYPES = (torch.int8, torch.float8_e4m3fn)  # how a stored matrix may be encoded
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
    if q.dtype not in _CODE_DTYPES:
        raise ValueError(f"quantized values must be int8 or float8_e4m3fn, got {q.dtype}")
    return (q.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


def tensor_scheme(name: str, scheme: str) -> str:
    """How the writer encodes matrix ``name`` in a ``scheme`` checkpoint (embeddings: always int8)."""
    return EMBEDDING_SCHEME if name in EMBEDDING_WEIGHTS else scheme


def config_section(scheme: str) -> dict:
    """The config.json section a writer of this version stores for ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {SCHEMES}")
    return {
        "scheme": scheme,
        "granularity": "per_output_channel",
        "format_version": FORMAT_VERSION,
        "embedding_scheme": EMBEDDING_SCHEME,
    }


def read_scheme(config_path: Path) -> str | None:
    """The checkpoint's scheme, or None for a full-precision checkpoint.

    Raises ValueError for an unknown scheme or a format version this code cannot read.
    """
    section = json.loads(config_path.read_text()).get(CONFIG_KEY)
    if section is None:
        return None
    scheme = section.get("scheme")
    if scheme not in SCHEMES:
        raise ValueError(f"{config_path}: {CONFIG_KEY}.scheme {scheme!r} is not one of {SCHEMES}")
    version = section.get("format_version", 1)
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{config_path}: {CONFIG_KEY}.format_version {version!r} is not one this code reads "
            f"{READABLE_VERSIONS} (written by a newer radixfair?)"
        )
    return scheme


def is_quantizable(name: str, tensor: torch.Tensor) -> bool:
    """Projection matrices and embeddings; not norms."""
    return tensor.dim() == 2 and (name.endswith("_proj.weight") or name in EMBEDDING_WEIGHTS)


def quantized_state(state: dict[str, torch.Tensor], scheme: str) -> dict[str, torch.Tensor]:
    """A checkpoint's state with every projection and embedding quantized (``quantize_weight``), each
    with its ``_scale``; norms as they were. What the distiller writes and the quantized bench serves."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if is_quantizable(name, tensor):
            out[name], out[name + SCALE_SUFFIX] = quantize_weight(tensor, tensor_scheme(name, scheme))
        else:
            out[name] = tensor.contiguous()
    return out
