"""Model directories in the Hugging Face layout the worker loads: read, write atomically, hash.

A model directory holds config.json, model.safetensors and the tokenizer
files. Training and pruning use transformers' LlamaForCausalLM; a quantized
directory is read back dequantized (the same numbers the worker computes
with), so every evaluation runs through one code path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from radixfair_model_format.quantized_checkpoint import (
    CONFIG_KEY,
    SCALE_SUFFIX,
    dequantize_weight,
    read_scheme,
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
WEIGHTS_FILE = "model.safetensors"
# Config keys that depend on where or when a model was saved, not on what it is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash")


def load_llama(
    model_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    """The checkpoint as a ``dtype`` LlamaForCausalLM in eval mode (quantized ones dequantized)."""
    raw = json.loads((model_dir / "config.json").read_text())
    read_scheme(model_dir / "config.json")  # an unknown scheme or format version fails here, named
    state = dequantized_state(load_file(str(model_dir / WEIGHTS_FILE)))
    try:
        return llama_from_state(state, raw, device, dtype)
    except ValueError as error:
        raise ValueError(f"{model_dir}: {error}") from error


def llama_from_state(
    state: dict[str, torch.Tensor],
    config: dict,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A ``dtype`` eval-mode LlamaForCausalLM holding ``state`` (HF names), shaped by a config.json dict."""
    raw = {k: v for k, v in config.items() if k != CONFIG_KEY}
    llama_config = LlamaConfig(**raw)
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if llama_config.tie_word_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise ValueError(f"checkpoint does not fit its config: missing {missing}, unexpected {unexpected}")
    if llama_config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Rotary frequencies are a buffer built at construction; rebuild it off "meta".
    model.model.rotary_emb = type(model.model.rotary_emb)(config=llama_config)
    return model.to(device=device, dtype=dtype).eval()


def dequantized_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replaces each (q, q_scale) pair by the fp32 matrix it encodes."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(name + SCALE_SUFFIX)
        out[name] = tensor.float() if scale is None else dequantize_weight(tensor, scale)
    return out


def llama_state(model: LlamaForCausalLM, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Weights to save: contiguous CPU copies in ``dtype`` (default fp32), without the tied LM head."""
    state = {name: t.detach().to("cpu", dtype).contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def llama_config_dict(config: LlamaConfig) -> dict:
    raw = config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        raw.pop(key, None)
    raw.pop("quantization_config", None)
    raw["architectures"] = ["LlamaForCausalLM"]
    raw["torch_dtype"] = "float32"
    raw["head_dim"] = config.head_dim  # explicit: pruned heads change hidden / heads
    return raw


def write_model_dir(
    target: Path,
    state: dict[str, torch.Tensor],
    config: dict,
    tokenizer_source: Path,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Writes weights, config, tokenizer (and extra text files) into ``target`` atomically."""
    with staging_dir(target) as staging:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        copy_tokenizer(tokenizer_source, staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return target


def save_llama(model: LlamaForCausalLM, target: Path, tokenizer_source: Path) -> Path:
    return write_model_dir(target, llama_state(model), llama_config_dict(model.config), tokenizer_source)


def copy_tokenizer(source: Path, target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A sibling temp dir renamed onto ``target`` on success, so a crash never leaves a half-written one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists() and (path / WEIGHTS_FILE).exists()


def content_hash(model_dir: Path) -> str:
    """sha256 over config.json and the weights: equal hashes mean the same served model."""
    digest = hashlib.sha256()
    for name in ("config.json", WEIGHTS_FILE):
        digest.update(name.encode())
        with (model_dir / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_bytes(model_dir: Path) -> int:
    return (model_dir / WEIGHTS_FILE).stat().st_size


def count_parameters(model_dir: Path) -> int:
    """Distinct weights of the model (a tied head counted once; scales not counted)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(model_dir / WEIGHTS_FILE), framework="pt") as handle:
        for name in handle.keys():
            if not name.endswith(SCALE_SUFFIX):
                total += _numel(handle.get_slice(name).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
