"""The sort-based sampler (radixfair before the sorting-free top-p): the reference the tests compare to.

``sample_rows_sorted`` is the production ``sample_rows`` of commit 6df3feb, the
same operations split in two functions: a stable descending sort of each row's scores, top-k as a
threshold on the k-th sorted score, a softmax over the sorted scores, top-p
from their float64 prefix sums, and the draw in vocabulary order. The tests
check the new path against it; bench/kernels/sampler_bench.py times the two.
"""

from __future__ import annotations

import torch

from radixfair_engine.sampler import inverse_cdf, row_uniforms

_TEMPERATURE, _TOP_K, _TOP_P = 3, 4, 5


def sample_rows_sorted(
    logits: torch.Tensor, table: torch.Tensor, filtered: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The old ``sample_rows``: logits [S, V] fp32, table [S, 6] float64 -> (ids [S], bad [S])."""
    temperature = table[:, _TEMPERATURE].to(torch.float32)
    temperature = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    best = logits.amax(dim=-1, keepdim=True)
    bad = ~torch.isfinite(best.squeeze(-1))
    scores = (logits - torch.where(torch.isfinite(best), best, torch.zeros_like(best))) / temperature[:, None]
    scores = torch.where(bad[:, None], torch.zeros_like(scores), scores)
    uniform = row_uniforms(table)
    if not filtered:
        return inverse_cdf(torch.softmax(scores, dim=-1), uniform), bad
    return inverse_cdf(sorted_filtered_probs(scores, table), uniform), bad


def sorted_filtered_probs(scores: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The old filtered path up to the draw: kept probabilities [S, V] fp32 in vocabulary order."""
    sorted_scores, order = scores.sort(dim=-1, descending=True, stable=True)
    top_k = table[:, _TOP_K].to(torch.int64)
    kth = sorted_scores.gather(-1, (top_k - 1).clamp(min=0)[:, None])
    keep_k = (top_k[:, None] == 0) | (sorted_scores >= kth)
    probs = torch.softmax(sorted_scores.masked_fill(~keep_k, float("-inf")), dim=-1)
    mass_before = probs.to(torch.float64).cumsum(dim=-1) - probs.to(torch.float64)
    top_p = table[:, _TOP_P][:, None]
    outside = (mass_before >= top_p) & (top_p < 1.0)
    outside[:, 0] = False
    return torch.empty_like(probs).scatter_(-1, order, probs.masked_fill(outside, 0.0))


def top_p_keep_sorted(scores: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The sort's top-p rule on given probabilities: keep [S, V] bool (for comparing the selection alone).

    scores [S, V] fp32, probs [S, V] fp32 (their softmax), top_p [S] float64.
    """
    order = scores.sort(dim=-1, descending=True, stable=True).indices
    sorted_probs = probs.gather(-1, order).to(torch.float64)
    outside = (sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p[:, None]) & (top_p[:, None] < 1.0)
    outside[:, 0] = False
    return torch.empty_like(outside).scatter_(-1, order, ~outside)


def mass_ahead_sorted(scores: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """[S, V] float64: each token's mass ranked before it in the sort's order (vocabulary order)."""
    order = scores.sort(dim=-1, descending=True, stable=True).indices
    sorted_probs = probs.gather(-1, order).to(torch.float64)
    return torch.empty_like(sorted_probs).scatter_(-1, order, sorted_probs.cumsum(dim=-1) - sorted_probs)
