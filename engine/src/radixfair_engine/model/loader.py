"""Loads a Llama checkpoint (Hugging Face safetensors layout) into LlamaModel."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from radixfair_engine.model.backend import KernelBackend
from radixfair_engine.model.llama import LlamaModel, rope_table
from radixfair_engine.model.quantized_linear import prepare_quantized_model
from radixfair_model_format.model_config import ModelConfig
from radixfair_model_format.quantized_checkpoint import read_scheme

_NORMS = ("input_layernorm", "post_attention_layernorm")
_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def load_model(model_dir: Path, backend: KernelBackend, dtype: torch.dtype, device: str) -> LlamaModel:
    config = ModelConfig.from_hf_config(model_dir / "config.json")
    state: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(path)))
    with _WithoutRandomInit():
        model = LlamaModel(config, backend)
    scheme = read_scheme(model_dir / "config.json")
    if scheme is None:
        module_state = to_module_state(state, config)
    else:
        module_state = prepare_quantized_model(model, state, config, scheme, to_module_state)
    model.load_state_dict(module_state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    # RoPE angles stay fp32 whatever the weights' dtype.
    model.cos_sin = rope_table(config).to(device)
    return model


class _WithoutRandomInit(TorchFunctionMode):
    """Skips nn.init's random fills: load_state_dict(assign=True) replaces every parameter they fill.

    The module is built on the CPU with uninitialised (untouched, so unpaged) storage, not on "meta":
    any op on a meta tensor runs through torch._refs, whose first call imports torch._dynamo, about
    2.5 s of CPU at every engine start that nothing else in the engine needs.
    """

    _FILLS = frozenset({torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def to_module_state(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Maps HF names onto this module's: strips "model.", fuses q/k/v and gate/up."""
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = name.removeprefix("model.")
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if key == "norm.weight" or any(key.endswith(f"{norm}.weight") for norm in _NORMS):
            key = key.removesuffix(".weight")
        renamed[key] = tensor
    for layer in range(config.num_hidden_layers):
        for fused, parts in _FUSED.items():
            names = [f"layers.{layer}.{part}.weight" for part in parts]
            renamed[f"layers.{layer}.{fused}.weight"] = torch.cat([renamed.pop(n) for n in names], dim=0)
    return renamed
