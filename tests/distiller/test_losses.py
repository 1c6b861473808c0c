"""The chunked, LM-head-fused distillation loss equals the plain loss in value and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from radixfair_distiller.losses import (
    DistillLossConfig,
    fused_linear_distill_loss,
    plain_distill_loss,
    token_divergence,
)

VOCAB = 1000  # not a power of two, not a multiple of any chunk size below


def make_case(tokens: int, seed: int = 0, ignored: int = 5, student_dim: int = 24, teacher_dim: int = 40):
    generator = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(tokens, student_dim, generator=generator, dtype=torch.float64)
    student_head = torch.randn(VOCAB, student_dim, generator=generator, dtype=torch.float64) * 0.5
    teacher_hidden = torch.randn(tokens, teacher_dim, generator=generator, dtype=torch.float64)
    teacher_head = torch.randn(VOCAB, teacher_dim, generator=generator, dtype=torch.float64) * 0.5
    labels = torch.randint(0, VOCAB, (tokens,), generator=generator)
    labels[torch.randperm(tokens, generator=generator)[:ignored]] = -100
    return student_hidden, student_head, teacher_hidden, teacher_head, labels


def value_and_grads(loss_fn, case, config):
    student_hidden, student_head, teacher_hidden, teacher_head, labels = case
    hidden = student_hidden.clone().requires_grad_(True)
    head = student_head.clone().requires_grad_(True)
    loss = loss_fn(hidden, head, teacher_hidden, teacher_head, labels, config)
    loss.backward()
    return loss.detach(), hidden.grad, head.grad


@pytest.mark.parametrize(
    "config",
    [
        DistillLossConfig(kind="forward_kl", chunk_tokens=7),
        DistillLossConfig(kind="reverse_kl", chunk_tokens=16),
        DistillLossConfig(kind="jsd", beta=0.5, chunk_tokens=5),
        DistillLossConfig(kind="jsd", beta=0.1, temperature=2.0, chunk_tokens=64),
        DistillLossConfig(kind="reverse_kl", temperature=0.7, hard_label_weight=0.3, chunk_tokens=9),
        DistillLossConfig(kind="forward_kl", temperature=1.5, hard_label_weight=0.5, chunk_tokens=1),
        DistillLossConfig(kind="forward_kl", hard_label_weight=1.0, chunk_tokens=11),
    ],
    ids=lambda c: f"{c.kind}-b{c.beta}-T{c.temperature}-a{c.hard_label_weight}-c{c.chunk_tokens}",
)
def test_fused_loss_matches_plain_loss_in_value_and_gradients(config):
    case = make_case(tokens=37)
    fused = value_and_grads(fused_linear_distill_loss, case, config)
    plain = value_and_grads(plain_distill_loss, case, config)
    for got, want, what in zip(fused, plain, ("loss", "grad hidden", "grad head")):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=what)
    assert fused[0] > 0


def test_fused_loss_in_float32_matches_within_float32_tolerance():
    case = tuple(t.float() if t.is_floating_point() else t for t in make_case(tokens=50, seed=3))
    config = DistillLossConfig(kind="jsd", beta=0.3, temperature=1.3, hard_label_weight=0.2, chunk_tokens=13)
    fused = value_and_grads(fused_linear_distill_loss, case, config)
    plain = value_and_grads(plain_distill_loss, case, config)
    for got, want in zip(fused, plain):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_hard_label_only_loss_is_cross_entropy_and_needs_no_teacher():
    student_hidden, student_head, _, _, labels = make_case(tokens=20)
    config = DistillLossConfig(hard_label_weight=1.0, chunk_tokens=8)
    loss = fused_linear_distill_loss(student_hidden, student_head, None, None, labels, config)
    expected = F.cross_entropy(student_hidden @ student_head.T, labels, ignore_index=-100)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_distillation_without_teacher_is_rejected():
    student_hidden, student_head, _, _, labels = make_case(tokens=4)
    with pytest.raises(ValueError, match="teacher"):
        fused_linear_distill_loss(student_hidden, student_head, None, None, labels, DistillLossConfig())


def test_all_ignored_labels_give_zero_loss_and_zero_gradients():
    case = list(make_case(tokens=6))
    case[4] = torch.full((6,), -100)
    loss, grad_hidden, grad_head = value_and_grads(
        fused_linear_distill_loss, tuple(case), DistillLossConfig()
    )
    assert loss.item() == 0.0
    assert not grad_hidden.any() and not grad_head.any()


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_divergence_of_identical_distributions_is_zero_and_positive_otherwise(kind):
    logits = torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(1))
    assert token_divergence(logits, logits, kind).abs().max() < 1e-5
    assert (token_divergence(logits, logits.flip(-1), kind) > 1e-3).all()


def test_jsd_at_half_is_symmetric_and_bounded_by_log_two():
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(8, VOCAB, generator=generator) * 5
    b = torch.randn(8, VOCAB, generator=generator) * 5
    torch.testing.assert_close(token_divergence(a, b, "jsd", 0.5), token_divergence(b, a, "jsd", 0.5))
    assert (token_divergence(a, b, "jsd", 0.5) <= math.log(2) + 1e-6).all()
