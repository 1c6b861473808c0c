"""Top-k and top-p (nucleus) filtering of tempered scores, batched, without sorting the vocabulary.

The rule is the one a stable descending sort defines. Order a row's tokens by
score, highest first, ties by ascending vocabulary id. Top-k keeps every
token scoring at least the k-th score of that order (ties with it stay).
Top-p then keeps a token while the probability mass ranked before it is below
top_p; the first token always stays.

Sorting 49,152 scores per row costs more than the rest of a decode step, so
top-p finds each row's boundary by radix selection instead. Scores map to
31-bit keys that order them; three rounds (11, 10 and 10 bits) each build a
histogram of the mass over the next digit of the keys still in contention.
The boundary key is the one at which the mass, summed in key order, first
reaches top_p: every key below it stays, every key above it goes, and a
prefix sum over the tokens tied at it keeps them in id order. Nothing waits
for the device, and no row's result depends on another row.

Masses are counted exactly in 60-bit fixed point: a probability p counts
floor(p * 2**60). Integer sums do not depend on their order, so the histograms
(built with atomic adds on a GPU) give the same answer on every run. A sort's
float64 prefix sums round instead, by at most ``vocab * 2**-53``, and
truncation drops under ``vocab * 2**-60``. The kept sets can therefore
differ only for a token whose mass ahead lies within ``vocab * 2**-52`` of
top_p, or whose probability is below 2**-60: it counts no mass, so it is
never the boundary, and beyond the boundary it goes where the sort may keep
it (its share of a draw is under 2**-60). When every probability is a
multiple of 2**-60 and the float64 sums are exact (as for ties of equal
scores, common with bf16 logits), there is no difference at all.
"""

from __future__ import annotations

import torch

# A probability p counts floor(p * 2**MASS_BITS); a row's total (<= 1 plus float32 rounding) fits in int64.
MASS_BITS = 60
# (shift, width) of each radix digit of the 31-bit score keys, most significant first.
_DIGITS = ((20, 11), (10, 10), (0, 10))


def keep_top_k(scores: torch.Tensor, top_k: torch.Tensor, largest_k: int) -> torch.Tensor:
    """scores [S, V] fp32, top_k [S] int64 (0: no limit) -> scores with the rest set to -inf.

    ``largest_k`` = max(top_k), known to the host, in 1..V: one torch.topk of that width gives
    every row's k-th score.
    """
    best = torch.topk(scores, largest_k, dim=-1).values  # [S, largest_k], descending
    kth = best.gather(-1, (top_k - 1).clamp(min=0)[:, None])
    return scores.masked_fill((top_k[:, None] > 0) & (scores < kth), float("-inf"))


def score_keys(scores: torch.Tensor) -> torch.Tensor:
    """scores [S, V] fp32, every one <= 0 or -inf -> [S, V] int32 keys; a smaller key, a higher score.

    A non-positive float's magnitude bits order it (-0.0 and 0.0 both map to 0, as they compare
    equal); -inf maps to 0x7F800000, above every finite key.
    """
    if scores.dtype != torch.float32:
        raise TypeError(f"score keys are float32 bit patterns, got {scores.dtype}")
    return scores.contiguous().view(torch.int32) & 0x7FFFFFFF


def top_p_keep(scores: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The tokens top-p keeps in each row (see the module docstring for the rule).

    scores [S, V] fp32, each <= 0 or -inf (tempered, best shifted to 0); probs [S, V] fp32 >= 0,
    ordered as the scores are (their softmax); top_p [S] float64 (>= 1 keeps every token, <= 0
    only the first). Returns keep [S, V] bool.
    """
    rows = scores.shape[0]
    key = score_keys(scores)
    # Scaling by a power of two is exact in float32 (no overflow below 2**128); the cast truncates.
    mass = (probs * 2.0**MASS_BITS).to(torch.int64)
    # A token stays while the mass ahead of it is < budget. A row's total is under 2**61 (float32
    # softmax rounding can make it exceed 1), so a budget of 2**62 is never reached: every token stays.
    budget = torch.where(top_p < 1.0, (top_p * 2.0**MASS_BITS).ceil().clamp(min=1.0), 2.0**62)
    budget = budget.to(torch.int64)[:, None]
    boundary = torch.zeros(rows, 1, dtype=torch.int32, device=key.device)  # the key's digits so far
    ahead = torch.zeros(rows, 1, dtype=torch.int64, device=key.device)  # mass of the keys below them
    for shift, width in _DIGITS:
        boundary, ahead = _next_digit(key, mass, budget - ahead, boundary, ahead, shift, width)
    # Tokens tied at the boundary key stay in id order while the mass ahead of them is short.
    tied = key == boundary
    tied_mass = torch.where(tied, mass, 0)
    ahead_in_tie = tied_mass.cumsum(dim=-1) - tied_mass
    return (key < boundary) | (tied & (ahead_in_tie < budget - ahead))


def _next_digit(
    key: torch.Tensor,
    mass: torch.Tensor,
    room: torch.Tensor,
    boundary: torch.Tensor,
    ahead: torch.Tensor,
    shift: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One radix round: the next ``width`` bits of each row's boundary key, and the mass ahead of them.

    ``boundary`` [S, 1] int32: the digits above, chosen so far; ``ahead`` [S, 1] int64: the mass of
    the keys below them; ``room`` [S, 1] int64: the budget left after ``ahead``. Among the keys
    under ``boundary``, the digit chosen is the first at which their mass, summed in key order,
    reaches ``room``: the previous rounds chose a range holding that crossing. A row whose total
    mass never reaches its budget gets all-ones digits, a key above every score's: all stay.
    """
    rows, buckets = key.shape[0], 1 << width
    # The digit relative to the range: < 0 below it, >= buckets above; clamped onto two spare slots.
    # The first round's range is every key (31 bits: the top digit is all of key >> shift).
    digit = key >> shift
    if shift + width < 31:
        digit = (digit - (boundary << width)).clamp_(-1, buckets)
    slot = digit + torch.arange(1, rows * (buckets + 2), buckets + 2, device=key.device)[:, None]
    histogram = torch.zeros(rows * (buckets + 2), dtype=torch.int64, device=key.device)
    histogram.scatter_add_(0, slot.view(-1), mass.view(-1))
    histogram = histogram.view(rows, buckets + 2)[:, 1 : buckets + 1]
    reached = histogram.cumsum(dim=-1)
    chosen = torch.searchsorted(reached, room).clamp_(max=buckets - 1)
    ahead = ahead + (reached - histogram).gather(-1, chosen)
    return (boundary << width) | chosen.to(torch.int32), ahead
