"""The messages between a worker's serving front and its engine process.

The front sends commands (submit, abort, report state, stop) in lists, one
message for whatever queued up meanwhile; the engine sends what each step
produced as ONE ``StepBatch``: an update per request
that advanced, ended or was refused, and, when asked, its load state.
Every request is named by the worker-internal id the front gave it, never
by the caller's request id, so two callers that pick the same id can never
see each other's tokens.

Everything here is pickled across a pipe, so it holds plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from radixfair.errors import RadixfairError
from radixfair_worker.config import EngineConfig
from radixfair_worker.engine_outputs import LoadSnapshot
from radixfair_worker.request import FinishReason, Request


@dataclass(frozen=True)
class EngineSpec:
    """What the engine process needs to build its engine."""

    engine: EngineConfig
    model_dir: Path
    # CPU threads for torch's intra-op pool; 0 keeps torch's default.
    torch_threads: int = 0


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


class RequestUpdate(NamedTuple):
    """What one step did to one request.

    ``end`` is None while the request runs, its RequestOutcome when it finished, or the
    RadixfairError that ended it (refused at submit, or its step failed).
    """

    request_id: str
    token_ids: list[int]
    text: str
    end: RequestOutcome | RadixfairError | None = None


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
    """Everything the engine hands the front at once: the updates of one or more steps."""

    updates: list[RequestUpdate] = field(default_factory=list)
    state: PublishedState | None = None

    def merge(self, later: StepBatch) -> None:
        """Appends a later batch (the sender coalesces batches the pipe has not taken yet)."""
        self.updates.extend(later.updates)
        if later.state is not None:
            self.state = later.state
