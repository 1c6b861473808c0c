"""What the engine hands out: one step's output per request, and snapshots of its load."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixfair.errors import RadixfairError
from radixfair_engine.request import Request


@dataclass
class StepOutput:
    """What one step produced for one request.

    ``error`` is set (with ``finished``) when the step failed for this request alone: the engine
    has already aborted it and freed its pages, the rest of the batch carried on, and its stream
    should end with ``error.code`` and ``str(error)`` instead of a result.
    """

    request: Request
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    error: RadixfairError | None = None


@dataclass
class ClientStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class StepStats:
    """What the engine loop did since it started: steps, their rows, and where their time went.

    ``prefill_steps``: steps with a prefill chunk (run launch by launch; a decode-only step replays a
    CUDA graph where the runner has them); ``sampled_rows``: tokens sampled, so ``sampled_rows /
    steps`` is the mean batch; ``step_s``: wall seconds inside ``Engine.step``; ``device_wait_s``: the
    part of it spent blocked on the device for sampled ids (the rest is host work). Seconds are
    ``time.perf_counter`` intervals, whatever clock stamps the requests.
    """

    steps: int = 0
    prefill_steps: int = 0
    sampled_rows: int = 0
    step_s: float = 0.0
    device_wait_s: float = 0.0


@dataclass(frozen=True)
class LoadSnapshot:
    queue_length: int
    running_requests: int
    running_tokens: int
    free_pages: int
    total_pages: int
    cached_pages: int
    cache_hit_rate: float
    client_stats: dict[str, ClientStats] = field(default_factory=dict)
    step_stats: StepStats = field(default_factory=StepStats)
