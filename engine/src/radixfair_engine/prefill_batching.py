"""Holding new requests back from decode-only steps, so their prefills run together.

On a small model a step is bound by kernel launches, not by the device's work. A decode-only
step replays a captured CUDA graph (``cuda_graph_runner``), and a step with any prefill chunk
runs eagerly, launch by launch: on the H200 with SmolLM2-135M, ~2 ms against ~8 ms at 256
running requests. Under steady load a request finishes, and a new one arrives, nearly every
step, so admitting each arrival at once makes nearly every step eager: the closed-loop engine
ran at a third of its decode-only speed (bench/results/serving_gpu_h200_closed_loop_4routers.md,
in-process inter-token p99 31 ms).

So a step that would be decode-only keeps its graph while the waiting requests are few and
young: they join a later step together, and one eager step prefills them all. The hold ends as
soon as either bound is reached, so no request waits more than ``max_wait_steps`` steps for
it; a step that is eager anyway (a prefill chunk in progress, or more decode rows than a graph
holds) admits at once, as does an idle engine (nothing decodes, so nothing is delayed for it
but the request itself). The rule is TGI's ``max_waiting_tokens`` / ``waiting_served_ratio``
pair, stated in steps and requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from radixfair_engine.config import PrefillBatchingConfig
from radixfair_engine.request import Request


@dataclass(frozen=True)
class AdmissionHold:
    """Decides, each step, whether waiting requests stay out of a decode-only step.

    ``max_graph_rows``: the most decode rows a decode-only step replays as a graph (larger
    decode-only steps run eagerly, so holding back gains nothing there). Built by ``for_engine``.
    """

    max_wait_steps: int
    waiting_ratio: float
    max_graph_rows: int

    @classmethod
    def for_engine(
        cls, config: PrefillBatchingConfig, graphs_replay_decodes: bool, max_graph_rows: int
    ) -> AdmissionHold | None:
        """The hold an engine applies, or None when admission is never held back.

        ``graphs_replay_decodes``: whether this engine's decode-only steps replay CUDA graphs
        (what ``enabled="auto"`` follows); ``max_graph_rows`` is their largest batch.
        """
        enabled = graphs_replay_decodes if config.enabled == "auto" else bool(config.enabled)
        if not enabled or config.max_wait_steps == 0:
            return None
        return cls(config.max_wait_steps, config.waiting_ratio, max_graph_rows)

    def holds_back(self, step_lengths: Sequence[int], waiting: Sequence[Request], step: int) -> bool:
        """Whether ``waiting`` stays out of this step.

        ``step_lengths``: the token count of each chunk scheduled so far this step (decodes and
        prefill chunks in progress); ``step``: the engine's step number (``Request.queued_step``
        counts in it).
        """
        decode_rows = len(step_lengths)
        if decode_rows == 0 or decode_rows > self.max_graph_rows or not waiting:
            return False
        if any(length != 1 for length in step_lengths):
            return False  # a prefill chunk makes this step eager already
        if len(waiting) >= math.ceil(self.waiting_ratio * decode_rows):
            return False
        oldest = min(request.queued_step for request in waiting)
        return step - oldest < self.max_wait_steps
