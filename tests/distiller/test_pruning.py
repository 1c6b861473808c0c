"""Structured pruning: shapes, equivalence with the teacher on the kept weights, and importance."""

from __future__ import annotations

import copy

import pytest
import torch
from support.models import make_tiny_model_dir
from torch import nn

from radixfair_distiller.losses import token_divergence
from radixfair_distiller.model_dir import load_llama
from radixfair_distiller.pruning import prune
from radixfair_distiller.pruning.calibration import collect_layer_stats
from radixfair_distiller.pruning.width import _refit, plan_width
from radixfair_distiller.recipe import DepthPruning, PruneSpec, WidthPruning

HEAD_DIM = 16


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, smollm2_dir):
    # 4 layers, 4 query heads in 2 KV groups, 160 MLP channels.
    return make_tiny_model_dir(tmp_path_factory.mktemp("prune-teacher"), smollm2_dir, num_hidden_layers=4)


@pytest.fixture
def teacher(teacher_dir):
    return load_llama(teacher_dir)


@pytest.fixture(scope="module")
def batches():
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 49152, (2, 24), generator=generator) for _ in range(2)]


def logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=b).logits.reshape(-1, model.config.vocab_size) for b in batches])


def make_identity_layer(model, index: int) -> None:
    """Zeroes what layer ``index`` adds to the residual stream, so it passes its input through."""
    with torch.no_grad():
        model.model.layers[index].self_attn.o_proj.weight.zero_()
        model.model.layers[index].mlp.down_proj.weight.zero_()


