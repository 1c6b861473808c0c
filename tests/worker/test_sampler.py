"""The device sampler on CPU tensors: what it may draw, how often, and that a row's draw is its own.

A seeded row's token must depend only on (seed, token index, logits row): the
same whatever other rows share the batch and wherever the row sits in it.
Frequencies are checked against the tempered, filtered distribution computed
independently here; the draws are deterministic (fixed seeds), so the
tolerances are statistical margins that hold for these seeds on any machine.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair_engine.request import SamplingConfig
from radixfair_engine.sampler import FAILED_TOKEN, Sampler, mix32, row_uniforms, tempered_probs

VOCAB = 64
SEED = st.integers(0, 2**64 - 1)
INDEX = st.integers(0, 5_000)


def distinct_logits(draw: st.DrawFn, vocab: int = VOCAB) -> torch.Tensor:
    """A logits row [vocab] fp32 with no exact ties (so top-k and argmax are unambiguous)."""
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    row = torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * scale
    return row + torch.arange(vocab, dtype=torch.float32) * 1e-4  # breaks any accidental tie


@st.composite
def sampled_config(draw: st.DrawFn) -> SamplingConfig:
    return SamplingConfig(
        max_tokens=1,
        temperature=draw(st.sampled_from([1e-6, 0.3, 0.7, 1.0, 2.5])),
        top_k=draw(st.sampled_from([0, 1, 2, 5, VOCAB - 1, VOCAB, 10 * VOCAB])),
        top_p=draw(st.sampled_from([1.0, 0.9, 0.5, 0.05, 1e-6])),
        seed=draw(SEED),
    )


# A subject row that really draws (many tokens possible), so a wrong stream shows in its token.
LIVELY = st.builds(
    SamplingConfig,
    max_tokens=st.just(1),
    temperature=st.sampled_from([0.7, 1.0, 2.5]),
    top_k=st.sampled_from([0, 20, VOCAB - 1]),
    top_p=st.sampled_from([1.0, 0.95]),
    seed=SEED,
)


@st.composite
def any_config(draw: st.DrawFn) -> SamplingConfig:
    if draw(st.booleans()):
        return SamplingConfig(max_tokens=1)  # greedy
    return draw(sampled_config())


def draw_one(logits: torch.Tensor, config: SamplingConfig, index: int = 0) -> int:
    return Sampler().sample(logits[None], ["only"], [config], [index]).tokens[0]


def mix32_reference(x: int) -> int:
    """The same finaliser in plain Python integers (no overflow questions at all)."""
    mask = 0xFFFFFFFF
    x &= mask
    x ^= x >> 16
    x = (x * 0x7FEB352D) & mask
    x ^= x >> 15
    x = (x * 0x846CA68B) & mask
    return x ^ (x >> 16)


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_the_hash_on_int64_tensors_equals_its_plain_integer_definition(values):
    assert mix32(torch.tensor(values, dtype=torch.int64)).tolist() == [mix32_reference(v) for v in values]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    config=LIVELY | sampled_config(),
    index=INDEX,
    others=st.lists(st.tuples(any_config(), INDEX, st.booleans()), min_size=1, max_size=6),
    position=st.integers(0, 6),
)
def test_a_seeded_row_draws_the_same_token_in_any_batch(data, config, index, others, position):
    row = distinct_logits(data.draw)
    alone = draw_one(row, config, index)

    rows, configs, indices = [], [], []
    for other_config, other_index, poisoned in others:
        other = distinct_logits(data.draw)
        if poisoned:  # a row the device cannot sample must not disturb its neighbours
            other[3] = math.nan
        rows.append(other)
        configs.append(other_config)
        indices.append(other_index)
    at = min(position, len(rows))
    rows.insert(at, row)
    configs.insert(at, config)
    indices.insert(at, index)
    ids = [f"r{i}" for i in range(len(rows))]

    batch = Sampler().sample(torch.stack(rows), ids, configs, indices)

    assert batch.tokens[at] == alone
    assert not batch.failures


@settings(max_examples=80, deadline=None)
@given(data=st.data(), config=sampled_config(), index=INDEX)
def test_top_k_never_draws_outside_the_k_best(data, config, index):
    logits = distinct_logits(data.draw)
    token = draw_one(logits, config, index)
    if 0 < config.top_k < VOCAB:
        assert token in logits.topk(config.top_k).indices.tolist()


@settings(max_examples=80, deadline=None)
@given(data=st.data(), config=sampled_config(), index=INDEX)
def test_top_p_never_draws_outside_the_nucleus(data, config, index):
    logits = distinct_logits(data.draw)
    token = draw_one(logits, config, index)
    probs = tempered_probs(logits, config.temperature, config.top_k).double()
    order = probs.argsort(descending=True).tolist()
    mass_before = probs[order].cumsum(0) - probs[order]
    rank = order.index(token)
    # The nucleus is the smallest prefix reaching top_p: a token may be drawn only if the mass
    # ranked before it is still short of top_p (float32 softmax rounding: VOCAB * 2**-24 slack).
    assert rank == 0 or mass_before[rank].item() < config.top_p + VOCAB * 2**-24
    assert probs[token] > 0


@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed=SEED, index=INDEX, temperature=st.sampled_from([1e-45, 1e-30, 1e-12]))
def test_a_vanishing_temperature_draws_the_argmax(data, seed, index, temperature):
    logits = distinct_logits(data.draw)
    config = SamplingConfig(
        max_tokens=1, temperature=temperature, seed=seed, top_p=data.draw(st.sampled_from([1.0, 0.9]))
    )
    assert draw_one(logits, config, index) == int(logits.argmax())


def frequencies(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=vocab).double() / len(tokens)


def expected_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The tempered, top-k then top-p filtered distribution, renormalised (float64)."""
    probs = tempered_probs(logits, temperature, top_k).double()
    order = probs.argsort(descending=True)
    sorted_probs = probs[order]
    outside = sorted_probs.cumsum(0) - sorted_probs >= top_p
    outside[0] = False
    kept = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill(outside, 0.0))
    return kept / kept.sum()


