"""A StepRunner for the real Engine that computes no model: it charges virtual time and emits known tokens.

The engine calls ``forward(chunks)`` exactly as it calls the model runner,
so batching, the radix cache, page accounting, preemption and the policy are
the engine's own code. This runner only (a) advances the worker's virtual
clock by the cost model's time for the step and (b) returns logits whose
argmax is the token the trace says the request generates next
(``bench.workloads.tokens.answer_tokens``), so a conversation's next turn
finds its previous answer in the cache, as it would on a real model.
"""

from __future__ import annotations

import torch

from bench.simulator.cost_model import StepCostModel
from bench.workloads.tokens import ANSWER_VOCAB, answer_tokens
from radixfair_engine.model_runner import SamplingRunner, ScheduledChunk


class VirtualClock:
    """A worker's clock; the simulator sets it when a step starts, the runner advances it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SimulatedRunner(SamplingRunner):
    """StepRunner with ``page_size`` x ``num_pages`` tokens of simulated KV memory."""

    def __init__(self, page_size: int, num_pages: int, cost: StepCostModel, clock: VirtualClock) -> None:
        super().__init__()
        self.page_size = page_size
        self._num_pages = num_pages
        self._cost = cost
        self._clock = clock
        self._answers: dict[str, tuple[int, ...]] = {}
        self.busy_seconds = 0.0
        self.steps = 0
        self.tokens = 0

    @property
    def num_pages(self) -> int:
        return self._num_pages

    def forget(self, request_id: str) -> None:
        super().forget(request_id)
        self._answers.pop(request_id, None)

    def forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        seconds = self._cost.step_seconds([c.start for c in chunks], [c.length for c in chunks])
        self._clock.now += seconds
        self.busy_seconds += seconds
        self.steps += 1
        self.tokens += sum(c.length for c in chunks)
        rows = [self._next_token(c) for c in chunks if c.completes_fill]
        logits = torch.zeros(len(rows), ANSWER_VOCAB)
        if rows:
            logits[torch.arange(len(rows)), torch.tensor(rows)] = 1.0
        return logits

    def _next_token(self, chunk: ScheduledChunk) -> int:
        request = chunk.request
        answer = self._answers.get(request.request_id)
        if answer is None:
            answer = self._answers[request.request_id] = answer_tokens(
                request.request_id, request.sampling.max_tokens
            )
        return answer[len(request.output_ids)]
