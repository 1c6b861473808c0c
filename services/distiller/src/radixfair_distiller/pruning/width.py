"""Width pruning: fewer MLP channels, attention heads and KV groups in every layer.

Importance on calibration data (activation-based, as Minitron does):
- an MLP channel j scores mean_t |silu(gate_j) * up_j| * ||W_down[:, j]||,
  the typical size of what it adds to the residual stream;
- a query head scores mean_t ||its share of o_proj's output||;
- a KV group scores the sum of its query heads.

Each layer keeps its top KV groups, then inside each kept group its top
query heads, so grouped-query attention keeps equal groups, and its top MLP
channels. Every layer gets the same new shape, so the result is a plain,
dense Llama config.

Optional refit (the idea behind OSSCAR's layer-wise objective, solved in
closed form): with G the Gram matrix of down_proj's (or o_proj's) inputs on
calibration data and K the kept input columns, the weight over K that best
reproduces the unpruned output in least squares is
W_K = W G[:, K] (G[K, K] + lambda I)^-1, instead of the plain slice W[:, K].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM

from radixfair_distiller.pruning.calibration import LayerStats
from radixfair_distiller.recipe import WidthPruning

# Ridge term of the refit, relative to the mean diagonal of G[K, K].
_RIDGE = 1e-4


@dataclass(frozen=True)
class LayerWidthPlan:
    """What one layer keeps, as indices into the unpruned layer."""

    mlp_channels: list[int]
    kv_groups: list[int]
    # Grouped by kept KV group (ascending), ascending inside each group.
    q_heads: list[int]


def mlp_channel_importance(model: LlamaForCausalLM, stats: list[LayerStats]) -> list[torch.Tensor]:
    out = []
    for layer, layer_stats in zip(model.model.layers, stats):
        column_norms = layer.mlp.down_proj.weight.detach().double().norm(dim=0).cpu()
        out.append(layer_stats.mlp_activation / max(layer_stats.tokens, 1) * column_norms)
    return out


def plan_width(model: LlamaForCausalLM, stats: list[LayerStats], spec: WidthPruning) -> list[LayerWidthPlan]:
    config = model.config
    channels = spec.intermediate_size or config.intermediate_size
    heads = spec.num_attention_heads or config.num_attention_heads
    kv_heads = spec.num_key_value_heads or config.num_key_value_heads
    group = config.num_attention_heads // config.num_key_value_heads
    heads_per_group = heads // kv_heads
    plans = []
    for channel_scores, layer_stats in zip(mlp_channel_importance(model, stats), stats):
        head_scores = layer_stats.head_output_norm
        group_scores = head_scores.view(config.num_key_value_heads, group).sum(1)
        kept_groups = top_indices(group_scores, kv_heads)
        q_heads = []
        for g in kept_groups:
            members = head_scores[g * group : (g + 1) * group]
            q_heads.extend(g * group + i for i in top_indices(members, heads_per_group))
        plans.append(LayerWidthPlan(top_indices(channel_scores, channels), kept_groups, q_heads))
    return plans


def top_indices(scores: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` highest-scoring indices, ascending (ties keep the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def refit_weights(
    state: dict[str, torch.Tensor], config: dict, plans: list[LayerWidthPlan], stats: list[LayerStats]
) -> dict[str, torch.Tensor]:
    """Least-squares replacements for each layer's down_proj and o_proj over the kept inputs."""
    head_dim = _head_dim(config)
    out = {}
    for index, (plan, layer_stats) in enumerate(zip(plans, stats)):
        if layer_stats.mlp_gram is None or layer_stats.attn_gram is None:
            raise ValueError("refit needs Gram matrices: collect_layer_stats(..., with_grams=True)")
        prefix = f"model.layers.{index}"
        down = state[f"{prefix}.mlp.down_proj.weight"]
        out[f"{prefix}.mlp.down_proj.weight"] = _refit(down, layer_stats.mlp_gram, plan.mlp_channels)
        columns = [h * head_dim + d for h in plan.q_heads for d in range(head_dim)]
        o_proj = state[f"{prefix}.self_attn.o_proj.weight"]
        out[f"{prefix}.self_attn.o_proj.weight"] = _refit(o_proj, layer_stats.attn_gram, columns)
    return out


def _refit(weight: torch.Tensor, gram: torch.Tensor, kept: list[int]) -> torch.Tensor:
    # The Gram matrices are summed on the CPU in fp64 (collect_layer_stats) while the weights may be
    # on a GPU: solve where the Gram is, and hand the result back on the weight's device.
    index = torch.tensor(kept, device=gram.device)
    g_kk = gram[index][:, index]
    ridge = _RIDGE * float(g_kk.diagonal().mean().clamp(min=1e-12))
    g_kk = g_kk + ridge * torch.eye(len(kept), dtype=gram.dtype, device=gram.device)
    rhs = weight.detach().to(gram.device, torch.float64) @ gram[:, index]  # [out, k]
    solved = torch.linalg.solve(g_kk, rhs.T).T  # W G[:, K] G[K, K]^-1 (G symmetric)
    return solved.to(weight.device, weight.dtype).contiguous()


def shrink_width(
    state: dict[str, torch.Tensor],
    config: dict,
    plans: list[LayerWidthPlan],
    replacements: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """HF state dict and config.json dict with every layer cut to its plan (``replacements`` win)."""
    head_dim = _head_dim(config)
    out = dict(state)
    device = next(iter(state.values())).device  # index where the weights are (a GPU teacher's too)
    for index, plan in enumerate(plans):
        prefix = f"model.layers.{index}"
        channels = torch.tensor(plan.mlp_channels, device=device)
        for name in ("gate_proj", "up_proj"):
            key = f"{prefix}.mlp.{name}.weight"
            out[key] = state[key][channels].contiguous()
        key = f"{prefix}.mlp.down_proj.weight"
        out[key] = state[key][:, channels].contiguous()
        q_rows = _head_rows(plan.q_heads, head_dim).to(device)
        kv_rows = _head_rows(plan.kv_groups, head_dim).to(device)
        out[f"{prefix}.self_attn.q_proj.weight"] = state[f"{prefix}.self_attn.q_proj.weight"][
            q_rows
        ].contiguous()
        for name in ("k_proj", "v_proj"):
            key = f"{prefix}.self_attn.{name}.weight"
            out[key] = state[key][kv_rows].contiguous()
        key = f"{prefix}.self_attn.o_proj.weight"
        out[key] = state[key][:, q_rows].contiguous()
    out.update(replacements or {})
    first = plans[0]
    new_config = {
        **config,
        "intermediate_size": len(first.mlp_channels),
        "num_attention_heads": len(first.q_heads),
        "num_key_value_heads": len(first.kv_groups),
        "head_dim": head_dim,
    }
    return out, new_config


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
