"""How long one engine step takes, as a function of what the step computes.

A step runs a batch of chunks: decode chunks (one token) and prefill chunks
(many). Its time is modelled as

    t = fixed_s + prefill_step_s · [any prefill chunk] + per_seq_s · chunks
        + per_token_s · tokens + per_attention_s · attention

where ``attention`` counts query-key pairs: a chunk of ``n`` tokens starting
at position ``p`` attends to ``n · (p + (n + 1) / 2)`` keys. The fixed term
is the per-step overhead (kernel launches, Python, weight reads for a small
batch), the per-token term the dense layers, the attention term the KV reads
that grow with context. ``prefill_step_s`` is the extra fixed cost of a step
that is not pure decode: on the GPU the engine replays pure-decode steps as
CUDA graphs and runs any step with a prefill chunk eagerly, kernel launch by
kernel launch, which measured 16-20 ms against 1-2.5 ms on an H100 with
SmolLM2-135M. The coefficients are fitted by non-negative least squares to
measured steps of the real engine (``fit``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StepShape:
    """What one step computed: per chunk its start position and length."""

    starts: tuple[int, ...]
    lengths: tuple[int, ...]

    def features(self) -> tuple[float, float, float, float, float]:
        tokens = sum(self.lengths)
        attention = sum(n * (p + (n + 1) / 2) for p, n in zip(self.starts, self.lengths))
        prefill = 1.0 if any(n > 1 for n in self.lengths) else 0.0
        return 1.0, prefill, float(len(self.lengths)), float(tokens), float(attention)


@dataclass(frozen=True)
class StepCostModel:
    fixed_s: float
    prefill_step_s: float
    per_seq_s: float
    per_token_s: float
    per_attention_s: float
    # Where the coefficients came from (device, model, fit error).
    source: str = ""

    def step_seconds(self, starts: Sequence[int], lengths: Sequence[int]) -> float:
        tokens = 0
        attention = 0.0
        longest = 0
        for p, n in zip(starts, lengths):
            tokens += n
            attention += n * (p + (n + 1) / 2)
            longest = max(longest, n)
        return (
            self.fixed_s
            + (self.prefill_step_s if longest > 1 else 0.0)
            + self.per_seq_s * len(lengths)
            + self.per_token_s * tokens
            + self.per_attention_s * attention
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> StepCostModel:
        return cls(**json.loads(path.read_text()))


def fit(
    shapes: Sequence[StepShape],
    seconds: Sequence[float],
    source: str = "",
    weights: Sequence[float] | None = None,
) -> StepCostModel:
    """Non-negative least squares on relative error, so short decode steps weigh as much as long prefills.

    ``weights`` (per sample) let two sample sets of very different sizes count equally.
    """
    x = np.array([s.features() for s in shapes], dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    scale = 1.0 / y
    if weights is not None:
        scale = scale * np.sqrt(np.asarray(weights, dtype=np.float64))
    coef = _nnls(x * scale[:, None], y * scale)
    return StepCostModel(*coef.tolist(), source=source)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with coefficients >= 0, by dropping negative ones and refitting (5 unknowns)."""
    active = np.ones(a.shape[1], dtype=bool)
    while True:
        coef = np.zeros(a.shape[1])
        coef[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        if (coef[active] >= 0).all():
            return coef
        active &= coef > 0


def relative_errors(
    model: StepCostModel, shapes: Sequence[StepShape], seconds: Sequence[float]
) -> np.ndarray:
    predicted = np.array([model.step_seconds(s.starts, s.lengths) for s in shapes])
    return (predicted - np.asarray(seconds)) / np.asarray(seconds)
