"""The teacher writes its answers through the worker's own engine: continuous batching, paged KV.

``generation.generate`` (a Hugging Face forward per token, 8 prompts at a time) is fine for a few
hundred prompts; tens of thousands need the serving engine, which on a GPU (Triton kernels, CUDA
graphs, bf16) decodes ~100k tokens/s at batch 128. The answers are the same greedy tokens: each
request is greedy, stops after the first end-of-sequence token (kept, as ``generate`` keeps it) or
at ``max_new_tokens``, and the engine's batching never changes a request's arithmetic on the CPU
(tests/distiller/test_engine_answers.py compares the two token for token).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from radixfair.errors import QueueFullError
from radixfair_worker.config import EngineConfig, SchedulerConfig
from radixfair_worker.engine_builder import build_engine
from radixfair_worker.request import Request, SamplingConfig


@dataclass(frozen=True)
class AnswerEngineConfig:
    """Where and how the teacher's engine runs (torch backend on the CPU, triton on a GPU)."""

    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "torch"
    max_running_requests: int = 128
    num_pages: int = 4096
    page_size: int = 16
    max_batched_tokens: int = 4096
    cuda_graph_max_batch: int = 128

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            page_size=self.page_size,
            num_pages=self.num_pages,
            max_running_requests=self.max_running_requests,
            max_batched_tokens=self.max_batched_tokens,
            max_waiting_requests=4 * self.max_running_requests,
            device=self.device,
            dtype=self.dtype,
            backend=self.backend,
            cuda_graph_max_batch=self.cuda_graph_max_batch if self.device.startswith("cuda") else 0,
            # First come, first served: one client, and the answers never depend on the order.
            scheduler=SchedulerConfig(policy="fcfs"),
        )


class EngineAnswerer:
    """Greedy answers to batches of token prompts, from one engine kept for its whole life."""

    def __init__(self, model_dir: Path, config: AnswerEngineConfig) -> None:
        self.config = config
        self.stack = build_engine(config.engine_config(), model_dir)
        self.generated_tokens = 0
        self.seconds = 0.0  # spent inside ``answer``: tokens / seconds is the engine's rate

    def answer(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        eos_token_id: int | None,
        on_finished: Callable[[int], None] | None = None,
    ) -> list[list[int]]:
        """New tokens per prompt (the first ``eos_token_id`` included, then it stops), in order."""
        started = time.monotonic()
        engine = self.stack.engine
        sampling = SamplingConfig(
            max_tokens=max_new_tokens,
            temperature=0.0,
            # Only the given end-of-sequence token stops an answer, as in generation.generate
            # (the engine would also stop at the model config's own, which may differ).
            stop_token_ids=(eos_token_id,) if eos_token_id is not None else (),
            ignore_eos=True,
        )
        requests = [Request(f"answer-{i}", "teacher", list(p), sampling) for i, p in enumerate(prompts)]
        backlog = deque(requests)
        finished = 0
        while backlog or engine.has_work():
            # Keep the engine's waiting queue full; what does not fit waits here for a later step.
            while backlog:
                try:
                    engine.submit(backlog[0])
                except QueueFullError:
                    break
                backlog.popleft()
            for output in engine.step():
                if not output.finished:
                    continue
                if output.error is not None:
                    raise RuntimeError(f"teacher answer {output.request.request_id} failed: {output.error}")
                finished += 1
                if on_finished is not None:
                    on_finished(finished)
        answers = [list(r.output_ids) for r in requests]
        self.generated_tokens += sum(len(a) for a in answers)
        self.seconds += time.monotonic() - started
        return answers


@dataclass(frozen=True)
class AnswerSource:
    """What writes the teacher's answers for ``prepare_data``: its answer, batch and cache tag."""

    answer: Callable[[list[list[int]], int, int | None], list[list[int]]] | None
    batch: int
    tag: str


def answer_source(teacher_answers: str, teacher_dir: Path, device: str) -> AnswerSource:
    """``generate`` (Hugging Face, 8 prompts at a time) or ``engine`` (the worker's engine, built lazily).

    The engine runs Triton kernels in bf16 with CUDA graphs on a GPU and the torch backend in fp32
    elsewhere; it is built only when an answer is missing from the cache, so a rank that reads a
    cache rank 0 filled never allocates one.
    """
    if teacher_answers == "generate":
        return AnswerSource(None, 8, "")
    cuda = device.startswith("cuda")
    config = (
        AnswerEngineConfig(
            device=device,
            dtype="bfloat16",
            backend="triton",
            max_running_requests=256,
            num_pages=16384,
            max_batched_tokens=8192,
            cuda_graph_max_batch=256,
        )
        if cuda
        else AnswerEngineConfig(device=device)
    )
    built: list[EngineAnswerer] = []

    def answer(prompts: list[list[int]], max_new_tokens: int, eos_token_id: int | None) -> list[list[int]]:
        if not built:
            built.append(EngineAnswerer(teacher_dir, config))
        return built[0].answer(prompts, max_new_tokens, eos_token_id)

    return AnswerSource(answer, 4096, f"-engine-{config.dtype}")
