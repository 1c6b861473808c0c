"""A workload trace: requests with arrival times, prompts described by segments, and dependencies.

A prompt is a list of segments rather than token ids, so a trace of ten
thousand clients stays a few megabytes and every replay builds the same
tokens (``bench.workloads.tokens``). Two requests share a prefix exactly when
their segment lists share leading segments. A request may wait for another
(``after``): the next turn of a conversation is released ``think_s`` after
the previous turn finishes, so a replay keeps the conversation's order on
any policy while its timing follows the system under test.

JSONL layout: one header line ``{"trace": {...}}`` (name, seed, the spec
that built it), then one request per line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class Segment:
    """``length`` tokens: "text" (pseudo-random from ``key``) or "answer" (request ``key``'s output)."""

    kind: str
    key: str
    length: int


@dataclass(frozen=True)
class TraceRequest:
    request_id: str
    client_id: str
    weight: float
    # Seconds from trace start; for a request with ``after``, the earliest release time.
    arrival_s: float
    prompt: tuple[Segment, ...]
    max_tokens: int
    # Released only once this request has finished, ``think_s`` later.
    after: str | None = None
    think_s: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return sum(s.length for s in self.prompt)


@dataclass(frozen=True)
class Trace:
    name: str
    seed: int
    requests: tuple[TraceRequest, ...]
    # Free-form description of how the trace was built (pattern parameters).
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def clients(self) -> list[str]:
        return sorted({r.client_id for r in self.requests})

    def weights(self) -> dict[str, float]:
        return {r.client_id: r.weight for r in self.requests}


def save_trace(trace: Trace, path: Path) -> None:
    """Writes JSONL (gzip-compressed when the name ends in .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open(path, "wt") as out:
        out.write(json.dumps({"trace": {"name": trace.name, "seed": trace.seed, "spec": trace.spec}}) + "\n")
        for request in trace.requests:
            out.write(json.dumps(_request_record(request), separators=(",", ":")) + "\n")


def load_trace(path: Path) -> Trace:
    with _open(path, "rt") as lines:
        header = json.loads(next(lines))["trace"]
        requests = tuple(_parse_request(json.loads(line)) for line in lines if line.strip())
    return Trace(header["name"], int(header["seed"]), requests, header.get("spec", {}))


def iter_by_arrival(requests: Iterable[TraceRequest]) -> Iterator[TraceRequest]:
    yield from sorted(requests, key=lambda r: (r.arrival_s, r.request_id))


def _request_record(request: TraceRequest) -> dict[str, Any]:
    record = asdict(request)
    record["prompt"] = [[s.kind, s.key, s.length] for s in request.prompt]
    if request.after is None:
        del record["after"], record["think_s"]
    return record


def _parse_request(record: dict[str, Any]) -> TraceRequest:
    return TraceRequest(
        request_id=record["request_id"],
        client_id=record["client_id"],
        weight=float(record["weight"]),
        arrival_s=float(record["arrival_s"]),
        prompt=tuple(Segment(kind, key, int(length)) for kind, key, length in record["prompt"]),
        max_tokens=int(record["max_tokens"]),
        after=record.get("after"),
        think_s=float(record.get("think_s", 0.0)),
    )


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")
