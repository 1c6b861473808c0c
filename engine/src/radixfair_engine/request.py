"""A generation request as the engine tracks it, from arrival to finish."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Stands in output_ids for a token that was sampled on the device and not yet copied back
# (overlap scheduling). Never a valid id, so an embedding lookup of it fails loudly.
PLACEHOLDER_TOKEN = -1


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    # A failure inside a step that belongs to this request alone (its sampling or detokenizing);
    # the StepOutput that finishes it carries the error.
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """Validated sampling parameters of one request (see SamplingParams in the proto)."""

    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# Slotted, as SamplingConfig: a worker's engine process gets its requests through a pipe, and an
# ordinary instance that pickle rebuilds reads its fields about twice as slowly as one its
# constructor built (a materialized instance dict defeats CPython's specialized attribute reads);
# the engine reads them for every running request every step
# (tests/worker/test_engine_pipe_objects_slotted.py).
@dataclass(eq=False, slots=True)
class Request:
    """Engine-side state of one request.

    ``fill_ids`` (prompt plus tokens generated so far) is what must be in the
    KV cache before the next token can be sampled. After a preemption the
    whole of it is recomputed, minus whatever the radix cache still holds.

    With overlap scheduling the last ``pending_tokens`` entries of
    ``output_ids`` are PLACEHOLDER_TOKEN: sampled on the device, not yet
    known on the host. They count everywhere a token counts (lengths, what
    is left to compute), so scheduling runs one step ahead of the host.
    """

    request_id: str
    client_id: str
    prompt_ids: list[int]
    sampling: SamplingConfig
    weight: float = 1.0
    arrival_time: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    # Prompt tokens served from the prefix cache at first admission.
    num_cached_tokens: int = 0
    # Leading tokens of fill_ids whose K/V are in this request's pages.
    num_computed_tokens: int = 0
    # KV page ids backing fill_ids, in order.
    page_table: list[int] = field(default_factory=list)
    # Radix-tree node this request holds a lock on (owned by RadixCache).
    locked_node: Any = None
    # Leading tokens of fill_ids that have been inserted into the radix tree.
    num_inserted_tokens: int = 0
    # Trailing placeholders in output_ids (0, 1, or 2 while a step is both launched and resolving).
    pending_tokens: int = 0
    # The engine step at which it last joined the waiting queue (arrival or preemption).
    queued_step: int = 0
    times_admitted: int = 0
    preemptions: int = 0
    admitted_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    # Generated text with any stop string cut off, set when the request finishes.
    final_text: str = ""
    # Whether the engine detokenizes this request. The serving front takes the text of a request
    # with no stop strings off the engine's step (the engine has no text decision to make for it),
    # and its final_text then stays "".
    text_in_engine: bool = True
    # Read for every running request every step, so set once when the engine takes the request
    # (OutputProcessor.open) instead of derived per token: the most tokens it may generate
    # (max_tokens, or what the context window leaves after the prompt), and the ids that stop it.
    output_limit: int = 0
    stop_token_set: frozenset[int] = frozenset()
    # The prompt's page chain (page size, chain), made once on first use (``prompt_page_chain``):
    # the in-batch prefix hold reads it for waiting requests every step.
    _prompt_chain: tuple[int, tuple[int, ...]] | None = field(default=None, repr=False)

    def prompt_page_chain(self, page_size: int) -> tuple[int, ...]:
        """``page_chain`` of the prompt (it never changes, so it is computed once)."""
        cached = self._prompt_chain
        if cached is None or cached[0] != page_size:
            cached = (page_size, page_chain(self.prompt_ids, page_size))
            self._prompt_chain = cached
        return cached[1]

    @property
    def fill_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """``fill_ids[start:end]`` without building fill_ids."""
        split = len(self.prompt_ids)
        if start >= split:
            return self.output_ids[start - split : end - split]
        if end <= split:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[: end - split]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_known_tokens(self) -> int:
        """Leading tokens of fill_ids whose ids the host knows (all but the placeholders)."""
        return self.num_tokens - self.pending_tokens

    @property
    def tokens_to_compute(self) -> int:
        """Tokens of fill_ids whose K/V are still missing: 1 while decoding, more in prefill."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


def page_chain(token_ids: Sequence[int], page_size: int) -> tuple[int, ...]:
    """One int per full page of ``token_ids``: entry k stands for the first k + 1 pages together.

    Two sequences' entries k are equal exactly when their first k + 1 pages are (up to a 64-bit
    hash collision), so how many leading pages two sequences share is a membership question, one
    set lookup per page count instead of comparing pages. Python's int and tuple hashes are not
    salted per process, so a chain is the same in every process.
    """
    chain: list[int] = []
    link = 0
    for start in range(0, len(token_ids) - len(token_ids) % page_size, page_size):
        link = hash((link, tuple(token_ids[start : start + page_size])))
        chain.append(link)
    return tuple(chain)
