"""A job's progress events: appended by the job thread, persisted, and followed by async watchers.

Events are numbered from 0 without gaps and written to events.jsonl as they
happen, so a watcher that connects late, or to a restarted distiller, sees
the whole history before the live events.
"""

from __future__ import annotations

import asyncio
import enum
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    sequence: int
    state: JobState
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    eta_seconds: float = 0.0
    message: str = ""
    time: float = 0.0
    # Artifact names, on the final event of a successful job.
    artifacts: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "state": self.state.value, "artifacts": list(self.artifacts)})

    @classmethod
    def from_json(cls, line: str) -> JobEvent:
        raw = json.loads(line)
        return cls(**{**raw, "state": JobState(raw["state"]), "artifacts": tuple(raw["artifacts"])})


class EventLog:
    """The events of one job. ``append`` is thread-safe; ``follow`` is for asyncio watchers."""

    def __init__(self, job_id: str, path: Path) -> None:
        self.job_id = job_id
        self._path = path
        self._lock = threading.Lock()
        self._events: list[JobEvent] = _read(path)
        text = path.read_text() if path.exists() else ""
        if text and (not text.endswith("\n") or len(text.splitlines()) != len(self._events)):
            # A crash cut the last line short: keep the whole lines, so appends start clean.
            path.write_text("".join(event.to_json() + "\n" for event in self._events))
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def append(self, state: JobState, **fields: object) -> JobEvent:
        with self._lock:
            event = JobEvent(self.job_id, len(self._events), state, time=time.time(), **fields)  # type: ignore[arg-type]
            with self._path.open("a") as handle:
                handle.write(event.to_json() + "\n")
            self._events.append(event)
            waiters = list(self._waiters)
        for loop, wake in waiters:
            loop.call_soon_threadsafe(wake.set)
        return event

    def since(self, sequence: int) -> list[JobEvent]:
        with self._lock:
            return self._events[sequence:]

    @property
    def last(self) -> JobEvent | None:
        with self._lock:
            return self._events[-1] if self._events else None

    async def follow(self) -> AsyncIterator[JobEvent]:
        """Every event from the first; ends after the first terminal one."""
        loop = asyncio.get_running_loop()
        sequence = 0
        while True:
            wake = asyncio.Event()
            with self._lock:
                self._waiters.append((loop, wake))
            try:
                for event in self.since(sequence):
                    yield event
                    sequence = event.sequence + 1
                    if event.state.is_terminal:
                        return
                await wake.wait()
            finally:
                with self._lock:
                    self._waiters.remove((loop, wake))


def _read(path: Path) -> list[JobEvent]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            event = JobEvent.from_json(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            break  # a line cut short by a crash is the last one
        events.append(replace(event, sequence=len(events)))
    return events
