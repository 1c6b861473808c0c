"""A llama-architecture GGUF with a GPT-2 (byte-level BPE) tokenizer -> a Hugging Face model directory.

Writes what the worker, the router and transformers read: model.safetensors (float32, in
transformers' Llama names), config.json, tokenizer.json, tokenizer_config.json and
chat_template.jinja. It reads the file through gguf_file (the gguf package's reader), so it needs
no transformers and takes seconds where transformers' GGUF loader takes minutes on a slow core (it
parses the file's metadata three times and rebuilds its tensor-name table per tensor). The output matches
transformers' (tests/worker/test_gguf_conversion.py compares them).

Anything else (another architecture or tokenizer, a tensor type the package cannot dequantize) raises
UnsupportedGGUFError; model_store then converts through transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from radixfair_model_format.gguf_file import GGUFFile, UnsupportedGGUFError

# GGUF tensor names (per block: "blk.N.<name>") -> transformers' Llama names.
_BLOCK_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# tokenizer.ggml.token_type of a control (special) token.
_CONTROL_TOKEN = 3


def write_llama_model_dir(gguf: Path, target: Path) -> None:
    """Converts ``gguf`` into the existing, empty directory ``target``."""
    model = GGUFFile(gguf)
    meta = model.metadata
    if meta.get("general.architecture") != "llama" or meta.get("tokenizer.ggml.model") != "gpt2":
        raise UnsupportedGGUFError(
            f"{gguf.name}: architecture {meta.get('general.architecture')!r} with tokenizer "
            f"{meta.get('tokenizer.ggml.model')!r}; this converter reads llama with gpt2"
        )
    config = hf_config(meta, tied="output.weight" not in model.tensors)
    state = {hf_name(name): unpermute_rotary(name, model.read(name), config) for name in model.tensors}
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(config, indent=2))
    (target / "tokenizer.json").write_text(json.dumps(tokenizer_json(meta), ensure_ascii=False))
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(meta), indent=2))
    template = meta.get("tokenizer.chat_template")
    if template is not None:
        (target / "chat_template.jinja").write_text(template)


def hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    prefix, layer, rest = (gguf_name.split(".", 2) + ["", ""])[:3]
    if prefix != "blk" or not layer.isdigit() or rest not in _BLOCK_TENSORS:
        raise UnsupportedGGUFError(f"tensor {gguf_name} has no Llama counterpart here")
    return f"model.layers.{layer}.{_BLOCK_TENSORS[rest]}"


def unpermute_rotary(gguf_name: str, weight: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """llama.cpp's converter reorders each head's q and k rows from halves (transformers' rotary
    layout) to interleaved pairs; this puts them back: GGUF row (head, i, half) -> (head, half, i)."""
    if gguf_name.endswith("attn_q.weight"):
        heads = config["num_attention_heads"]
    elif gguf_name.endswith("attn_k.weight"):
        heads = config["num_key_value_heads"]
    else:
        return weight
    paired = weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:])
    return paired.transpose(1, 2).reshape(weight.shape)


def hf_config(meta: dict[str, Any], tied: bool) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM, from the GGUF's llama.* and tokenizer ids."""
    heads = int(meta["llama.attention.head_count"])
    hidden = int(meta["llama.embedding_length"])
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": hidden,
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(meta.get("llama.attention.key_length", hidden // heads)),
        "hidden_act": "silu",
        "max_position_embeddings": int(meta["llama.context_length"]),
        "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_parameters": {
            "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
            "rope_type": "default",
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "unk_token_id": meta.get("tokenizer.ggml.unknown_token_id"),
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def tokenizer_json(meta: dict[str, Any]) -> dict[str, Any]:
    """The `tokenizers` library's file for a byte-level BPE: vocab and merges from the GGUF, its
    control tokens as special added tokens, and a BOS in front only when the GGUF asks for one."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [merge.split(" ") for merge in meta["tokenizer.ggml.merges"]]
    if any(len(pair) != 2 for pair in merges):
        raise UnsupportedGGUFError("a BPE merge is not two tokens")
    special = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    added = [
        {"id": i, "content": token, **special} for i, token in enumerate(tokens) if types[i] == _CONTROL_TOKEN
    ]
    single: list[dict[str, Any]] = [{"Sequence": {"id": "A", "type_id": 0}}]
    pair: list[dict[str, Any]] = [*single, {"Sequence": {"id": "B", "type_id": 1}}]
    special_tokens: dict[str, Any] = {}
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos_id is not None:
        bos = tokens[bos_id]
        single = [{"SpecialToken": {"id": bos, "type_id": 0}}, *single]
        pair = [*single, {"SpecialToken": {"id": bos, "type_id": 1}}, pair[1]]
        special_tokens = {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": special_tokens,
        },
        "decoder": {"type": "ByteLevel", **byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": merges,
        },
    }


def tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json: the special tokens by text (the chat template is its own file)."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    config: dict[str, Any] = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend"}
    for role in ("bos", "eos", "unk", "pad"):
        key = "padding" if role == "pad" else ("unknown" if role == "unk" else role)
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config[f"{role}_token"] = tokens[token_id]
    return config
