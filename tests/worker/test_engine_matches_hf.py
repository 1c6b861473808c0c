"""Greedy output of the engine is token-identical to HF transformers generate (fp32, CPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from worker.engine_harness import greedy, make_stack, run_to_completion

from radixfair.tokenization import ChatTurn, PromptEncoder

pytestmark = pytest.mark.real_model

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def hf_greedy(smollm2_dir: Path) -> Callable[[list[int]], list[int]]:
    """HF's greedy continuation of a prompt, NEW_TOKENS long; each prompt is generated once per module."""
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    # Generate straight through end-of-sequence, as the engine does with ignore_eos, without
    # min_new_tokens (which would mask EOS logits and change the argmax).
    model.generation_config.eos_token_id = None
    # Greedy decoding is deterministic, so the tests that ask for the same prompt share one generation.
    done: dict[tuple[int, ...], list[int]] = {}

    def generate(prompt: list[int]) -> list[int]:
        if tuple(prompt) not in done:
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([prompt]),
                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    max_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    min_new_tokens=NEW_TOKENS,
                    pad_token_id=2,
                )
            done[tuple(prompt)] = out[0, len(prompt) :].tolist()
        return done[tuple(prompt)]

    return generate


@pytest.fixture(scope="module")
def prompts(smollm2_dir: Path) -> list[list[int]]:
    encoder = PromptEncoder(smollm2_dir)
    chats = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Explain in one sentence why the sky is blue, for a child who is five years old.",
    ]
    out = [encoder.encode_chat([ChatTurn("user", text)]) for text in chats]
    out.append(encoder.encode_text("The quick brown fox jumps over the lazy dog. Then the fox"))
    return out


def test_single_request_matches_hf(smollm2_dir, hf_greedy, prompts):
    stack = make_stack(smollm2_dir)
    request = greedy(prompts[0], NEW_TOKENS, "one", ignore_eos=True)
    run_to_completion(stack.engine, [request])
    assert request.output_ids == hf_greedy(prompts[0])


def test_batch_of_mixed_lengths_matches_hf_per_request(smollm2_dir, hf_greedy, prompts):
    stack = make_stack(smollm2_dir)
    requests = [greedy(p, NEW_TOKENS, f"mixed-{i}", ignore_eos=True) for i, p in enumerate(prompts)]
    run_to_completion(stack.engine, requests)
    assert len({len(p) for p in prompts}) == len(prompts)
    for prompt, request in zip(prompts, requests):
        assert request.output_ids == hf_greedy(prompt), request.request_id


def test_request_with_cached_prefix_matches_hf(smollm2_dir, hf_greedy, prompts):
    stack = make_stack(smollm2_dir, page_size=4)
    first = greedy(prompts[2], 4, "warm", ignore_eos=True)
    run_to_completion(stack.engine, [first])
    # Same conversation, one more turn: the whole first prompt is a cached prefix.
    follow_up = prompts[2] + prompts[1]
    second = greedy(follow_up, NEW_TOKENS, "follow-up", ignore_eos=True)
    run_to_completion(stack.engine, [second])
    assert second.num_cached_tokens >= len(prompts[2]) - 4
    assert second.output_ids == hf_greedy(follow_up)


def test_chunked_prefill_gives_the_same_tokens(smollm2_dir, hf_greedy, prompts):
    stack = make_stack(smollm2_dir, max_batched_tokens=8, max_running_requests=8)
    # Half the new tokens: what chunking can break is the prompt's K/V, which every decoded token reads;
    # the first prompt done decodes beside the others' chunks all the same, and the greedy continuation
    # of a prompt is the start of its longer one.
    new_tokens = NEW_TOKENS // 2
    requests = [greedy(p, new_tokens, f"chunked-{i}", ignore_eos=True) for i, p in enumerate(prompts)]
    run_to_completion(stack.engine, requests)
    # Every prompt is longer than one chunk, so each was prefilled over several steps.
    assert min(len(p) for p in prompts) > 8
    for prompt, request in zip(prompts, requests):
        assert request.output_ids == hf_greedy(prompt)[:new_tokens], request.request_id
