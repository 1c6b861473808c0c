"""An int8 / fp8 checkpoint on the Triton backend: every projection takes the weight-only kernel, and
the engine's greedy tokens equal the torch backend's (QuantizedLinear's own path) in fp32.

A real engine over a tiny random Llama quantized in the distiller's format, Triton kernels in the
CPU interpreter. ``triton_max_rows`` 4 sends the long prompts' prefill through the dequantizing
path and a short prompt's prefill and every decode step (3 rows) through the kernel, so both paths
feed the same KV cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

pytest.importorskip("triton")

from support.models import make_tiny_model_dir  # noqa: E402
from test_step_fusion_model import greedy_tokens  # noqa: E402

from radixfair_engine.model.quantized_linear import QuantizedKernelConfig  # noqa: E402
from radixfair_engine.model.torch_backend import TorchBackend  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402
from radixfair_model_format.quantized_checkpoint import (  # noqa: E402
    CONFIG_KEY,
    SCALE_SUFFIX,
    config_section,
    is_quantizable,
    quantize_weight,
    tensor_scheme,
)


class KernelCountingBackend(TritonBackend):
    """The Triton backend, counting the quantized products its kernel computed."""

    def __init__(self, max_rows: int) -> None:
        super().__init__(num_sms=1, quantized=QuantizedKernelConfig(triton_max_rows=max_rows))
        self.kernel_products = 0

    def quantized_linear(self, *args):  # type: ignore[no-untyped-def]
        out = super().quantized_linear(*args)
        self.kernel_products += out is not None
        return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    # One layer: the interpreter's time is per launch, and one layer holds all four projections.
    overrides = {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}
    overrides["num_hidden_layers"] = 1
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir, **overrides)


@pytest.fixture(scope="module", params=["int8", "fp8"])
def quantized_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Path:
    scheme = request.param
    target = tmp_path_factory.mktemp(f"tiny-{scheme}")
    state = {}
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        if is_quantizable(name, tensor):
            state[name], state[name + SCALE_SUFFIX] = quantize_weight(tensor, tensor_scheme(name, scheme))
        else:
            state[name] = tensor
    save_file(state, str(target / "model.safetensors"))
    config = json.loads((model_dir / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, CONFIG_KEY: config_section(scheme)}))
    return target


def test_quantized_decode_runs_the_kernel_and_matches_the_dequantizing_path(quantized_dir: Path) -> None:
    expected = greedy_tokens(quantized_dir, TorchBackend())
    backend = KernelCountingBackend(max_rows=4)

    tokens = greedy_tokens(quantized_dir, backend)

    assert tokens == expected
    assert all(len(t) == 6 for t in tokens)
    # Five decode steps of three sequences, four projections each at least.
    assert backend.kernel_products >= 5 * 4
