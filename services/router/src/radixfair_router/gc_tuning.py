"""Garbage-collector settings of the router process: the serving processes' shared rule.

A routing decision allocates a few hundred small tuples (a worker state and an
admission candidate per worker); see ``radixfair.gc_tuning`` for why and what.
"""

from __future__ import annotations

from radixfair.gc_tuning import YOUNG_COLLECTION_THRESHOLD, tune_for_serving

__all__ = ["YOUNG_COLLECTION_THRESHOLD", "tune_for_routing"]


def tune_for_routing() -> None:
    """Freezes what start-up built out of the collector's view and makes young collections rarer."""
    tune_for_serving()
