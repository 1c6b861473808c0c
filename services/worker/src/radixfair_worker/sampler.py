"""Picks each request's next token from its logits row."""

from __future__ import annotations

import torch

from radixfair_worker.request import SamplingConfig


class Sampler:
    """Greedy, temperature, top-k and top-p sampling with a seeded generator per request.

    Greedy rows are decided together by one argmax; sampled rows each use
    their request's own ``torch.Generator`` so a seeded request draws the
    same tokens whatever else shares its batch.
    """

    def __init__(self) -> None:
        self._generators: dict[str, torch.Generator] = {}

    def sample(
        self, logits: torch.Tensor, request_ids: list[str], configs: list[SamplingConfig]
    ) -> list[int]:
        """logits [S, vocab] fp32 -> one token id per row."""
        tokens = logits.argmax(dim=-1).tolist()
        for row, (request_id, config) in enumerate(zip(request_ids, configs)):
            if not config.greedy:
                tokens[row] = self._sample_row(logits[row], self._generator(request_id, config), config)
        return tokens

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
        scores = logits.detach().to("cpu", torch.float32) / config.temperature
        if 0 < config.top_k < scores.shape[-1]:
            kth = torch.topk(scores, config.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if config.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p; the first token always stays.
            outside = sorted_probs.cumsum(-1) - sorted_probs >= config.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator).item())
