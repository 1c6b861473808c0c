"""Llama-architecture decoder (RMSNorm, RoPE, GQA attention, SwiGLU) over a paged KV cache.

q/k/v and gate/up are each one fused projection (the loader concatenates
the Hugging Face tensors), so a layer runs four matrix products; every other
operation goes through the KernelBackend seam. A backend may also fuse a norm
with the projection after it (and RoPE/K-V store or SwiGLU with that
projection's output); where it declines (returns None) the unfused operations run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixfair_engine.model.backend import ForwardBatch, KernelBackend
from radixfair_model_format.model_config import ModelConfig


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
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
        batch: ForwardBatch,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        cos_sin: torch.Tensor,
        backend: KernelBackend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention output [T, hidden], the residual stream x + residual) from the layer's input."""
        tokens = hidden.shape[0]
        fused = None
        if _plain(self.qkv_proj):
            fused = backend.norm_qkv_rope_write_kv(
                hidden, residual, norm_weight, eps, self.qkv_proj.weight,
                batch.positions, cos_sin, k_cache, v_cache, batch.slot_mapping,
            )  # fmt: skip
        if fused is None:
            normed, residual = _add_rms_norm(backend, hidden, residual, norm_weight, eps)
            qkv = _project(backend, self.qkv_proj, normed)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = q.view(tokens, self.num_heads, self.head_dim)
            k = k.view(tokens, self.num_kv_heads, self.head_dim)
            v = v.view(tokens, self.num_kv_heads, self.head_dim)
            q = backend.rope_and_write_kv(
                q, k, v, batch.positions, cos_sin, k_cache, v_cache, batch.slot_mapping
            )
        else:
            q, residual = fused
        out = backend.attention(q, k_cache, v_cache, batch, self.scale)
        return _linear(backend, self.o_proj, out.reshape(tokens, self.num_heads * self.head_dim)), residual


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor,
        norm_weight: torch.Tensor,
        eps: float,
        backend: KernelBackend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLP output [T, hidden], the residual stream x + residual) from the attention output."""
        fused = None
        if _plain(self.gate_up_proj):
            fused = backend.norm_gate_up_silu(hidden, residual, norm_weight, eps, self.gate_up_proj.weight)
        if fused is None:
            normed, residual = backend.add_rms_norm(hidden, residual, norm_weight, eps)
            activated = backend.silu_and_mul(_project(backend, self.gate_up_proj, normed))
        else:
            activated, residual = fused
        return _linear(backend, self.down_proj, activated), residual


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
            hidden, residual = layer.self_attn(
                hidden, residual, layer.input_layernorm, layer.eps, batch,
                kv_cache.k[index], kv_cache.v[index], self.cos_sin, backend,
            )  # fmt: skip
            hidden, residual = layer.mlp(hidden, residual, layer.post_attention_layernorm, layer.eps, backend)
        assert residual is not None
        eps = self.config.rms_norm_eps
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = backend.norm_lm_head(hidden, residual, self.norm, eps, head, batch.logits_indices)
        if logits is not None:
            return logits
        last = (hidden + residual)[batch.logits_indices]
        return F.linear(backend.rms_norm(last, self.norm, eps), head).float()


def _plain(projection: nn.Module) -> bool:
    """A full-precision projection, whose weight a fused kernel can read (not a QuantizedLinear)."""
    return type(projection) is nn.Linear


def _add_rms_norm(
    backend: KernelBackend, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layer has no residual yet: the stream starts as the embeddings themselves."""
    if residual is None:
        return backend.rms_norm(x, weight, eps), x
    return backend.add_rms_norm(x, residual, weight, eps)


def _linear(backend: KernelBackend, projection: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """o_proj and down_proj: a plain projection may take the backend's small-M matmul."""
    if not _plain(projection):
        return _project(backend, projection, x)
    out = backend.linear(x, projection.weight)
    return projection(x) if out is None else out


def _project(backend: KernelBackend, projection: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A quantized projection through the backend's kernel where it takes it; else the module itself."""
    out = None
    if not _plain(projection):
        out = backend.quantized_linear(x, projection.weight, projection.weight_scale, projection.scheme)
    return projection(x) if out is None else out


def rope_table(config: ModelConfig) -> torch.Tensor:
    """[max_positions, head_dim] fp32: cos of each frequency, then sin (rotate-half layout)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)
