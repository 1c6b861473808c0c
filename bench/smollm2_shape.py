"""SmolLM2-135M's architecture as a Hugging Face config, for random-weight models on the GPU machine.

The real checkpoint does not travel to the lent GPU (its working tree is capped), so GPU benchmarks
build a model of the same shape with random weights from this config.
"""

from __future__ import annotations

SMOLLM2_135M_HF_CONFIG: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
}
