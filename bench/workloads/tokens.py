"""Token ids of trace segments: deterministic, so every replay of a trace builds the same prompts.

"text" segments are pseudo-random ids in [TEXT_LOW, TEXT_HIGH), seeded by a
hash of the segment key: two segments with one key are the same tokens, so a
shared system prompt is one key used by many requests. "answer" segments are
the tokens request ``key`` generates in the simulator (``answer_tokens``),
so a conversation's next turn starts with exactly what the simulated engine
cached for the previous one. They come from a small separate range: the
simulated runner emits them as argmax indices of ANSWER_VOCAB-wide logits.
Both ranges are valid ids of the real SmolLM2 vocabulary (49,152), so the
same trace replays on the real model (where generated text differs from the
answer segment, and the next turn's cache hit stops at the previous prompt).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from bench.workloads.trace import Segment, TraceRequest

TEXT_LOW, TEXT_HIGH = 1000, 40000
ANSWER_LOW, ANSWER_VOCAB = 256, 512


def _seed(kind: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{kind}:{key}".encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=4096)
def segment_tokens(kind: str, key: str, length: int) -> tuple[int, ...]:
    """The ``length`` token ids of one segment."""
    rng = np.random.default_rng(_seed(kind, key))
    if kind == "text":
        return tuple(rng.integers(TEXT_LOW, TEXT_HIGH, size=length).tolist())
    if kind == "answer":
        return tuple(rng.integers(ANSWER_LOW, ANSWER_VOCAB, size=length).tolist())
    raise ValueError(f"unknown segment kind {kind!r}")


def answer_tokens(request_id: str, length: int) -> tuple[int, ...]:
    """What the simulator generates for ``request_id``: its first ``length`` output tokens."""
    return segment_tokens("answer", request_id, length)


def prompt_token_ids(request: TraceRequest) -> list[int]:
    return tokens_of(request.prompt)


def tokens_of(segments: tuple[Segment, ...]) -> list[int]:
    ids: list[int] = []
    for segment in segments:
        ids.extend(segment_tokens(segment.kind, segment.key, segment.length))
    return ids
