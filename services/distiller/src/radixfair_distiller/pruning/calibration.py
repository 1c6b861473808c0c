"""Activation statistics of a Llama on calibration data, gathered with forward hooks.

One pass over the calibration batches records, per decoder layer, what the
importance scores need: how much each layer changes the residual stream,
how active each MLP channel is, how large each attention head's contribution
to the output is, and (for the least-squares refit) the Gram matrices of the
inputs of down_proj and o_proj.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM


@dataclass
class LayerStats:
    """Sums over calibration tokens for one decoder layer (divide by ``tokens`` for means)."""

    tokens: int
    # sum_t (1 - cos(layer input_t, layer output_t)): the layer's block influence.
    influence: float
    # [I] sum_t |silu(gate) * up| per MLP channel.
    mlp_activation: torch.Tensor
    # [Hq] sum_t ||head h's share of o_proj's output||.
    head_output_norm: torch.Tensor
    # [I, I] and [Hq*D, Hq*D] fp64 Gram matrices of down_proj / o_proj inputs; None unless asked.
    mlp_gram: torch.Tensor | None
    attn_gram: torch.Tensor | None


@torch.no_grad()
def collect_layer_stats(
    model: LlamaForCausalLM, batches: list[torch.Tensor], with_grams: bool
) -> list[LayerStats]:
    """Runs ``batches`` (each [B, S] token ids, no padding) through ``model`` and sums the statistics."""
    config = model.config
    layers = model.model.layers
    stats = [
        LayerStats(
            tokens=0,
            influence=0.0,
            mlp_activation=torch.zeros(config.intermediate_size, dtype=torch.float64),
            head_output_norm=torch.zeros(config.num_attention_heads, dtype=torch.float64),
            mlp_gram=None,
            attn_gram=None,
        )
        for _ in layers
    ]
    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(_influence_hook(stats[index]), with_kwargs=True))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(_mlp_hook(stats[index], with_grams)))
        handles.append(
            layer.self_attn.o_proj.register_forward_pre_hook(
                _attention_hook(stats[index], layer.self_attn.o_proj, config.num_attention_heads, with_grams)
            )
        )
    try:
        for batch in batches:
            model.model(input_ids=batch.to(model.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _influence_hook(stats: LayerStats):
    def hook(module, args, kwargs, output):
        before = _flat(args[0] if args else kwargs["hidden_states"]).float()
        after = _flat(output[0] if isinstance(output, tuple) else output).float()
        stats.influence += float((1.0 - F.cosine_similarity(before, after, dim=-1)).sum())
        stats.tokens += before.shape[0]

    return hook


def _mlp_hook(stats: LayerStats, with_grams: bool):
    def hook(module, args):
        acts = _flat(args[0]).double()
        stats.mlp_activation += acts.abs().sum(0).cpu()
        if with_grams:
            gram = (acts.T @ acts).cpu()
            stats.mlp_gram = gram if stats.mlp_gram is None else stats.mlp_gram + gram

    return hook


def _attention_hook(stats: LayerStats, o_proj: torch.nn.Linear, num_heads: int, with_grams: bool):
    def hook(module, args):
        x = _flat(args[0]).float()  # [T, Hq * D], the heads' outputs side by side
        tokens = x.shape[0]
        head_dim = x.shape[1] // num_heads
        weight = o_proj.weight.float().view(o_proj.weight.shape[0], num_heads, head_dim)
        # Head h's share of the layer output: x_h @ W_o[:, h]^T, [T, Hq, H].
        shares = torch.einsum("thd,ohd->tho", x.view(tokens, num_heads, head_dim), weight)
        stats.head_output_norm += shares.norm(dim=-1).sum(0).double().cpu()
        if with_grams:
            xd = x.double()
            gram = (xd.T @ xd).cpu()
            stats.attn_gram = gram if stats.attn_gram is None else stats.attn_gram + gram

    return hook
