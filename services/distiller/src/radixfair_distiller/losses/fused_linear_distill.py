"""LM head fused with the distillation loss, chunked over tokens, with gradients computed in forward.

With a 49,152-token vocabulary the [tokens x vocab] logits (and their
softmax and gradient) are most of the memory of a small model's training
step. Here the tokens are processed ``chunk_tokens`` at a time: a chunk's
student and teacher logits are computed, reduced to the loss and to the
gradient with respect to the student logits (closed form, below), which is
pushed straight through the LM head into grad_hidden and grad_head, and then
the chunk's logits are freed. Peak extra memory is a few chunk x vocab fp32
buffers instead of several tokens x vocab ones. Because the loss is a scalar
the backward only scales the stored gradients.

Closed-form gradients with respect to the scaled logits s = z / T, for a
per-token function L(p) of p = softmax(s): dL/ds = p * (g - <p, g>) with
g = dL/dp. That gives p - q for forward KL, p * (r - KL) with
r = log p - log q for reverse KL, and g = beta * (log p - log m) for the
generalized JSD. The hard-label term at T = 1 has softmax(z) - onehot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from radixfair_distiller.losses.divergence import DistillLossConfig, upcast


def fused_linear_distill_loss(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_head: torch.Tensor | None,
    labels: torch.Tensor,
    config: DistillLossConfig,
) -> torch.Tensor:
    """Same value and gradients as ``plain_distill_loss``, without ever holding [N, V] logits.

    student_hidden [N, Ds] and student_head [V, Ds] receive gradients;
    teacher_hidden [N, Dt] and teacher_head [V, Dt] do not (they may be None
    when hard_label_weight is 1). labels [N] int64 with ignore_index for
    positions that do not count. Returns a scalar (fp32, or fp64 for fp64 inputs).
    """
    if config.uses_teacher and (teacher_hidden is None or teacher_head is None):
        raise ValueError(
            "a distillation loss with hard_label_weight < 1 needs the teacher's hidden states and head"
        )
    return _FusedLinearDistill.apply(
        student_hidden, student_head, teacher_hidden, teacher_head, labels, config
    )


class _FusedLinearDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_hidden, student_head, teacher_hidden, teacher_head, labels, config):  # noqa: D102
        valid = labels != config.ignore_index
        count = int(valid.sum().item())
        scale = 1.0 / max(count, 1)
        grad_hidden = torch.zeros_like(student_hidden)
        compute = torch.promote_types(student_hidden.dtype, torch.float32)
        grad_head = torch.zeros(student_head.shape, dtype=compute, device=student_head.device)
        total = torch.zeros((), dtype=compute, device=student_hidden.device)
        for start in range(0, labels.shape[0], config.chunk_tokens):
            rows = slice(start, start + config.chunk_tokens)
            mask = valid[rows]
            if not bool(mask.any()):
                continue
            hidden = student_hidden[rows]
            student_logits = upcast(hidden @ student_head.T)
            teacher_logits = None
            if config.uses_teacher:
                teacher_logits = upcast(teacher_hidden[rows] @ teacher_head.T).to(compute)
            loss, grad_logits = chunk_loss_and_grad(student_logits, teacher_logits, labels[rows], config)
            del student_logits, teacher_logits
            maskf = mask.to(compute)
            total += (loss * maskf).sum()
            grad_logits *= (maskf * scale).unsqueeze(1)
            grad_hidden[rows] = (grad_logits @ student_head.to(compute)).to(grad_hidden.dtype)
            grad_head += grad_logits.T @ hidden.to(compute)
            del grad_logits
        ctx.save_for_backward(grad_hidden, grad_head.to(student_head.dtype))
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        grad_hidden, grad_head = ctx.saved_tensors
        return grad_hidden * grad_output, grad_head * grad_output, None, None, None, None


def chunk_loss_and_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    config: DistillLossConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss [C] and its gradient w.r.t. the student logits [C, V] (rows unmasked)."""
    alpha = config.hard_label_weight
    temperature = config.temperature
    loss = torch.zeros(student_logits.shape[0], dtype=student_logits.dtype, device=student_logits.device)
    grad = torch.zeros_like(student_logits)
    if config.uses_teacher:
        assert teacher_logits is not None
        divergence, grad_scaled = _divergence_and_grad(student_logits, teacher_logits, config)
        weight = (1.0 - alpha) * temperature**2
        loss += weight * divergence
        # d/dz = d/ds / T, times the T^2 of the loss.
        grad += grad_scaled.mul_(weight / temperature)
        del grad_scaled
    if alpha > 0.0:
        safe_labels = labels.clamp(min=0).unsqueeze(1)  # ignored rows are masked by the caller
        log_probs = F.log_softmax(student_logits, dim=-1)
        loss += alpha * -log_probs.gather(1, safe_labels).squeeze(1)
        probs = log_probs.exp_()
        probs.scatter_add_(1, safe_labels, torch.full_like(safe_labels, -1, dtype=probs.dtype))
        grad += probs.mul_(alpha)
    return loss, grad


def _divergence_and_grad(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, config: DistillLossConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """D per token [C] and dD/ds [C, V] for s = student_logits / T."""
    log_p = F.log_softmax(student_logits / config.temperature, dim=-1)
    log_q = F.log_softmax(teacher_logits / config.temperature, dim=-1)
    p = log_p.exp()
    if config.kind == "forward_kl":
        q = log_q.exp()
        divergence = (q * (log_q - log_p)).sum(-1)
        return divergence, p.sub_(q)
    if config.kind == "reverse_kl":
        ratio = log_p - log_q
        divergence = (p * ratio).sum(-1)
        return divergence, p.mul_(ratio.sub_(divergence.unsqueeze(1)))
    if config.kind == "jsd":
        beta = config.beta
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1.0 - beta))
        kl_p = (p * (log_p - log_m)).sum(-1)
        kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
        g = (log_p - log_m).mul_(beta)
        centred = g.sub_((p * g).sum(-1, keepdim=True))
        return beta * kl_p + (1.0 - beta) * kl_q, p.mul_(centred)
    raise ValueError(f"unknown divergence {config.kind!r}")
