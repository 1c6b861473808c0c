"""With every step fusion on, the engine's greedy tokens equal the torch backend's in fp32.

A real engine over a tiny random Llama (head_dim 32, so RoPE's two half-head tiles are 16 wide),
Triton kernels in the CPU interpreter. ``max_rows`` 8 sends the long prompts' prefill through
the unfused kernels and cuBLAS-like F.linear, and a short prompt's prefill and every decode step
through the fused ones, so both paths feed the same KV cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from support.models import make_tiny_model_dir  # noqa: E402

from radixfair_engine.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_engine.engine import Engine  # noqa: E402
from radixfair_engine.kernels.prefix_groups import PrefixSharingConfig  # noqa: E402
from radixfair_engine.model.backend import KernelBackend  # noqa: E402
from radixfair_engine.model.llama import KVCache  # noqa: E402
from radixfair_engine.model.loader import load_model  # noqa: E402
from radixfair_engine.model.step_fusion import StepFusionConfig  # noqa: E402
from radixfair_engine.model.torch_backend import TorchBackend  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402
from radixfair_engine.model_runner import ModelRunner  # noqa: E402
from radixfair_engine.request import Request, SamplingConfig  # noqa: E402
from radixfair_engine.scheduler.registry import build_policy  # noqa: E402

NUM_PAGES, PAGE_SIZE, MAX_CONTEXT = 64, 4, 128
PROMPTS = [[5 + (11 * i) % 300 for i in range(length)] for length in (23, 6, 14)]


class FusionCountingBackend(TritonBackend):
    """The Triton backend, counting the calls each fused form took (returned a result)."""

    def __init__(self, fusions: StepFusionConfig) -> None:
        super().__init__(num_sms=1, fusions=fusions)
        self.fused = {"qkv": 0, "gate_up": 0, "lm_head": 0, "linear": 0}

    def _count(self, name: str, result: object) -> object:
        self.fused[name] += result is not None
        return result

    def norm_qkv_rope_write_kv(self, *args):  # type: ignore[no-untyped-def]
        return self._count("qkv", super().norm_qkv_rope_write_kv(*args))

    def norm_gate_up_silu(self, *args):  # type: ignore[no-untyped-def]
        return self._count("gate_up", super().norm_gate_up_silu(*args))

    def norm_lm_head(self, *args):  # type: ignore[no-untyped-def]
        return self._count("lm_head", super().norm_lm_head(*args))

    def linear(self, x, weight):  # type: ignore[no-untyped-def]
        return self._count("linear", super().linear(x, weight))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    overrides = {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama-d32"), smollm2_dir, **overrides)


def greedy_tokens(model_dir: Path, backend: KernelBackend) -> list[list[int]]:
    config = EngineConfig(
        num_pages=NUM_PAGES, page_size=PAGE_SIZE, max_batched_tokens=128, scheduler=SchedulerConfig("fcfs")
    )
    model = load_model(model_dir, backend, torch.float32, "cpu")
    kv_cache = KVCache(model.config, NUM_PAGES, PAGE_SIZE, torch.float32, torch.device("cpu"))
    sharing = PrefixSharingConfig(enabled=False)
    engine = Engine(
        config, ModelRunner(model, kv_cache, NUM_PAGES, None, sharing), build_policy(config.scheduler),
        frozenset(), MAX_CONTEXT,
    )  # fmt: skip
    requests = [
        Request(f"r{i}", "a", prompt, SamplingConfig(max_tokens=6, ignore_eos=True))
        for i, prompt in enumerate(PROMPTS)
    ]
    for request in requests:
        engine.submit(request)
    for _ in range(100):
        if not engine.has_work():
            break
        engine.step()
    assert not engine.has_work()
    return [r.output_ids for r in requests]


def test_greedy_tokens_with_every_fusion_equal_the_torch_backend_in_fp32(model_dir: Path) -> None:
    expected = greedy_tokens(model_dir, TorchBackend())
    backend = FusionCountingBackend(StepFusionConfig.all_on(max_rows=8))

    tokens = greedy_tokens(model_dir, backend)

    assert tokens == expected
    assert all(len(t) == 6 for t in tokens)
    # Five decode steps of three sequences in each of the 2 layers at least; every kind was taken.
    assert backend.fused["qkv"] >= 2 * 5 and backend.fused["gate_up"] >= 2 * 5
    assert backend.fused["lm_head"] >= 5 and backend.fused["linear"] >= 2 * 2 * 5


def test_with_fusions_off_no_fused_form_runs() -> None:
    backend = FusionCountingBackend(StepFusionConfig())
    x = torch.randn(2, 64)

    assert backend.norm_gate_up_silu(x, None, torch.ones(64), 1e-5, torch.randn(32, 64)) is None
    assert backend.linear(x, torch.randn(8, 64)) is None


def test_a_batch_above_max_rows_is_left_to_the_unfused_kernels() -> None:
    backend = TritonBackend(num_sms=1, fusions=StepFusionConfig.all_on(max_rows=4))
    weight = torch.randn(8, 64)

    assert backend.linear(torch.randn(5, 64), weight) is None
    assert backend.linear(torch.randn(4, 64), weight) is not None


def test_heads_narrower_than_two_dot_tiles_keep_the_unfused_qkv_path() -> None:
    backend = TritonBackend(num_sms=1, fusions=StepFusionConfig.all_on())
    x, cache = torch.randn(2, 64), torch.zeros(4, 4, 1, 16)
    qkv = torch.randn(4 * 16, 64)

    fused = backend.norm_qkv_rope_write_kv(
        x, None, torch.ones(64), 1e-5, qkv, torch.zeros(2, dtype=torch.int64), torch.zeros(64, 16),
        cache, cache.clone(), torch.zeros(2, dtype=torch.int64),
    )  # fmt: skip

    assert fused is None
