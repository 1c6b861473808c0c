"""Wraps a real StepRunner and records the shape of every step it runs, for calibration."""

from __future__ import annotations

import torch

from bench.simulator.cost_model import StepShape
from radixfair_engine.model_runner import SamplingRunner, ScheduledChunk


class ShapeRecordingRunner(SamplingRunner):
    """Delegates to ``inner`` (a SamplingRunner; its sampler too); ``last_shape`` is the batch of the
    latest forward (None if none ran)."""

    def __init__(self, inner: SamplingRunner) -> None:
        super().__init__(inner.sampler)
        self.inner = inner
        self.page_size = inner.page_size
        self.last_shape: StepShape | None = None

    @property
    def num_pages(self) -> int:
        return self.inner.num_pages

    def forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        self.last_shape = StepShape(tuple(c.start for c in chunks), tuple(c.length for c in chunks))
        return self.inner.forward(chunks)
