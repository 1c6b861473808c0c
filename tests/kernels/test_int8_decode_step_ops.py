"""A quantized decode step issues the bf16 step's work and nothing more: each projection's product is
one weight-only kernel launch where the bf16 step has one matmul, and no other op is added.

Why this is the test that matters for speed: at decode every op of a step is a CUDA-graph node of a
few microseconds, so one stray op per projection (a scale multiply outside the kernel, a cast of the
activations or scales, a copy to make a layout contiguous) costs as much as the 8-bit weights save.
Counted here on the CPU over one decode forward of a tiny 2-layer Llama, the Triton kernels in the
interpreter: aten ops through a TorchDispatchMode, Triton launches by kernel name. The interpreter
runs each kernel through torch ops of its own (copying arguments), so aten ops are counted only
outside Triton launches, which are wrapped (monkeypatch) to count them and pause the op count.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

from triton.runtime import interpreter  # noqa: E402

from radixfair_engine.model.backend import ForwardBatch  # noqa: E402
from radixfair_engine.model.llama import KVCache  # noqa: E402
from radixfair_engine.model.loader import load_model  # noqa: E402
from radixfair_engine.model.quantized_linear import QuantizedKernelConfig  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402
from radixfair_model_format.quantized_checkpoint import CONFIG_KEY, config_section, quantized_state  # noqa: E402

LAYERS = 2
PROJECTIONS = 4 * LAYERS  # qkv, o, gate/up, down per layer
# The interpreter's own launch, taken once: each count wraps this one, not an earlier count's wrapper.
INTERPRETED_LAUNCH = interpreter.InterpretedFunction.run
WEIGHT_ONLY_KERNELS = {"_weight_only_matmul_kernel", "_weight_only_gemv_kernel"}
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}


def hf_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden, inter, heads = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["head_dim"]
    q_out, kv_out = CONFIG["num_attention_heads"] * heads, CONFIG["num_key_value_heads"] * heads
    shapes = {"self_attn.q_proj": (q_out, hidden), "self_attn.k_proj": (kv_out, hidden)}
    shapes |= {"self_attn.v_proj": (kv_out, hidden), "self_attn.o_proj": (hidden, q_out)}
    shapes |= {"mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden)}
    shapes |= {"mlp.down_proj": (hidden, inter)}
    state = {"model.embed_tokens.weight": torch.randn(CONFIG["vocab_size"], hidden, generator=generator)}
    for layer in range(LAYERS):
        for name, shape in shapes.items():
            state[f"model.layers.{layer}.{name}.weight"] = torch.randn(shape, generator=generator) * 0.1
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"model.layers.{layer}.{norm}.weight"] = torch.ones(hidden)
    state["model.norm.weight"] = torch.ones(hidden)
    return state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    state = hf_state()
    dirs = {}
    for scheme in ("bf16", "int8", "fp8"):
        target = tmp_path_factory.mktemp(f"ops-{scheme}")
        quantized = scheme != "bf16"
        save_file(quantized_state(state, scheme) if quantized else state, str(target / "model.safetensors"))
        config = {**CONFIG, CONFIG_KEY: config_section(scheme)} if quantized else CONFIG
        (target / "config.json").write_text(json.dumps(config))
        dirs[scheme] = target
    return dirs


class StepCounter(TorchDispatchMode):
    """aten ops dispatched outside Triton launches, and Triton launches by kernel name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.launches: Counter[str] = Counter()
        self.in_kernel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not self.in_kernel:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def decode_step_counts(model_dir: Path, gemv_max_rows: int, monkeypatch: pytest.MonkeyPatch) -> StepCounter:
    """Counts one decode forward of 2 sequences (contexts of 4 and 3 tokens) through the Triton backend."""
    backend = TritonBackend(num_sms=1, quantized=QuantizedKernelConfig(gemv_max_rows=gemv_max_rows))
    model = load_model(model_dir, backend, torch.float32, "cpu")
    kv_cache = KVCache(model.config, 4, 4, torch.float32, torch.device("cpu"))
    batch = ForwardBatch(
        input_ids=torch.tensor([5, 6]),
        positions=torch.tensor([3, 2]),
        query_start_loc=torch.tensor([0, 1, 2], dtype=torch.int32),
        seq_lens=torch.tensor([4, 3], dtype=torch.int32),
        page_table=torch.tensor([[1], [2]], dtype=torch.int32),
        slot_mapping=torch.tensor([7, 10]),
        logits_indices=torch.arange(2),
        max_query_len=1,
        max_seq_len=4,
        query_lens_host=[1, 1],
        seq_lens_host=[4, 3],
    )
    counter = StepCounter()

    def counted_launch(kernel, *args, **kwargs):  # type: ignore[no-untyped-def]
        counter.launches[kernel.fn.__name__] += 1
        counter.in_kernel += 1
        try:
            return INTERPRETED_LAUNCH(kernel, *args, **kwargs)
        finally:
            counter.in_kernel -= 1

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", counted_launch)
    with counter:
        model(batch, kv_cache)
    return counter


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("gemv_max_rows", [0, 4])  # the tile kernel, the GEMV kernel
def test_a_quantized_decode_step_adds_nothing_but_its_kernels_to_the_bf16_step(
    checkpoints: dict[str, Path], scheme: str, gemv_max_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = decode_step_counts(checkpoints["bf16"], gemv_max_rows, monkeypatch)

    quantized = decode_step_counts(checkpoints[scheme], gemv_max_rows, monkeypatch)

    # Every projection: one weight-only launch; the other kernels are the bf16 step's, as many.
    added_launches = quantized.launches - plain.launches
    assert set(added_launches) <= WEIGHT_ONLY_KERNELS and sum(added_launches.values()) == PROJECTIONS
    assert not plain.launches - quantized.launches
    # Each launch replaces one matmul (the LM head stays one: the tied embedding is dequantized at
    # load) and allocates its output; any other op (a cast, a scale multiply, a copy) fails this.
    replaced = Counter({"aten.linear.default": PROJECTIONS})
    allocated = Counter({"aten.empty.memory_format": PROJECTIONS})
    assert quantized.ops == plain.ops - replaced + allocated
    assert sum(quantized.ops.values()) == sum(plain.ops.values())
