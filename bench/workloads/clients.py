"""Client specs and the requests one client sends.

A client has a weight, an arrival process, a window in which it is active
(so clients can join and leave), per-request prompt and output lengths, and
a prefix structure:

- ``shared_prefix_len`` > 0: every request starts with one of the client's
  ``num_documents`` long documents (a system prompt, or a document asked
  about), then a unique question;
- ``turns`` set: each arrival opens a conversation whose later turns repeat
  the whole previous turn (prompt and answer) and add a new question, so the
  conversation grows its own prefix; a turn is released ``think_s`` after
  the previous turn finishes.
- ``drift_every`` > 0: the shared prefix drifts, a new document every that
  many requests (a system prompt that is edited, a corpus that rolls over).

``pause`` = (a, b) keeps the client idle from a to b: the client that goes
away and comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.workloads.distributions import ArrivalProcess, Constant, LengthDistribution
from bench.workloads.trace import Segment, TraceRequest


@dataclass(frozen=True)
class ClientSpec:
    client_id: str
    arrivals: ArrivalProcess
    question_len: LengthDistribution
    output_len: LengthDistribution
    weight: float = 1.0
    shared_prefix_len: int = 0
    num_documents: int = 1
    # Turns per conversation; None for single-turn requests.
    turns: LengthDistribution | None = None
    think_s: float = 0.0
    start_s: float = 0.0
    # None: active until the workload's end.
    end_s: float | None = None
    # A new document every this many requests (0: the documents do not drift).
    drift_every: int = 0
    # No arrivals in [pause[0], pause[1]); None: no pause.
    pause: tuple[float, float] | None = None


def client_requests(spec: ClientSpec, rng: np.random.Generator, duration_s: float) -> list[TraceRequest]:
    """Every request ``spec`` sends within its active window, conversations expanded into turns."""
    end = duration_s if spec.end_s is None else min(spec.end_s, duration_s)
    requests: list[TraceRequest] = []
    times = spec.arrivals.times(rng, spec.start_s, end)
    if spec.pause is not None:
        times = [t for t in times if not spec.pause[0] <= t < spec.pause[1]]
    for index, arrival in enumerate(times):
        head = _document(spec, rng, index)
        if spec.turns is None:
            requests.append(_single(spec, rng, f"{spec.client_id}-r{index:05d}", arrival, head))
        else:
            requests += _conversation(spec, rng, index, arrival, head)
    return requests


def _document(spec: ClientSpec, rng: np.random.Generator, index: int) -> tuple[Segment, ...]:
    if spec.shared_prefix_len <= 0:
        return ()
    if spec.drift_every > 0:
        return (Segment("text", f"{spec.client_id}/doc{index // spec.drift_every}", spec.shared_prefix_len),)
    doc = int(rng.integers(spec.num_documents)) if spec.num_documents > 1 else 0
    return (Segment("text", f"{spec.client_id}/doc{doc}", spec.shared_prefix_len),)


def _question(spec: ClientSpec, rng: np.random.Generator, key: str) -> Segment:
    return Segment("text", f"{key}/q", max(1, spec.question_len.sample(rng)))


def _single(
    spec: ClientSpec, rng: np.random.Generator, request_id: str, arrival: float, head: tuple[Segment, ...]
) -> TraceRequest:
    prompt = (*head, _question(spec, rng, request_id))
    return TraceRequest(
        request_id,
        spec.client_id,
        spec.weight,
        round(arrival, 6),
        prompt,
        max(1, spec.output_len.sample(rng)),
    )


def _conversation(
    spec: ClientSpec, rng: np.random.Generator, index: int, arrival: float, head: tuple[Segment, ...]
) -> list[TraceRequest]:
    turns = (spec.turns or Constant(1)).sample(rng)
    out: list[TraceRequest] = []
    prompt = head
    for turn in range(max(1, turns)):
        request_id = f"{spec.client_id}-c{index:05d}-t{turn:02d}"
        if out:
            previous = out[-1]
            prompt = (*previous.prompt, Segment("answer", previous.request_id, previous.max_tokens))
        prompt = (*prompt, _question(spec, rng, request_id))
        out.append(
            TraceRequest(
                request_id,
                spec.client_id,
                spec.weight,
                round(arrival, 6),
                prompt,
                max(1, spec.output_len.sample(rng)),
                after=out[-1].request_id if out else None,
                think_s=spec.think_s if out else 0.0,
            )
        )
    return out