def test_depth_pruned_model_equals_the_teacher_run_without_the_dropped_layers(teacher, batches):
    student, report = prune(teacher, PruneSpec(depth=DepthPruning(keep_layers=2)), batches)
    assert student.config.num_hidden_layers == 2 and len(report.kept_layers) == 2
    reference = copy.deepcopy(teacher)
    reference.model.layers = nn.ModuleList(reference.model.layers[i] for i in report.kept_layers)
    torch.testing.assert_close(logits(student, batches), logits(reference, batches), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("importance", ["block_influence", "ablation_kl"])
def test_depth_pruning_drops_the_layer_that_does_nothing(teacher, batches, importance):
    make_identity_layer(teacher, 2)
    _, report = prune(teacher, PruneSpec(depth=DepthPruning(keep_layers=3, importance=importance)), batches)
    assert report.kept_layers == [0, 1, 3]
    assert report.layer_importance[2] == pytest.approx(0.0, abs=1e-6)


def test_pruning_leaves_the_teacher_untouched(teacher, batches):
    before = logits(teacher, batches)
    student, _ = prune(teacher, PruneSpec(depth=DepthPruning(keep_layers=3)), batches)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    torch.testing.assert_close(logits(teacher, batches), before, rtol=0, atol=0)


def masked_teacher(teacher, student_channels, student_heads):
    """The teacher with every unit the student lacks zeroed where it enters the residual stream."""
    reference = copy.deepcopy(teacher)
    with torch.no_grad():
        for layer, channels, heads in zip(reference.model.layers, student_channels, student_heads):
            dropped = [c for c in range(layer.mlp.down_proj.weight.shape[1]) if c not in channels]
            layer.mlp.down_proj.weight[:, dropped] = 0
            for head in range(teacher.config.num_attention_heads):
                if head not in heads:
                    layer.self_attn.o_proj.weight[:, head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0
    return reference


def test_width_pruned_model_equals_the_teacher_with_the_dropped_units_masked(teacher, batches):
    # Dead units (they add nothing to the residual stream) in every layer: MLP channels 0-39,
    # and query head 1 of KV group 0 and head 3 of group 1. Importance must prune exactly these.
    dead_heads = (1, 3)
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.mlp.down_proj.weight[:, :40] = 0
            for head in dead_heads:
                layer.self_attn.o_proj.weight[:, head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0
    spec = PruneSpec(width=WidthPruning(intermediate_size=120, num_attention_heads=2, refit=False))
    student, report = prune(teacher, spec, batches)
    assert report.config == {
        "num_hidden_layers": 4,
        "intermediate_size": 120,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    }
    for layer in student.model.layers:
        assert layer.self_attn.q_proj.weight.shape == (2 * HEAD_DIM, 64)
        assert layer.self_attn.k_proj.weight.shape == (2 * HEAD_DIM, 64)
        assert layer.mlp.gate_proj.weight.shape == (120, 64)
    reference = masked_teacher(teacher, [range(40, 160)] * 4, [(0, 2)] * 4)
    torch.testing.assert_close(logits(student, batches), logits(reference, batches), rtol=1e-4, atol=1e-4)


def test_width_pruned_model_equals_the_teacher_masked_by_the_plan_it_chose(teacher, batches):
    spec = WidthPruning(intermediate_size=100, num_attention_heads=2, num_key_value_heads=1, refit=False)
    plans = plan_width(teacher, collect_layer_stats(teacher, batches, with_grams=False), spec)
    student, _ = prune(teacher, PruneSpec(width=spec), batches)
    reference = masked_teacher(teacher, [p.mlp_channels for p in plans], [p.q_heads for p in plans])
    assert all(len(p.kv_groups) == 1 and len(p.q_heads) == 2 for p in plans)
    torch.testing.assert_close(logits(student, batches), logits(reference, batches), rtol=1e-4, atol=1e-4)


def test_kv_group_pruning_keeps_whole_groups_and_a_valid_gqa_shape(teacher, batches):
    spec = PruneSpec(width=WidthPruning(num_attention_heads=2, num_key_value_heads=1, refit=False))
    student, _ = prune(teacher, spec, batches)
    attention = student.model.layers[0].self_attn
    assert attention.k_proj.weight.shape == (HEAD_DIM, 64)
    assert attention.q_proj.weight.shape == (2 * HEAD_DIM, 64)
    assert student.config.num_key_value_heads == 1 and student.config.head_dim == HEAD_DIM
    assert torch.isfinite(logits(student, batches)).all()


def test_combined_pruning_gives_the_expected_parameter_count(teacher, batches):
    spec = PruneSpec(
        depth=DepthPruning(keep_layers=2),
        width=WidthPruning(intermediate_size=96, num_attention_heads=2, num_key_value_heads=1),
    )
    student, _ = prune(teacher, spec, batches)
    hidden, vocab = 64, 49152
    per_layer = hidden * 2 * HEAD_DIM * 2 + hidden * HEAD_DIM * 2 + 3 * hidden * 96 + 2 * hidden
    expected = vocab * hidden + 2 * per_layer + hidden  # tied head, final norm
    assert sum(p.numel() for p in student.parameters()) == expected
    assert torch.isfinite(logits(student, batches)).all()


def test_least_squares_refit_reconstructs_the_output_better_than_slicing():
    generator = torch.Generator().manual_seed(0)
    # Correlated activations: dropped channels are partly explained by kept ones.
    mixing = torch.randn(32, 32, generator=generator, dtype=torch.float64)
    acts = torch.randn(500, 32, generator=generator, dtype=torch.float64) @ mixing
    weight = torch.randn(8, 32, generator=generator, dtype=torch.float64)
    kept = list(range(0, 32, 2))
    target = acts @ weight.T
    sliced_error = (acts[:, kept] @ weight[:, kept].T - target).norm()
    refit_error = (acts[:, kept] @ _refit(weight, acts.T @ acts, kept).T - target).norm()
    assert refit_error < 0.8 * sliced_error


def test_refit_brings_the_width_pruned_student_closer_to_the_teacher(teacher, batches):
    spec = WidthPruning(intermediate_size=80, num_attention_heads=2)
    plain, _ = prune(teacher, PruneSpec(width=spec.__class__(**{**spec.__dict__, "refit": False})), batches)
    refit, _ = prune(teacher, PruneSpec(width=spec), batches)
    reference = logits(teacher, batches)
    kl_plain = token_divergence(logits(plain, batches), reference, "forward_kl").mean()
    kl_refit = token_divergence(logits(refit, batches), reference, "forward_kl").mean()
    assert kl_refit < kl_plain
