"""The learning-curve arithmetic of bench/distill/gpu_distill.py: the power-law fit and its extrapolation."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

# bench/ is a directory of scripts at the repository root, not an installed package (and "bench"
# names tests/bench under pytest): load the module by its path.
_PATH = Path(__file__).resolve().parents[2] / "bench" / "distill" / "distill_gpu_parts.py"
_SPEC = importlib.util.spec_from_file_location("distill_gpu_parts", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
parts = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = parts  # dataclasses look their module up there
_SPEC.loader.exec_module(parts)
power_law_fit, tokens_for_gap = parts.power_law_fit, parts.tokens_for_gap


@given(a=st.floats(0.01, 1e4), b=st.floats(0.05, 2.0), first=st.floats(1e3, 1e6), ratio=st.floats(2.0, 100.0))
def test_the_fit_recovers_an_exact_power_law_and_inverts_it(a, b, first, ratio):
    tokens = [first, first * ratio, first * ratio**2]
    gaps = [a * t**-b for t in tokens]

    fit = power_law_fit(tokens, gaps)

    assert fit is not None
    assert fit[0] == pytest.approx(a, rel=1e-6) and fit[1] == pytest.approx(b, rel=1e-6)
    assert tokens_for_gap(fit, gaps[1]) == pytest.approx(tokens[1], rel=1e-6)


def test_too_few_points_or_a_flat_curve_predict_nothing():
    assert power_law_fit([1000.0], [0.5]) is None
    assert power_law_fit([1000.0, 1000.0], [0.5, 0.4]) is None
    assert power_law_fit([1000.0, 2000.0], [0.0, -1.0]) is None  # gaps at or below 0 are not usable
    rising = power_law_fit([1000.0, 2000.0], [0.4, 0.5])
    assert rising is not None and rising[1] < 0
    assert tokens_for_gap(rising, 0.3) is None  # a gap that grows with tokens never reaches the target
    assert math.isfinite(tokens_for_gap((1.0, 0.5), 0.01))


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_the_pages_quantized_rows_score_the_weights_the_distillers_writer_stores(
    tiny_model_dir, tmp_path, scheme
):
    from radixfair_distiller.model_dir import load_llama
    from radixfair_distiller.quantize import quantize_model_dir

    model = load_llama(tiny_model_dir)
    scored = parts.quantized_copy(model, scheme).state_dict()
    stored = load_llama(quantize_model_dir(tiny_model_dir, tmp_path / scheme, scheme)).state_dict()
    assert scored.keys() == stored.keys()
    for name in scored:
        assert torch.equal(scored[name], stored[name]), name


def test_the_format_v1_fp8_row_differs_from_v2_only_in_the_embedding(tiny_model_dir):
    from radixfair_distiller.model_dir import load_llama

    model = load_llama(tiny_model_dir)
    v1 = parts.quantized_copy(model, "fp8", format_version=1).state_dict()
    v2 = parts.quantized_copy(model, "fp8").state_dict()
    differ = {name for name in v1 if not torch.equal(v1[name], v2[name])}
    assert differ <= {"model.embed_tokens.weight", "lm_head.weight"}
    assert "model.embed_tokens.weight" in differ
