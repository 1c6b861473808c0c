"""Garbage-collector settings for the serving processes (router, worker front, worker engine).

A serving loop allocates many short-lived containers per unit of work: the
router a worker state and an admission candidate per worker per decision, the
engine a chunk, an output and an update per running request per step. With
CPython's default thresholds a young collection runs every 700 net container
allocations, so every few decisions or every step, and an older generation's
collection walks everything start-up built (a model's modules, the tokenizer):
those pauses were most of the router's decision-time p99
(bench/eval/eval_router_decision_cost.py: 0.41 ms against 0.20 ms with this tuning)
and the engine's longest host steps (bench/engine/engine_step_anatomy.py).

Freezing moves everything alive after start-up out of the collector's view for
good; the larger young threshold makes collections rarer. Nothing on either hot
path makes reference cycles that matter (evicted radix nodes do, and they are
still collected, later), so this only delays freeing the rare cycle.
"""

from __future__ import annotations

import gc

# Container allocations (net of frees) between young collections; CPython's default is 700.
YOUNG_COLLECTION_THRESHOLD = 100_000


def tune_for_serving() -> None:
    """Freezes what start-up built out of the collector's view and makes young collections rarer.

    Call once, after start-up and before serving.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
