"""Distillation losses: the plain reference and the chunked, LM-head-fused autograd Function."""

from radixfair_distiller.losses.divergence import DistillLossConfig, plain_distill_loss, token_divergence
from radixfair_distiller.losses.fused_linear_distill import fused_linear_distill_loss

__all__ = ["DistillLossConfig", "fused_linear_distill_loss", "plain_distill_loss", "token_divergence"]