def test_draws_across_seeds_and_across_one_requests_tokens_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    n = 20_000
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.3, 4, 1.0), (0.7, 5, 0.8)]:
        expected = expected_probs(logits, temperature, top_k, top_p)
        configs = [
            SamplingConfig(1, temperature=temperature, top_k=top_k, top_p=top_p, seed=s) for s in range(n)
        ]
        batch = logits.expand(n, -1).contiguous()
        by_seed = Sampler().sample(batch, [f"r{s}" for s in range(n)], configs, [0] * n).tokens
        # One request's successive tokens: one seed, token index 0..n-1.
        one = [SamplingConfig(1, temperature=temperature, top_k=top_k, top_p=top_p, seed=7)] * n
        by_index = Sampler().sample(batch, ["one"] * n, one, list(range(n))).tokens
        # 5 binomial standard deviations per token: sqrt(p(1-p)/n) <= 0.0036 at n = 20000.
        margin = 5 * torch.sqrt(expected * (1 - expected) / n) + 1e-12
        for drawn in (by_seed, by_index):
            observed = frequencies(drawn, len(logits))
            assert ((observed - expected).abs() <= margin).all(), (
                temperature,
                top_k,
                top_p,
                observed,
                expected,
            )
            assert (observed[expected == 0] == 0).all()


def test_row_uniforms_are_spread_over_the_unit_interval():
    n = 50_000
    table = torch.zeros(n, 6, dtype=torch.float64)
    table[:, 0] = 12345.0
    table[:, 2] = torch.arange(n, dtype=torch.float64)
    u = row_uniforms(table)
    assert (u > 0).all() and (u < 1).all()
    # Kolmogorov-Smirnov distance to uniform; 1.95 / sqrt(n) is its 0.1% critical value.
    ks = (u.sort().values - (torch.arange(n, dtype=torch.float64) + 0.5) / n).abs().max()
    assert ks < 1.95 / math.sqrt(n)


def test_a_row_with_no_finite_maximum_fails_alone_and_keeps_a_valid_id_on_the_device():
    logits = torch.randn(3, VOCAB)
    logits[1, 5] = math.nan
    configs = [SamplingConfig(1, temperature=1.0, seed=1)] * 3
    rows = Sampler().sample(logits, ["a", "b", "c"], configs, [0, 0, 0])
    assert rows.tokens[1] == FAILED_TOKEN
    assert 0 <= int(rows.device[1]) < VOCAB
    assert rows.tokens[0] == draw_one(logits[0], configs[0]) and rows.tokens[2] == draw_one(
        logits[2], configs[2]
    )


@pytest.mark.parametrize("poison", [math.nan, math.inf, "all -inf"])
@pytest.mark.parametrize("companions", ["greedy", "sampled"])
def test_a_greedy_row_with_no_finite_maximum_fails_alone(poison, companions):
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2))
    if poison == "all -inf":
        logits[1] = -math.inf
    else:
        logits[1, 5] = poison
    others = (
        SamplingConfig(1) if companions == "greedy" else SamplingConfig(1, temperature=0.7, top_p=0.9, seed=3)
    )
    configs = [others, SamplingConfig(1), others]

    rows = Sampler().sample(logits, ["a", "b", "c"], configs, [0, 0, 0])

    assert rows.tokens[1] == FAILED_TOKEN and not rows.failures
    assert 0 <= int(rows.device[1]) < VOCAB
    assert [rows.tokens[0], rows.tokens[2]] == [draw_one(logits[0], others), draw_one(logits[2], others)]


def test_an_unseeded_request_keeps_one_seed_until_forgotten():
    logits = torch.zeros(1, 4096)  # uniform: two random seeds agree with probability 1/4096
    sampler, config = Sampler(), SamplingConfig(1, temperature=1.0)
    first = [sampler.sample(logits, ["u"], [config], [i]).tokens[0] for i in range(8)]
    again = [sampler.sample(logits, ["u"], [config], [i]).tokens[0] for i in range(8)]
    assert first == again
    sampler.forget("u")
    assert [sampler.sample(logits, ["u"], [config], [i]).tokens[0] for i in range(8)] != first
