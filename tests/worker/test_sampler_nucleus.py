"""Top-k and top-p without a sort, against the sort-based sampler they replace (worker/sampler_reference.py).

What is guaranteed. The kept set is the sort's: tokens ordered by score, ties
by ascending id, a token kept while the mass ranked before it is below top_p,
the first always kept, top-k ties with the k-th score kept. The one
difference is arithmetic. The sort sums the masses in float64 (rounding by at
most vocab * 2**-53), the radix selection in exact 60-bit fixed point
(truncating under vocab * 2**-60). So a token can be kept by one and not the
other only when the mass ahead of it lies within vocab * 2**-52 of top_p, or
when its probability is below 2**-60 (counted as none, so never a boundary).
The draws are then the same. The one exception is a softmax that rounds
differently over sorted and unsorted scores (float32 sums on a GPU), which
moves a draw only when its uniform number lies within that rounding of a
step of the CDF.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from worker.sampler_reference import (
    mass_ahead_sorted,
    sample_rows_sorted,
    sorted_filtered_probs,
    top_p_keep_sorted,
)

from radixfair_engine.nucleus import keep_top_k, top_p_keep
from radixfair_engine.request import SamplingConfig
from radixfair_engine.sampler import Sampler, inverse_cdf, row_uniforms, sample_rows

KINDS = ["spread", "bf16_ties", "few_values", "near_ties", "masked"]


def logits_of(kind: str, rows: int, vocab: int, scale: float, seed: int) -> torch.Tensor:
    """[rows, vocab] fp32 logits of one shape of trouble: exact ties, adjacent floats, -inf entries."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * scale
    if kind == "bf16_ties":  # real models' logits: bf16 upcast, so many exact ties
        logits = logits.bfloat16().float()
    elif kind == "few_values":  # large tie groups straddling the boundary
        logits = torch.randint(0, 3, (rows, vocab), generator=g).float() * scale
    elif kind == "near_ties":  # scores one or two float32 steps apart
        steps = torch.randint(0, 3, (rows, vocab), generator=g)
        logits = torch.full((rows, vocab), scale)
        for _ in range(2):
            logits = torch.where(steps > 0, torch.nextafter(logits, torch.tensor(math.inf)), logits)
            steps = steps - 1
    elif kind == "masked":  # what top-k leaves: -inf outside, at least one finite score per row
        drop = torch.rand(rows, vocab, generator=g) < 0.5
        drop[:, 0] = False
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return (logits - logits.amax(dim=-1, keepdim=True)) / temperature


@st.composite
def score_batches(draw: st.DrawFn) -> torch.Tensor:
    rows, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 300))
    kind, scale = draw(st.sampled_from(KINDS)), draw(st.sampled_from([0.01, 1.0, 8.0, 60.0]))
    logits = logits_of(kind, rows, vocab, scale, draw(st.integers(0, 2**31 - 1)))
    return tempered(logits, draw(st.sampled_from([1e-3, 0.7, 1.0, 3.0])))


@st.composite
def top_ps(draw: st.DrawFn, scores: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Per row: any top_p in (0, 1], or exactly the sort's mass ahead of some token (a boundary)."""
    ahead = mass_ahead_sorted(scores, probs)
    values = []
    for row in range(scores.shape[0]):
        if draw(st.booleans()):
            values.append(ahead[row, draw(st.integers(0, scores.shape[1] - 1))].item() or 1e-9)
        else:
            values.append(draw(st.floats(1e-9, 1.0) | st.sampled_from([0.5, 0.9, 1 - 2**-30])))
    return torch.tensor(values, dtype=torch.float64)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), scores=score_batches())
