"""Depth pruning: score each decoder layer on calibration data and keep the most important.

Two scores. Block influence (ShortGPT, Men et al. 2024) is 1 - cos(input,
output) of the layer's residual stream: a layer that barely turns the hidden
state does little. Ablation KL is the KL divergence from the full model's
next-token distribution to the one with that single layer skipped: what
removing the layer costs, measured directly, at one forward pass per layer.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaForCausalLM

from radixfair_distiller.losses.divergence import token_divergence
from radixfair_distiller.pruning.calibration import collect_layer_stats

# Tokens per LM-head chunk while measuring ablation KL (bounds the logits held at once).
_KL_CHUNK = 256


def block_influence(model: LlamaForCausalLM, batches: list[torch.Tensor]) -> torch.Tensor:
    """[L] mean 1 - cos(layer input, layer output) over calibration tokens."""
    stats = collect_layer_stats(model, batches, with_grams=False)
    return torch.tensor([s.influence / max(s.tokens, 1) for s in stats], dtype=torch.float64)


@torch.no_grad()
def ablation_kl(model: LlamaForCausalLM, batches: list[torch.Tensor]) -> torch.Tensor:
    """[L] mean KL(full model || model without layer l) per calibration token."""
    head = model.lm_head.weight
    full = [_final_hidden(model, batch) for batch in batches]
    scores = []
    layers = model.model.layers
    try:
        for skipped in range(len(layers)):
            model.model.layers = nn.ModuleList(layer for i, layer in enumerate(layers) if i != skipped)
            total, count = 0.0, 0
            for batch, reference in zip(batches, full):
                ablated = _final_hidden(model, batch)
                for start in range(0, reference.shape[0], _KL_CHUNK):
                    rows = slice(start, start + _KL_CHUNK)
                    kl = token_divergence(ablated[rows] @ head.T, reference[rows] @ head.T, "forward_kl")
                    total += float(kl.sum())
                    count += kl.shape[0]
            scores.append(total / max(count, 1))
    finally:
        model.model.layers = layers
    return torch.tensor(scores, dtype=torch.float64)


def _final_hidden(model: LlamaForCausalLM, batch: torch.Tensor) -> torch.Tensor:
    hidden = model.model(input_ids=batch.to(model.device), use_cache=False).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1])


def layers_to_keep(importance: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, in their original order (ties keep the earlier layer)."""
    order = sorted(range(len(importance)), key=lambda i: (-float(importance[i]), i))
    return sorted(order[:keep])


def drop_layers(
    state: dict[str, torch.Tensor], config: dict, kept: list[int]
) -> tuple[dict[str, torch.Tensor], dict]:
    """HF state dict and config.json dict with only layers ``kept``, renumbered from 0."""
    renumber = {old: new for new, old in enumerate(kept)}
    out = {}
    for name, tensor in state.items():
        if name.startswith("model.layers."):
            index_text, rest = name.removeprefix("model.layers.").split(".", 1)
            index = int(index_text)
            if index not in renumber:
                continue
            name = f"model.layers.{renumber[index]}.{rest}"
        out[name] = tensor
    return out, {**config, "num_hidden_layers": len(kept)}
