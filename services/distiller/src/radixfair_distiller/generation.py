"""Batched generation with a Hugging Face Llama: greedy (teacher answers, exact match) or sampled (on-policy).

A small loop of our own instead of ``generate``: sampling draws from an
explicit torch.Generator, so an on-policy step is reproducible from the
recipe seed and step number without touching torch's global RNG.
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM


@torch.no_grad()
def generate(
    model: LlamaForCausalLM,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int = 8,
) -> list[list[int]]:
    """New tokens per prompt, the first end-of-sequence token included (then it stops).

    ``temperature`` 0 is greedy; above 0 samples from softmax(logits / T).
    """
    was_training = model.training
    model.eval()
    try:
        out: list[list[int]] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            out.extend(
                _generate_batch(
                    model, chunk, max_new_tokens, eos_token_id, pad_token_id, temperature, generator
                )
            )
        return out
    finally:
        model.train(was_training)


def _generate_batch(model, prompts, max_new_tokens, eos_token_id, pad_token_id, temperature, generator):
    device = model.device
    width = max(len(p) for p in prompts)
    # Left padding, so every row's next token sits in the last column.
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    result = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    for step in range(max_new_tokens):
        next_tokens = _pick(result.logits[:, -1].float(), temperature, generator)
        for row, token in enumerate(next_tokens.tolist()):
            if not finished[row]:
                outputs[row].append(token)
                finished[row] = token == eos_token_id
        if all(finished) or step == max_new_tokens - 1:
            break  # no forward pass for a token nobody will read
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        result = model(
            input_ids=next_tokens.unsqueeze(1).to(device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=result.past_key_values,
            use_cache=True,
        )
    return outputs


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    # Shifted by each row's maximum first: raw logits over a tiny temperature overflow to inf, and
    # softmax(inf) is NaN. Shifted, the best score is exactly 0, so any temperature > 0 is safe (a
    # vanishing one becomes the argmax), as in the worker's sampler. In float64, because the
    # recipe's temperature is a Python float: one below float32's range would round to 0 (0/0).
    shifted = logits.double() - logits.double().amax(dim=-1, keepdim=True)
    probs = torch.softmax(shifted / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)
