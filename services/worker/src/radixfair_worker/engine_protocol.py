"""The messages between a worker's serving front and its engine process.

The front sends commands (submit, abort, report state, stop) in lists, one
message for whatever queued up meanwhile; the engine sends what each step
produced as ONE ``StepBatch``: a row per request that advanced, ended or was
refused, and, when asked, its load state. Every request is named by the
worker-internal id the front gave it (``worker_request_id``), never by the
caller's request id, so two callers that pick the same id can never see each
other's tokens; on the way back a row names it by that id's small int key.

A step batch is columnar (parallel lists of ints, not an object per row): at
256 rows a step, each microsecond per row costs the engine a quarter of a
millisecond a step, and pickling, unpickling and fanning out one Python
object per row was the engine process's largest serving cost.

Everything here is pickled across a pipe, so it holds plain data only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from radixfair.errors import RadixfairError
from radixfair_engine.config import EngineConfig
from radixfair_engine.engine_outputs import LoadSnapshot
from radixfair_engine.request import FinishReason, Request


@dataclass(frozen=True)
class EngineSpec:
    """What the engine process needs to build its engine."""

    engine: EngineConfig
    model_dir: Path
    # CPU threads for torch's intra-op pool; 0 keeps torch's default.
    torch_threads: int = 0
    # sys.setswitchinterval of the engine process, seconds; 0 keeps Python's default.
    switch_interval_s: float = 0.0
    # How commands come in and batches go out: "threads" or "inline" (engine_loop.EngineLoop).
    pipe_io: str = "threads"


# -- front -> engine ------------------------------------------------------


@dataclass(frozen=True)
class SubmitRequest:
    """``request.request_id`` is already the worker-internal id."""

    request: Request


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class ReportState:
    """Asks for a PublishedState in the next batch (the digest walk is rate limited)."""


# Sent instead of a command to stop the engine process.
STOP = None


# -- engine -> front ------------------------------------------------------


@dataclass(frozen=True)
class EngineReady:
    """The engine is built; the front needs these to validate and report."""

    page_size: int
    max_context_tokens: int


@dataclass(frozen=True)
class EngineStartFailed:
    message: str


@dataclass(frozen=True)
class RequestOutcome:
    """How a finished request ended, with the engine's counts and timestamps (time.monotonic)."""

    finish_reason: FinishReason | None
    cached_tokens: int
    completion_tokens: int
    preemptions: int
    admitted_time: float | None
    first_token_time: float | None
    finished_time: float | None
    # Generated text with any stop string cut off.
    text: str

    @classmethod
    def of(cls, request: Request) -> RequestOutcome:
        return cls(
            finish_reason=request.finish_reason,
            cached_tokens=request.num_cached_tokens,
            completion_tokens=len(request.output_ids),
            preemptions=request.preemptions,
            admitted_time=request.admitted_time,
            first_token_time=request.first_token_time,
            finished_time=request.finished_time,
            text=request.final_text,
        )


RequestEnd = RequestOutcome | RadixfairError


class RequestUpdate(NamedTuple):
    """What one step did to one request: one row of a StepBatch, as ``StepBatch.rows`` reads it back.

    ``end`` is None while the request runs, its RequestOutcome when it finished, or the
    RadixfairError that ended it (refused at submit, or its step failed).
    """

    key: int
    token_ids: list[int]
    text: str
    end: RequestEnd | None = None


def worker_request_id(key: int) -> str:
    """The worker-internal request id the front gives the request it keys ``key``."""
    return f"r{key}"


def request_key(request_id: str) -> int:
    """The key of a worker-internal request id (the inverse of ``worker_request_id``)."""
    return int(request_id[1:])


@dataclass(frozen=True)
class PublishedState:
    """Load and cache contents for load reports and gauges."""

    snapshot: LoadSnapshot
    digest: list[int]
    client_service: dict[str, float]
    # Fairness state of the policies that keep some (DLPM deficits, VTC counters).
    deficits: dict[str, float]
    virtual_counters: dict[str, float]
    refills: int


@dataclass
class StepBatch:
    """Everything the engine hands the front at once: the rows of one or more steps, in order.

    Row ``i`` is request ``keys[i]``; its token ids are the next ``counts[i]`` of ``token_ids``
    (one each while ``counts`` is None: a decode step), its text ``texts[i]`` ("" each while
    ``texts`` is None: the front makes the text), and its end the one ``ends`` pairs with ``i``
    (row indices ascending). A row with an end may still carry the tokens and text before it.
    """

    keys: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    counts: list[int] | None = None
    texts: list[str] | None = None
    ends: list[tuple[int, RequestEnd]] = field(default_factory=list)
    state: PublishedState | None = None

    @classmethod
    def of(cls, updates: Iterable[RequestUpdate], state: PublishedState | None = None) -> StepBatch:
        batch = cls(state=state)
        for update in updates:
            batch.add(*update)
        return batch

    def add(self, key: int, token_ids: list[int], text: str = "", end: RequestEnd | None = None) -> None:
        """Appends one row (the general case: any token count, text or end)."""
        row = len(self.keys)
        if self.counts is None and len(token_ids) != 1:
            self.counts = [1] * row
        if self.counts is not None:
            self.counts.append(len(token_ids))
        if self.texts is None and text:
            self.texts = [""] * row
        if self.texts is not None:
            self.texts.append(text)
        self.keys.append(key)
        self.token_ids.extend(token_ids)
        if end is not None:
            self.ends.append((row, end))

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self) -> Iterator[RequestUpdate]:
        """Every row, in order, one object each (the front's fan-out takes a faster path)."""
        counts = self.counts if self.counts is not None else itertools.repeat(1)
        texts = self.texts if self.texts is not None else itertools.repeat("")
        ends = dict(self.ends)
        start = 0
        for row, (key, count, text) in enumerate(zip(self.keys, counts, texts)):
            yield RequestUpdate(key, self.token_ids[start : start + count], text, ends.get(row))
            start += count

    def merge(self, later: StepBatch) -> None:
        """Appends a later batch (the sender coalesces batches the pipe has not taken yet)."""
        rows, later_rows = len(self.keys), len(later.keys)
        if self.counts is not None or later.counts is not None:
            self.counts = (self.counts or [1] * rows) + (later.counts or [1] * later_rows)
        if self.texts is not None or later.texts is not None:
            self.texts = (self.texts or [""] * rows) + (later.texts or [""] * later_rows)
        self.keys.extend(later.keys)
        self.token_ids.extend(later.token_ids)
        self.ends.extend([(rows + row, end) for row, end in later.ends])
        if later.state is not None:
            self.state = later.state
