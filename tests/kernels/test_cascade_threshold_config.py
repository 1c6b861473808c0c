"""``engine.cascade_min_saved_tokens`` reaches the runner that decides, each decode step, whether a
batch's prefix groups save enough reads to take the cascade kernel (kernels.prefix_groups)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("triton")

from radixfair_engine.config import EngineConfig  # noqa: E402
from radixfair_engine.engine_builder import build_engine  # noqa: E402


def test_the_configured_threshold_is_the_runners_and_a_negative_one_is_refused(tiny_model_dir: Path):
    config = EngineConfig(backend="triton", num_pages=16, cascade_min_saved_tokens=96)
    runner = build_engine(config, tiny_model_dir).engine.runner
    assert runner.prefix_sharing is not None and runner.prefix_sharing.min_saved_tokens == 96
    with pytest.raises(ValueError, match="cascade_min_saved_tokens"):
        EngineConfig(cascade_min_saved_tokens=-1)