def test_top_p_keeps_the_sorts_tokens_but_within_rounding_of_top_p(data, scores):
    probs = torch.softmax(scores, dim=-1)
    top_p = data.draw(top_ps(scores, probs))

    keep = top_p_keep(scores, probs, top_p)

    expected = top_p_keep_sorted(scores, probs, top_p)
    # Tokens under 2**-60 count no mass; past the boundary they are dropped (see nucleus).
    counted = probs.double() >= 2.0**-60
    differ = (keep != expected) & counted
    # The sort's float64 prefix sums round by <= vocab * 2**-53; fixed point truncates < vocab * 2**-60.
    slack = scores.shape[1] * 2.0**-52
    ahead = mass_ahead_sorted(scores, probs)
    assert ((ahead - top_p[:, None]).abs()[differ] <= slack).all(), (scores, top_p, differ.nonzero())
    assert keep[torch.arange(len(scores)), scores.argmax(dim=-1)].all()  # the first token always stays


@settings(max_examples=200, deadline=None)
@given(scores=score_batches(), k=st.integers(1, 300))
def test_top_k_keeps_every_score_at_least_the_kth_ties_included(scores, k):
    k = min(k, scores.shape[1])
    top_k = torch.tensor([k] * (len(scores) - 1) + [0])  # the last row has no top-k

    kept = keep_top_k(scores, top_k, k) > float("-inf")

    kth = scores.sort(dim=-1, descending=True).values[:, k - 1 : k]
    expected = (scores >= kth) & (scores > float("-inf"))
    expected[-1] = scores[-1] > float("-inf")
    assert torch.equal(kept, expected)


def table_of(
    rows: int, seeds: list[int], temperatures: list[float], top_ks: list[int], top_p: list[float]
) -> torch.Tensor:
    table = torch.zeros(rows, 6, dtype=torch.float64)
    table[:, 0] = torch.tensor([s & 0xFFFFFFFF for s in seeds], dtype=torch.float64)
    table[:, 1] = torch.tensor([s >> 32 for s in seeds], dtype=torch.float64)
    table[:, 2] = torch.arange(rows, dtype=torch.float64)
    table[:, 3] = torch.tensor(temperatures, dtype=torch.float64)
    table[:, 4] = torch.tensor(top_ks, dtype=torch.float64)
    table[:, 5] = torch.tensor(top_p, dtype=torch.float64)
    return table


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_sampler_draws_the_sort_based_samplers_tokens(data):
    rows, vocab = data.draw(st.integers(1, 6)), data.draw(st.integers(2, 300))
    kind, scale = data.draw(st.sampled_from(KINDS)), data.draw(st.sampled_from([0.01, 1.0, 8.0]))
    logits = logits_of(kind, rows, vocab, scale, data.draw(st.integers(0, 2**31 - 1)))
    seeds = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=rows, max_size=rows))
    temperatures = data.draw(st.lists(st.sampled_from([0.3, 0.7, 1.0, 2.5]), min_size=rows, max_size=rows))
    top_ks = data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows))
    top_p = data.draw(st.lists(st.sampled_from([1.0, 0.95, 0.9, 0.5, 0.05]), min_size=rows, max_size=rows))
    table = table_of(rows, seeds, temperatures, top_ks, top_p)

    ids, bad = sample_rows(logits, table, max(top_ks), min(top_p) < 1.0)

    expected, expected_bad = sample_rows_sorted(logits, table, True)
    assert torch.equal(bad, expected_bad)
    for row in (ids != expected).nonzero().flatten().tolist():
        # Only a draw within float32 softmax rounding of a step of the CDF, or a boundary token
        # within it of top_p, may differ (see the module docstring).
        slack = vocab * 2.0**-22
        scores = logits[row : row + 1] - logits[row].max()
        scores = scores / temperatures[row]
        kept = sorted_filtered_probs(scores, table[row : row + 1]).double()[0]
        cdf = kept.cumsum(0)
        target = row_uniforms(table[row : row + 1]).item() * cdf[-1].item()
        step = int(min(ids[row], expected[row]))
        near_step = abs(cdf[step].item() - target) <= slack
        ahead = mass_ahead_sorted(scores, torch.softmax(scores, dim=-1))[0]
        near_boundary = ((ahead - top_p[row]).abs() <= slack).any().item()
        assert near_step or near_boundary, (row, ids[row], expected[row])


