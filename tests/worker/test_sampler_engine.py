"""Sampled traffic through the real engine on a tiny random Llama: overlap stays on, failures stay alone.

Sampling runs on the logits' device, so a step with temperature/top-p rows is
launched without the host reading its ids: the request's newest token is
still a placeholder when ``step`` returns. A row the device cannot sample
(a logits row with NaN), greedy or sampled, fails its own request in the
drain, and the batch around it carries on.
"""

from __future__ import annotations

import math
import uuid

import grpc
import pytest
import torch
from worker.engine_harness import greedy, make_stack, run_to_completion

from radixfair_engine.model_runner import CarriedTokens, SamplingRunner, ScheduledChunk
from radixfair_engine.request import FinishReason

PROMPT = [101, 202, 303, 404, 505, 606]
BYSTANDER_PROMPT = [7, 8, 9, 10, 11]


def test_a_sampled_step_stays_in_flight_under_overlap(tiny_model_dir):
    engine = make_stack(tiny_model_dir, num_pages=64, page_size=4, overlap_schedule=True).engine
    sampled = greedy(PROMPT, 6, "sampled", temperature=0.7, top_p=0.9, seed=11, ignore_eos=True)
    engine.submit(sampled)

    for step in range(3):
        engine.step()
        # Launched and not read: the host has a placeholder for the token this step sampled.
        assert sampled.pending_tokens == 1, f"step {step} was read back at once (overlap off)"
        assert len(sampled.output_ids) == step + 1

    run_to_completion(engine, [])
    assert sampled.finish_reason is FinishReason.LENGTH and len(sampled.output_ids) == 6
    assert -1 not in sampled.output_ids


def test_the_model_runner_owns_the_seeds_of_unseeded_requests_until_they_finish(tiny_model_dir):
    """The runner samples (issue 17.2): an unseeded sampled request draws from a seed the runner's
    sampler keeps while it runs, and the engine has it forgotten when the request ends, however."""
    engine = make_stack(tiny_model_dir, num_pages=64, page_size=4, overlap_schedule=True).engine
    seeds = engine.runner.sampler._random_seeds
    finishing = greedy(PROMPT, 3, "finishing", temperature=0.9, ignore_eos=True)
    aborted = greedy(BYSTANDER_PROMPT, 50, "aborted", temperature=0.9, ignore_eos=True)
    for request in (finishing, aborted):
        engine.submit(request)
    engine.step()
    engine.step()
    assert {"finishing", "aborted"} <= set(seeds)
    for _ in range(20):
        if finishing.is_finished:
            break
        engine.step()
    assert finishing.is_finished and not aborted.is_finished
    assert "finishing" not in seeds and "aborted" in seeds
    engine.abort("aborted")
    run_to_completion(engine, [])
    assert aborted.finish_reason is FinishReason.CANCELLED and not seeds


class PoisonedRows(SamplingRunner):
    """The real model runner, with the logits rows of the named requests set to NaN.

    Stands in for a model whose output for one sequence is broken (which random weights do not
    produce on demand); the engine must then fail that request alone.
    """

    def __init__(self, runner, poisoned: set[str]) -> None:
        super().__init__(runner.sampler)
        self._runner = runner
        self._poisoned = poisoned
        self.page_size = runner.page_size

    @property
    def num_pages(self) -> int:
        return self._runner.num_pages

    def forward(self, chunks: list[ScheduledChunk], carry: CarriedTokens | None = None) -> torch.Tensor:
        logits = self._runner.forward(chunks) if carry is None else self._runner.forward(chunks, carry)
        sampled = [c for c in chunks if c.completes_fill]
        rows = [c.request.request_id in self._poisoned for c in sampled]
        # Out of place: the model's logits are inference tensors.
        poison = torch.tensor(rows, device=logits.device)[:, None]
        return torch.where(poison, torch.full_like(logits, math.nan), logits)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["sampled", "greedy"])
def test_a_row_the_device_cannot_sample_fails_its_request_alone(tiny_model_dir, overlap, temperature):
    stack = make_stack(tiny_model_dir, num_pages=64, page_size=4, overlap_schedule=overlap)
    engine = stack.engine
    alone = greedy(BYSTANDER_PROMPT, 8, uuid.uuid4().hex, client="bystander", ignore_eos=True)
    run_to_completion(engine, [alone])
    engine.runner = PoisonedRows(engine.runner, {"poisoned"})
    bystander = greedy(BYSTANDER_PROMPT, 8, uuid.uuid4().hex, client="bystander", ignore_eos=True)
    # A greedy row too: argmax would return the NaN's index as if it were a token.
    poisoned = greedy(PROMPT, 8, "poisoned", temperature=temperature, seed=5, ignore_eos=True)
    engine.submit(bystander)
    engine.step()  # the bystander is decoding (with overlap, its token still on the device)
    engine.submit(poisoned)

    failures = []
    for _ in range(100):
        if not engine.has_work():
            break
        failures += [o for o in engine.step() if o.request is poisoned]

    [failure] = failures
    assert failure.finished and failure.error is not None
    assert failure.error.code is grpc.StatusCode.INTERNAL and "no finite maximum" in str(failure.error)
    assert poisoned.finish_reason is FinishReason.ERROR and poisoned.output_ids == []
    assert bystander.output_ids == alone.output_ids and bystander.finish_reason is FinishReason.LENGTH
    assert not engine.running and not engine.waiting
    assert engine.allocator.num_free + engine.cache.cached_pages == engine.allocator.num_pages
