"""Teacher-student divergences on full logits: the plain reference every fused path must match.

Per token, with student probabilities p = softmax(z_s / T) and teacher
probabilities q = softmax(z_t / T):

- forward_kl:  KL(q || p) = sum q (log q - log p)   (mass-covering)
- reverse_kl:  KL(p || q) = sum p (log p - log q)   (mode-seeking)
- jsd (beta):  with m = beta p + (1 - beta) q,
               beta KL(p || m) + (1 - beta) KL(q || m)   (beta = 0.5: the usual JSD)

The divergence is multiplied by T^2 so its gradient keeps the same scale
whatever the temperature (Hinton et al.). The token loss mixes it with the
hard-label cross-entropy at T = 1:

    loss = (1 - alpha) * T^2 * D + alpha * CE(z_s, label)

and the batch loss is the mean over tokens whose label is not ignore_index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass(frozen=True)
class DistillLossConfig:
    kind: str = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    # alpha above: 0 is pure distillation, 1 is hard labels only.
    hard_label_weight: float = 0.0
    # Tokens per chunk in the fused path (memory ~ a few x chunk x vocab floats).
    chunk_tokens: int = 256
    ignore_index: int = IGNORE_INDEX

    @property
    def uses_teacher(self) -> bool:
        return self.hard_label_weight < 1.0


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, so the tests can compare at double precision)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """D per token (without the T^2 factor). Logits [N, V] any float dtype; returns [N] in >= fp32."""
    log_p = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    log_q = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)
    if kind == "forward_kl":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if kind == "reverse_kl":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    if kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0)
        kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
        kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
        return beta * kl_p + (1.0 - beta) * kl_q
    raise ValueError(f"unknown divergence {kind!r}")


def plain_distill_loss(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_head: torch.Tensor | None,
    labels: torch.Tensor,
    config: DistillLossConfig,
) -> torch.Tensor:
    """The loss with the full [N, V] logits materialised; gradients by autograd.

    student_hidden [N, Ds], student_head [V, Ds], teacher_hidden [N, Dt],
    teacher_head [V, Dt], labels [N] int64. Returns a scalar (fp32, or fp64 for fp64 inputs).
    """
    valid = labels != config.ignore_index
    count = valid.sum().clamp(min=1)
    student_logits = upcast(student_hidden @ student_head.T)
    alpha = config.hard_label_weight
    per_token = torch.zeros(labels.shape[0], dtype=student_logits.dtype, device=labels.device)
    if alpha > 0.0:
        ce = F.cross_entropy(student_logits, labels, ignore_index=config.ignore_index, reduction="none")
        per_token = per_token + alpha * ce
    if config.uses_teacher:
        assert teacher_hidden is not None and teacher_head is not None
        with torch.no_grad():
            teacher_logits = upcast(teacher_hidden @ teacher_head.T)
        divergence = token_divergence(
            student_logits, teacher_logits, config.kind, config.beta, config.temperature
        )
        per_token = per_token + (1.0 - alpha) * config.temperature**2 * divergence
    return (per_token * valid).sum() / count
