"""The GIL switch interval knobs (engine_switch_interval_s, front_switch_interval_s) refuse what CPython
cannot hold.

CPython keeps the interval in whole microseconds: a positive value under 1 us, an infinite one or one
past its integer range is stored as 0, which asks for a thread switch at every check (the opposite of
what 0 means in the config: Python's own 5 ms). NaN passed the ``< 0`` check and was then silently
not applied. A config that names such a value gets a clear error at load instead.
"""

from __future__ import annotations

import math
import sys

import pytest

from radixfair.config_loading import ConfigError, build
from radixfair_worker.config import WorkerConfig

CPYTHON_STORES_AS_ZERO = [1e-7, math.inf, 1e300]
FIELDS = ["engine_switch_interval_s", "front_switch_interval_s"]


def test_cpython_stores_these_intervals_as_zero() -> None:
    """What the engine process would run with: the check that makes the refusal worth having."""
    before = sys.getswitchinterval()
    try:
        for value in CPYTHON_STORES_AS_ZERO:
            sys.setswitchinterval(value)
            assert sys.getswitchinterval() == 0.0
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [*CPYTHON_STORES_AS_ZERO, math.nan, -0.001])
def test_an_interval_cpython_cannot_hold_is_refused_at_load(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        build(WorkerConfig, {field: value}, "worker")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [0.0, 1e-6, 0.0002, 0.005, 1.0])
def test_zero_and_usable_intervals_load(field: str, value: float) -> None:
    assert getattr(build(WorkerConfig, {field: value}, "worker"), field) == value
