"""Model directories for tests: the real SmolLM2-135M-Instruct and tiny random Llamas.

Tiny models use the real tokenizer (so chat templates and detokenization are
real) with a few small random layers, so engine behaviour that does not
depend on trained weights is tested in milliseconds per step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def real_model_dir(cache_dir: Path) -> Path:
    from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir

    return resolve_model_dir(PACKAGED_MODEL, cache_dir)


def make_tiny_model_dir(target: Path, tokenizer_source: Path, seed: int = 0, **overrides: object) -> Path:
    """Writes a random tiny Llama (HF safetensors layout) plus the real tokenizer into ``target``."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {**TINY_CONFIG, **overrides}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    # Larger than default init so random logits are not near-ties: greedy
    # comparisons then test the math, not rounding luck.
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0)
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_source / name).exists():
            shutil.copy(tokenizer_source / name, target / name)
    return target
