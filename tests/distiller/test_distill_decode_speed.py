"""bench/distill/distill_decode_speed.py: plain and quantized checkpoints decode through the worker engine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from radixfair_distiller.quantize import quantize_model_dir

# bench/ is a directory of scripts, not an installed package (and "bench" names tests/bench under
# pytest): load the module by its path.
_PATH = Path(__file__).resolve().parents[2] / "bench" / "distill" / "distill_decode_speed.py"
_SPEC = importlib.util.spec_from_file_location("distill_decode_speed", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
speed = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = speed  # dataclasses look their module up there
_SPEC.loader.exec_module(speed)


@pytest.mark.parametrize("scheme", ["", "int8", "fp8"])
def test_every_batch_size_reports_a_decode_rate_for_each_checkpoint_format(tiny_model_dir, tmp_path, scheme):
    model_dir = quantize_model_dir(tiny_model_dir, tmp_path / scheme, scheme) if scheme else tiny_model_dir
    config = speed.DecodeSpeedConfig(batches=(1, 3), prompt_len=6, new_tokens=4, device="cpu")

    result = speed.decode_speed(model_dir, config)

    assert set(result) == {"b1_tok_s", "b1_ms_step", "b3_tok_s", "b3_ms_step"}
    assert all(value > 0 for value in result.values())
