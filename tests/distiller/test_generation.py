"""The distiller's own sampling (on-policy responses): numeric edges of the temperature."""

from __future__ import annotations

import pytest
import torch

from radixfair_distiller.generation import generate
from radixfair_distiller.model_dir import load_llama

PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]


@pytest.fixture(scope="module")
def student(tiny_model_dir):
    return load_llama(tiny_model_dir)


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 5e-324])
def test_a_vanishing_temperature_samples_the_greedy_tokens(student, temperature):
    greedy = generate(student, PROMPTS, 6, None, 0)
    # softmax(logits / 1e-40) overflows to inf / inf = NaN unless the logits are shifted first.
    sampled = generate(
        student, PROMPTS, 6, None, 0, temperature=temperature, generator=torch.Generator().manual_seed(3)
    )
    assert sampled == greedy


def test_a_huge_temperature_still_samples_valid_ids(student):
    answers = generate(
        student, PROMPTS, 6, None, 0, temperature=1e30, generator=torch.Generator().manual_seed(3)
    )
    vocab = student.config.vocab_size
    assert [len(a) for a in answers] == [6, 6, 6]
    assert all(0 <= t < vocab for a in answers for t in a)
