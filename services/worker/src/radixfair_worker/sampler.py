"""Picks each request's next token from its logits row."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radixfair_worker.request import SamplingConfig


class SamplingError(Exception):
    """One row could not be sampled; only its request fails."""


@dataclass
class SampledRows:
    """One token id per row, and why each failed row failed (row -> message).

    A failed row's token is meaningless: the engine fails that request instead of appending it.
    """

    tokens: list[int]
    failures: dict[int, str] = field(default_factory=dict)


class Sampler:
    """Greedy, temperature, top-k and top-p sampling with a seeded generator per request.

    Greedy rows are decided together by one argmax; sampled rows each use
    their request's own ``torch.Generator`` so a seeded request draws the
    same tokens whatever else shares its batch. Sampling one row never
    fails another: a row that cannot be sampled is reported in
    ``SampledRows.failures`` and the rest of the batch is sampled as usual.
    """

    def __init__(self) -> None:
        self._generators: dict[str, torch.Generator] = {}

    def sample(
        self, logits: torch.Tensor, request_ids: list[str], configs: list[SamplingConfig]
    ) -> SampledRows:
        """logits [S, vocab] fp32 -> one token id per row (plus the rows that failed)."""
        result = SampledRows(logits.argmax(dim=-1).tolist())
        for row, (request_id, config) in enumerate(zip(request_ids, configs)):
            if config.greedy:
                continue
            try:
                generator = self._generator(request_id, config)
                result.tokens[row] = self._sample_row(logits[row], generator, config)
            except (SamplingError, RuntimeError, ValueError, OverflowError) as error:
                result.failures[row] = f"sampling failed: {error}"
        return result

    @staticmethod
    def needs_host(configs: list[SamplingConfig]) -> bool:
        """True when a row draws from its request's CPU generator, so the host must see its logits."""
        return any(not config.greedy for config in configs)

    @staticmethod
    def greedy_on_device(logits: torch.Tensor) -> torch.Tensor:
        """logits [S, vocab] -> [S] int64 argmax ids, left on the logits' device (no host sync)."""
        return logits.argmax(dim=-1)

    def forget(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    def _generator(self, request_id: str, config: SamplingConfig) -> torch.Generator:
        generator = self._generators.get(request_id)
        if generator is None:
            generator = torch.Generator(device="cpu")
            if config.seed is None:
                generator.seed()
            else:
                generator.manual_seed(config.seed)
            self._generators[request_id] = generator
        return generator

    @staticmethod
    def _sample_row(logits: torch.Tensor, generator: torch.Generator, config: SamplingConfig) -> int:
        """logits [vocab] -> a token id drawn from the filtered, tempered distribution."""
        probs = tempered_probs(logits.detach().to("cpu", torch.float32), config.temperature, config.top_k)
        if config.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p; the first token always stays.
            outside = sorted_probs.cumsum(-1) - sorted_probs >= config.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator).item())


def tempered_probs(scores: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """scores [vocab] fp32 -> softmax(scores / temperature) over the top_k best, never NaN.

    Dividing raw logits by a tiny temperature overflows to inf and softmax(inf) is NaN. Shifting
    by the maximum first keeps every tempered score <= 0 with the best exactly 0, so the largest
    exponent is 1 and the sum is >= 1 for any temperature > 0: a vanishing temperature becomes
    the argmax (shared evenly among exact ties), a huge one becomes uniform.
    """
    if not temperature > 0:
        raise SamplingError(f"temperature must be > 0 to sample, got {temperature}")
    best = scores.max()
    if not torch.isfinite(best):
        raise SamplingError(f"logits row has no finite maximum ({best.item()})")
    if torch.isnan(scores).any():
        raise SamplingError("logits row contains NaN")
    scores = (scores - best) / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return torch.softmax(scores, dim=-1)
