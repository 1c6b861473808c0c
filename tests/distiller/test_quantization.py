"""Weight-only quantization: error bounds, the format on disk, and the worker running it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from worker.engine_harness import greedy, make_stack, run_to_completion

from radixfair_distiller.model_dir import content_hash, load_llama, weights_bytes
from radixfair_distiller.quantize import quantize_model_dir
from radixfair_engine.model.loader import load_model
from radixfair_engine.model.quantized_linear import QuantizedLinear
from radixfair_engine.model.torch_backend import TorchBackend
from radixfair_model_format.quantized_checkpoint import (
    CONFIG_KEY,
    FORMAT_VERSION,
    dequantize_weight,
    quantize_weight,
)

EMBEDDING = "model.embed_tokens.weight"


def random_matrix(rows: int = 96, cols: int = 80, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Rows of very different magnitude: per-channel scales must follow each row.
    return torch.randn(rows, cols, generator=generator) * torch.logspace(-3, 1, rows)[:, None]


def test_int8_error_is_at_most_half_a_step_of_each_rows_scale():
    weight = random_matrix()
    q, scale = quantize_weight(weight, "int8")
    assert q.dtype == torch.int8 and scale.shape == (weight.shape[0],)
    error = (dequantize_weight(q, scale) - weight).abs()
    assert (error <= scale[:, None] / 2 * (1 + 1e-5)).all()
    # The largest magnitude of each row lands exactly on +-127 (symmetric, no clipping).
    assert (q.abs().amax(dim=1) == 127).all()


def test_fp8_relative_error_is_within_e4m3_rounding():
    weight = random_matrix(seed=1)
    q, scale = quantize_weight(weight, "fp8")
    assert q.dtype == torch.float8_e4m3fn
    error = (dequantize_weight(q, scale) - weight).abs()
    # 3 mantissa bits: half an ulp is 2^-4 relative for normals; subnormal steps are 2^-9 * scale.
    bound = torch.maximum(weight.abs() * 2**-4, scale[:, None] * 2**-10)
    assert (error <= bound * (1 + 1e-5)).all()


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_all_zero_rows_dequantize_to_zero(scheme):
    weight = random_matrix()
    weight[3] = 0
    q, scale = quantize_weight(weight, scheme)
    assert torch.equal(dequantize_weight(q, scale)[3], torch.zeros(weight.shape[1]))


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_quantized_linear_equals_a_linear_layer_with_the_dequantized_weight(scheme):
    weight = random_matrix(seed=2)
    q, scale = quantize_weight(weight, scheme)
    layer = QuantizedLinear(weight.shape[1], weight.shape[0], scheme)
    layer.weight.copy_(q.view(layer.weight.dtype))
    layer.weight_scale.copy_(scale)
    layer = layer.to(torch.float32)  # as the loader does; must not touch the codes
    x = torch.randn(5, weight.shape[1], generator=torch.Generator().manual_seed(3))
    expected = F.linear(x, dequantize_weight(q, scale))
    # fp32 sums in two orders ((x @ q^T) * s against x @ (q * s)^T): rounding scales with the output's size.
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_quantized_directory_holds_codes_and_scales_and_is_smaller(tiny_model_dir, tmp_path, scheme):
    target = quantize_model_dir(tiny_model_dir, tmp_path / scheme, scheme)
    state = load_file(str(target / "model.safetensors"))
    config = json.loads((target / "config.json").read_text())
    assert config["radixfair_quantization"]["scheme"] == scheme
    assert state["model.layers.0.mlp.down_proj.weight"].element_size() == 1
    assert state["model.layers.0.mlp.down_proj.weight_scale"].dtype == torch.float32
    assert state["model.norm.weight"].dtype == torch.float32
    assert weights_bytes(target) < 0.3 * weights_bytes(tiny_model_dir)
    assert content_hash(target) != content_hash(tiny_model_dir)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_worker_engine_on_a_quantized_checkpoint_generates_what_the_dequantized_model_does(
    tiny_model_dir, tmp_path, scheme
):
    target = quantize_model_dir(tiny_model_dir, tmp_path / scheme, scheme)
    stack = make_stack(target)
    assert any(isinstance(m, QuantizedLinear) for m in stack.engine.runner.model.modules())
    prompt = stack.encoder.encode_text("The library documents every public function")
    request = greedy(prompt, 12, "q", ignore_eos=True)
    run_to_completion(stack.engine, [request])

    reference = load_llama(target)
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert request.output_ids == out[0, len(prompt) :].tolist()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.sampled_from([256, 576, 1536]))
def test_int8_rows_carry_under_half_the_error_of_e4m3_rows_on_gaussian_weights(seed, width):
    # The format's reason for an int8 embedding in fp8 checkpoints: e4m3's error is relative (rms
    # ~2.6% of each weight, whatever the scale); int8's is half a step of max|row| / 127, and max|row|
    # of n Gaussian weights is ~3-4 sigma, so its rms is ~0.6-0.9% of sigma.
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(64, width, generator=generator) * torch.logspace(-2, 0, 64)[:, None]

    def rms_error(scheme: str) -> float:
        q, scale = quantize_weight(weight, scheme)
        return float(((dequantize_weight(q, scale) - weight) / weight.std(dim=1, keepdim=True)).pow(2).mean())

    int8, fp8 = rms_error("int8") ** 0.5, rms_error("fp8") ** 0.5
    assert int8 < 0.011 and fp8 > 0.02
    assert int8 < 0.5 * fp8


def test_an_fp8_checkpoint_stores_projections_in_e4m3_and_the_embedding_in_int8(tiny_model_dir, tmp_path):
    target = quantize_model_dir(tiny_model_dir, tmp_path / "fp8", "fp8")
    state = load_file(str(target / "model.safetensors"))
    section = json.loads((target / "config.json").read_text())[CONFIG_KEY]
    assert section["format_version"] == FORMAT_VERSION == 2
    assert section["scheme"] == "fp8" and section["embedding_scheme"] == "int8"
    assert state["model.layers.0.mlp.down_proj.weight"].dtype == torch.float8_e4m3fn
    assert state["model.layers.1.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert state[EMBEDDING].dtype == torch.int8
    # The embedding's error is int8's: at most half a step of each vocabulary row's scale.
    original = load_file(str(tiny_model_dir / "model.safetensors"))[EMBEDDING]
    scale = state[EMBEDDING + "_scale"]
    error = (dequantize_weight(state[EMBEDDING], scale) - original).abs()
    assert (error <= scale[:, None] / 2 * (1 + 1e-5)).all()


def version_1_fp8_checkpoint(source, target):
    """What the format's first version wrote: the embedding in e4m3 too, no format_version key."""
    target = quantize_model_dir(source, target, "fp8")
    state = load_file(str(target / "model.safetensors"))
    original = load_file(str(source / "model.safetensors"))[EMBEDDING]
    state[EMBEDDING], state[EMBEDDING + "_scale"] = quantize_weight(original, "fp8")
    save_file(state, str(target / "model.safetensors"))
    config = json.loads((target / "config.json").read_text())
    config[CONFIG_KEY] = {"scheme": "fp8", "granularity": "per_output_channel"}
    (target / "config.json").write_text(json.dumps(config))
    return target, original


def test_a_version_1_fp8_checkpoint_still_loads_in_the_worker_and_the_distiller(tiny_model_dir, tmp_path):
    target, original = version_1_fp8_checkpoint(tiny_model_dir, tmp_path / "v1")
    expected = dequantize_weight(*quantize_weight(original, "fp8"))
    model = load_model(target, TorchBackend(), torch.float32, "cpu")
    torch.testing.assert_close(model.embed_tokens.weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(load_llama(target).model.embed_tokens.weight, expected, rtol=0, atol=0)


def test_a_newer_format_version_is_refused_by_name_in_the_worker_and_the_distiller(tiny_model_dir, tmp_path):
    target = quantize_model_dir(tiny_model_dir, tmp_path / "v3", "int8")
    config = json.loads((target / "config.json").read_text())
    config[CONFIG_KEY]["format_version"] = 3
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version 3"):
        load_model(target, TorchBackend(), torch.float32, "cpu")
    with pytest.raises(ValueError, match="format_version 3"):
        load_llama(target)
