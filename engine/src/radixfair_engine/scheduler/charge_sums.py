"""Charges summed the way a charge per token sums them (the engine charges a step's tokens at once)."""

from __future__ import annotations


def add_repeatedly(value: float, step: float, count: int) -> float:
    """``value + step`` ``count`` times, one addition at a time.

    Not ``value + step * count``: for steps such as 2/3 the two differ in the last bit, and a charge per
    token was added one at a time, so two clients with the same service (weight for weight) compared
    exactly equal however their tokens were grouped into steps; a tie decides who goes first.
    """
    for _ in range(count):
        value += step
    return value
