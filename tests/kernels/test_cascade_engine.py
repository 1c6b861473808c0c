"""The engine's greedy tokens with cascade decode attention equal those of the plain decode kernel.

A real engine (tiny random Llama, fp32, Triton kernels in the CPU interpreter): one
request puts a 42-token prompt in the radix cache, then four requests extending it
decode together, so their page tables share the prompt's whole pages and the runner
groups them. Page size 4 leaves the shared prefix ending mid-page (42 = 10 pages + 2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from radixfair_worker.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_worker.engine import Engine  # noqa: E402
from radixfair_worker.kernels.prefix_groups import PrefixSharingConfig  # noqa: E402
from radixfair_worker.model.backend import ForwardBatch  # noqa: E402
from radixfair_worker.model.llama import KVCache  # noqa: E402
from radixfair_worker.model.loader import load_model  # noqa: E402
from radixfair_worker.model.triton_backend import TritonBackend  # noqa: E402
from radixfair_worker.model_runner import ModelRunner  # noqa: E402
from radixfair_worker.request import Request, SamplingConfig  # noqa: E402
from radixfair_worker.scheduler.registry import build_policy  # noqa: E402

NUM_PAGES, PAGE_SIZE, MAX_CONTEXT = 96, 4, 256
SHARED = [(7 * i) % 400 + 20 for i in range(42)]


class GroupCountingBackend(TritonBackend):
    """The Triton backend, counting the decode attention calls that got prefix groups."""

    def __init__(self) -> None:
        super().__init__(num_sms=1)
        self.grouped_calls = 0

    def attention(self, q, k_cache, v_cache, batch: ForwardBatch, scale: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
        self.grouped_calls += batch.prefix_groups is not None
        return super().attention(q, k_cache, v_cache, batch, scale)


def run_shared_prefix_batch(model_dir: Path, sharing: PrefixSharingConfig) -> tuple[list[list[int]], int]:
    config = EngineConfig(
        num_pages=NUM_PAGES, page_size=PAGE_SIZE, max_batched_tokens=256, scheduler=SchedulerConfig("fcfs")
    )
    backend = GroupCountingBackend()
    model = load_model(model_dir, backend, torch.float32, "cpu")
    kv_cache = KVCache(model.config, NUM_PAGES, PAGE_SIZE, torch.float32, torch.device("cpu"))
    runner = ModelRunner(model, kv_cache, NUM_PAGES, prefix_sharing=sharing)
    engine = Engine(config, runner, build_policy(config.scheduler), frozenset(), MAX_CONTEXT)
    sampling = SamplingConfig(max_tokens=1, ignore_eos=True)
    warm = Request("warm", "a", SHARED, sampling)
    followers = [
        Request(f"r{i}", "a", SHARED + [300 + i] * (1 + 2 * i), SamplingConfig(max_tokens=5, ignore_eos=True))
        for i in range(4)
    ]
    for batch in ([warm], followers):
        for request in batch:
            engine.submit(request)
        for _ in range(100):
            if not engine.has_work():
                break
            engine.step()
        assert not engine.has_work()
    return [r.output_ids for r in followers], backend.grouped_calls


def test_greedy_tokens_with_cascade_decode_equal_the_plain_kernel_in_fp32(tiny_model_dir: Path) -> None:
    every_group = PrefixSharingConfig(min_saved_tokens=1, block_m=16)

    plain, plain_grouped = run_shared_prefix_batch(tiny_model_dir, PrefixSharingConfig(enabled=False))
    cascade, grouped = run_shared_prefix_batch(tiny_model_dir, every_group)

    assert plain_grouped == 0
    # Four decode steps after the followers' prefill, each with a group, in each of the 2 layers.
    assert grouped >= 2 * 3
    assert cascade == plain
