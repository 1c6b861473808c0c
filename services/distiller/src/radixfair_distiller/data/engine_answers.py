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
from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine_builder import build_engine
from radixfair_engine.request import Request, SamplingConfig


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
    # Admission in waves: below 1.0, new prompts go in only once the unfinished requests in the engine
    # have fallen to this share of max_running_requests, and then fill every running slot at once (no
    # waiting queue). On a GPU only pure decode steps replay CUDA graphs; a prompt admitted whenever
    # an answer ends (every step or two at batch 256) makes almost every step an eager mixed
    # prefill + decode step. 1.0: admit whenever a slot frees, with a quarter more waiting.
    refill_at: float = 1.0

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


@dataclass(frozen=True)
class AnswerBudget:
    """When the answerer stops taking prompts: after ``max_tokens`` answer tokens or at ``stop_at``.

    ``stop_at`` is a ``time.monotonic()`` instant. Both are checked before each prompt is handed to
    the engine; the prompts already in it are answered to the end (at most the engine's running
    requests plus a quarter more, each at most ``max_new_tokens`` long), so the answers are always a
    prefix of the prompts and the overshoot is one round of decoding. The first ``min_prompts`` prompts
    are always answered (the hand-written held-out ones come first: a run whose set-up ate the time
    still has prompts to evaluate on).
    """

    max_tokens: int | None = None
    stop_at: float | None = None
    min_prompts: int = 0

    def spent(self, tokens: int, prompts_started: int) -> bool:
        if prompts_started < self.min_prompts:
            return False
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return True
        return self.stop_at is not None and time.monotonic() >= self.stop_at


class EngineAnswerer:
    """Greedy answers to batches of token prompts, from one engine kept for its whole life.

    With a ``budget`` the answers may stop early (see AnswerBudget): ``answer`` then returns the
    answers of a prefix of its prompts, and ``budget_spent`` turns true. ``on_progress(prompts
    answered, answer tokens, seconds)`` is called about every ``progress_every_s`` seconds.
    """

    def __init__(
        self,
        model_dir: Path,
        config: AnswerEngineConfig,
        budget: AnswerBudget = AnswerBudget(),
        on_progress: Callable[[int, int, float], None] | None = None,
        progress_every_s: float = 10.0,
    ) -> None:
        self.config = config
        self.budget = budget
        self.stack = build_engine(config.engine_config(), model_dir)
        self.generated_tokens = 0
        self.answered = 0
        self.budget_spent = False
        self.refills = 0  # rounds of admission (a wave each when config.refill_at < 1)
        self.seconds = 0.0  # spent inside ``answer``: tokens / seconds is the engine's rate
        self._on_progress = on_progress
        self._progress_every_s = progress_every_s

    def _admission(self) -> tuple[int, int]:
        """(most requests in the engine at once, the count at or below which prompts are admitted)."""
        running = self.config.max_running_requests
        if self.config.refill_at >= 1.0:
            # Every running slot and a quarter more waiting, so the engine never idles between
            # rounds and a spent budget leaves little queued behind it.
            limit = running + max(1, running // 4)
            return limit, limit - 1
        return running, min(running - 1, int(self.config.refill_at * running))

    def answer(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        eos_token_id: int | None,
        on_finished: Callable[[int], None] | None = None,
    ) -> list[list[int]]:
        """New tokens per prompt (the first ``eos_token_id`` included, then it stops), in order.

        Fewer answers than prompts (those of the first ones) when the budget ran out.
        """
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
        in_engine_limit, low_water = self._admission()
        submitted = finished = 0
        tokens = self.generated_tokens
        next_report = started + self._progress_every_s
        while backlog or engine.has_work():
            if backlog and self.budget.spent(tokens, self.answered + submitted):
                self.budget_spent = True
                backlog.clear()  # the prompts already in the engine are answered; no more start
            if backlog and submitted - finished <= low_water:
                self.refills += 1
                while backlog and submitted - finished < in_engine_limit:
                    try:
                        engine.submit(backlog[0])
                    except QueueFullError:
                        break
                    backlog.popleft()
                    submitted += 1
            for output in engine.step():
                if not output.finished:
                    continue
                if output.error is not None:
                    raise RuntimeError(f"teacher answer {output.request.request_id} failed: {output.error}")
                finished += 1
                tokens += len(output.request.output_ids)
                if on_finished is not None:
                    on_finished(finished)
            if self._on_progress is not None and time.monotonic() >= next_report:
                next_report += self._progress_every_s
                self._on_progress(self.answered + finished, tokens, self.seconds + time.monotonic() - started)
        answers = [list(r.output_ids) for r in requests[:submitted]]
        self.generated_tokens += sum(len(a) for a in answers)
        self.answered += len(answers)
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
            refill_at=0.5,
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
