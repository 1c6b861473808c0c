"""Structured pruning of a Llama teacher into a smaller dense Llama (depth, width, or depth then width)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LlamaForCausalLM

from radixfair_distiller.model_dir import llama_config_dict, llama_from_state
from radixfair_distiller.pruning.calibration import collect_layer_stats
from radixfair_distiller.pruning.depth import ablation_kl, block_influence, drop_layers, layers_to_keep
from radixfair_distiller.pruning.width import plan_width, refit_weights, shrink_width
from radixfair_distiller.recipe import PruneSpec


@dataclass
class PruneReport:
    """What was kept, for the job log and the artifact manifest."""

    kept_layers: list[int] = field(default_factory=list)
    layer_importance: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def prune(
    teacher: LlamaForCausalLM, spec: PruneSpec, batches: list[torch.Tensor]
) -> tuple[LlamaForCausalLM, PruneReport]:
    """A new, independent student (the teacher is not modified); ``batches`` are calibration token ids."""
    model = teacher
    report = PruneReport()
    state = {name: t.detach() for name, t in teacher.state_dict().items()}
    if teacher.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    config = llama_config_dict(teacher.config)
    if spec.depth is not None:
        if spec.depth.importance == "ablation_kl":
            importance = ablation_kl(teacher, batches)
        else:
            importance = block_influence(teacher, batches)
        kept = layers_to_keep(importance, spec.depth.keep_layers)
        state, config = drop_layers(state, config, kept)
        report.kept_layers = kept
        report.layer_importance = [round(float(x), 6) for x in importance]
        model = llama_from_state(_cloned(state), config, teacher.device)
    if spec.width is not None:
        stats = collect_layer_stats(model, batches, with_grams=spec.width.refit)
        plans = plan_width(model, stats, spec.width)
        replacements = refit_weights(state, config, plans, stats) if spec.width.refit else None
        state, config = shrink_width(state, config, plans, replacements)
    report.config = {
        k: config[k]
        for k in ("num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    }
    return llama_from_state(_cloned(state), config, teacher.device), report


def _cloned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in state.items()}