def test_top_p_at_the_full_vocabulary_keeps_the_sorts_tokens():
    rows, vocab = 6, 49152
    logits = torch.cat([logits_of(kind, 2, vocab, 2.0, 8) for kind in ("spread", "bf16_ties", "few_values")])
    scores = tempered(logits, 0.7)
    probs = torch.softmax(scores, dim=-1)
    top_p = torch.tensor([0.9, 0.5, 0.9, 0.99, 0.3, 0.95], dtype=torch.float64)

    keep = top_p_keep(scores, probs, top_p)

    expected = top_p_keep_sorted(scores, probs, top_p)
    ahead = mass_ahead_sorted(scores, probs)
    differ = (keep != expected) & (probs.double() >= 2.0**-60)
    assert ((ahead - top_p[:, None]).abs()[differ] <= vocab * 2.0**-52).all()
    assert keep.sum() > rows  # the boundaries lie inside the vocabulary, not at its first token


def test_top_p_one_keeps_every_token_even_when_the_softmax_sums_past_one():
    scores = tempered(torch.randn(8, 49152, generator=torch.Generator().manual_seed(4)) * 3, 1.0)
    probs = torch.softmax(scores, dim=-1)
    assert (probs.double().sum(dim=-1) > 1.0).any()  # float32 rounding: the case that matters
    keep = top_p_keep(scores, probs, torch.ones(8, dtype=torch.float64))
    assert keep.all()


def test_tokens_tied_at_the_top_p_boundary_stay_in_id_order():
    # Six equal scores: 1/6 each. top_p 0.4 keeps ids while the mass before them is < 0.4, i.e.
    # the first three (0, 1/6, 2/6 ahead), whatever ids they have.
    scores = torch.full((1, 10), -math.inf)
    ids = [9, 2, 7, 0, 5, 3]
    scores[0, ids] = 0.0
    keep = top_p_keep(scores, torch.softmax(scores, dim=-1), torch.tensor([0.4], dtype=torch.float64))
    assert keep[0].nonzero().flatten().tolist() == [0, 2, 3]


def draws(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """inverse_cdf of one probability row [V] for many uniform numbers [N] at once -> [N]."""
    cdf = probs.double().cumsum(0)
    return torch.searchsorted(cdf, uniform * cdf[-1]).clamp(max=len(probs) - 1)


def test_a_row_that_filters_nothing_draws_from_its_own_softmax_whatever_its_companions_do():
    """Finding: the sort path gave such a row the sorted softmax whenever a companion filtered.

    A softmax over sorted and over unsorted scores rounds differently (at this vocabulary on a
    CPU as on a GPU), so a seed whose uniform number lies at a step of the CDF drew differently
    beside a filtering companion. Such seeds are searched for below (the sort path fails on them).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab = 49152
    logits = (torch.randn(1, vocab, generator=torch.Generator().manual_seed(5)) * 3).to(device)
    scores = logits - logits.max()
    unsorted = torch.softmax(scores, dim=-1)
    plain = table_of(1, [0], [1.0], [0], [1.0]).to(device)
    through_sort = sorted_filtered_probs(scores, plain)
    candidates = 200_000
    table = table_of(
        candidates, list(range(candidates)), [1.0] * candidates, [0] * candidates, [1.0] * candidates
    )
    table[:, 2] = 0.0
    uniform = row_uniforms(table.to(device))
    sensitive = (draws(unsorted[0], uniform) != draws(through_sort[0], uniform)).nonzero().flatten().tolist()
    assert sensitive, "no seed shows the difference: the case proves nothing"

    companion = logits_of("spread", 1, vocab, 3.0, 6).to(device)
    for seed in sensitive[:8] + list(range(8)):
        subject = SamplingConfig(1, temperature=1.0, seed=seed)
        filtering = SamplingConfig(1, temperature=0.7, top_k=40, top_p=0.9, seed=1)
        alone = Sampler().sample(logits, ["s"], [subject], [0]).tokens[0]
        beside = Sampler().sample(torch.cat([companion, logits]), ["c", "s"], [filtering, subject], [0, 0])
        own = int(inverse_cdf(unsorted, row_uniforms(table_of(1, [seed], [1.0], [0], [1.0]).to(device))))
        assert alone == beside.tokens[1] == own, seed
