"""Llama-architecture decoder (RMSNorm, RoPE, GQA attention, SwiGLU) over a paged KV cache.

q/k/v and gate/up are each one fused projection (the loader concatenates
the Hugging Face tensors), so a layer runs four matrix products; every other
operation goes through the KernelBackend seam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixfair_worker.config import ModelConfig
from radixfair_worker.model.backend import ForwardBatch, KernelBackend


class KVCache:
    """Per-layer K and V pages: each [num_pages, page_size, num_kv_heads, head_dim]."""

    def __init__(
        self, config: ModelConfig, num_pages: int, page_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (config.num_hidden_layers, num_pages, page_size, config.num_key_value_heads, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.page_size = page_size

    @property
    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        hidden = config.hidden_size
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(hidden, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        batch: ForwardBatch,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        cos_sin: torch.Tensor,
        backend: KernelBackend,
    ) -> torch.Tensor:
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        q = backend.rope_and_write_kv(q, k, v, batch.positions, cos_sin, k_cache, v_cache, batch.slot_mapping)
        out = backend.attention(q, k_cache, v_cache, batch, self.scale)
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, backend: KernelBackend) -> torch.Tensor:
        return self.down_proj(backend.silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        self.input_layernorm = nn.Parameter(torch.ones(config.hidden_size))
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = nn.Parameter(torch.ones(config.hidden_size))
        self.mlp = LlamaMLP(config)


class LlamaModel(nn.Module):
    """The decoder plus LM head. ``forward`` returns logits [S, vocab] for ``batch.logits_indices``."""

    def __init__(self, config: ModelConfig, backend: KernelBackend) -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(config.hidden_size))
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.register_buffer("cos_sin", rope_table(config), persistent=False)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, kv_cache: KVCache) -> torch.Tensor:
        backend = self.backend
        hidden = self.embed_tokens(batch.input_ids)
        residual: torch.Tensor | None = None
        for index, layer in enumerate(self.layers):
            if residual is None:
                residual = hidden
                normed = backend.rms_norm(hidden, layer.input_layernorm, layer.eps)
            else:
                normed, residual = backend.add_rms_norm(hidden, residual, layer.input_layernorm, layer.eps)
            hidden = layer.self_attn(
                normed, batch, kv_cache.k[index], kv_cache.v[index], self.cos_sin, backend
            )
            normed, residual = backend.add_rms_norm(
                hidden, residual, layer.post_attention_layernorm, layer.eps
            )
            hidden = layer.mlp(normed, backend)
        assert residual is not None
        last = (hidden + residual)[batch.logits_indices]
        normed = backend.rms_norm(last, self.norm, self.config.rms_norm_eps)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(normed, head).float()


def rope_table(config: ModelConfig) -> torch.Tensor:
    """[max_positions, head_dim] fp32: cos of each frequency, then sin (rotate-half layout)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)
