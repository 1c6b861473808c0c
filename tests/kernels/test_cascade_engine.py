"""The engine's greedy tokens with cascade decode attention equal those of the plain decode kernel.

A real engine (tiny random Llama, fp32, Triton kernels in the CPU interpreter): one
request puts a 42-token prompt in the radix cache, then four requests extending it
decode together, so their page tables share the prompt's whole pages and the runner
groups them. Page size 4 leaves the shared prefix ending mid-page (42 = 10 pages + 2).

The CUDA-graph path is run too, as tests/worker/test_decode_graph_staging.py runs it on
the CPU: capture is skipped and a "replay" is an eager forward over the runner's static
buffers, so the per-step host work (finding groups, staging them into the static group
buffers, choosing the cascade graph) is the production code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_engine.cuda_graph_runner import DecodeGraphRunner  # noqa: E402
from radixfair_engine.engine import Engine  # noqa: E402
from radixfair_engine.kernels.prefix_groups import PrefixSharingConfig  # noqa: E402
from radixfair_engine.model.backend import ForwardBatch  # noqa: E402
from radixfair_engine.model.llama import KVCache  # noqa: E402
from radixfair_engine.model.loader import load_model  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402
from radixfair_engine.model_runner import ModelRunner  # noqa: E402
from radixfair_engine.request import Request, SamplingConfig  # noqa: E402
from radixfair_engine.scheduler.registry import build_policy  # noqa: E402

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


class EagerReplayRunner(DecodeGraphRunner):
    """A DecodeGraphRunner whose "replay" of the graph it would pick is an eager forward."""

    grouped_replays = 0

    def _capture_all(self) -> None:
        pass

    def _replay(self, size: int) -> torch.Tensor:
        self.grouped_replays += self._grouped
        return self.model(self._batch(size, grouped=self._grouped), self.kv_cache)


def run_shared_prefix_batch(
    model_dir: Path, sharing: PrefixSharingConfig, graphs: bool = False
) -> tuple[list[list[int]], int]:
    config = EngineConfig(
        num_pages=NUM_PAGES, page_size=PAGE_SIZE, max_batched_tokens=256, scheduler=SchedulerConfig("fcfs")
    )
    backend = GroupCountingBackend()
    model = load_model(model_dir, backend, torch.float32, "cpu")
    # One page beyond the allocator's for padding rows, as engine_builder does.
    kv_cache = KVCache(model.config, NUM_PAGES + 1, PAGE_SIZE, torch.float32, torch.device("cpu"))
    replayer = None
    if graphs:
        replayer = EagerReplayRunner(model, kv_cache, NUM_PAGES, MAX_CONTEXT // PAGE_SIZE, (2, 8), sharing)
    runner = ModelRunner(model, kv_cache, NUM_PAGES, replayer, sharing)
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
    if replayer is not None:
        assert replayer.grouped_replays >= 3
    return [r.output_ids for r in followers], backend.grouped_calls


EVERY_GROUP = PrefixSharingConfig(min_saved_tokens=1, block_m=16)


@pytest.fixture(scope="module")
def plain_tokens(tiny_model_dir: Path) -> list[list[int]]:
    tokens, grouped = run_shared_prefix_batch(tiny_model_dir, PrefixSharingConfig(enabled=False))
    assert grouped == 0
    return tokens


def test_greedy_tokens_with_cascade_decode_equal_the_plain_kernel_in_fp32(
    tiny_model_dir: Path, plain_tokens: list[list[int]]
) -> None:
    cascade, grouped = run_shared_prefix_batch(tiny_model_dir, EVERY_GROUP)

    # Four decode steps after the followers' prefill, each with a group, in each of the 2 layers.
    assert grouped >= 2 * 3
    assert cascade == plain_tokens


def test_the_decode_graph_runner_stages_groups_and_keeps_greedy_tokens_in_fp32(
    tiny_model_dir: Path, plain_tokens: list[list[int]]
) -> None:
    staged, grouped = run_shared_prefix_batch(tiny_model_dir, EVERY_GROUP, graphs=True)

    # Every decode step of the four followers replays the cascade graph of size 8 (4 padding rows).
    assert grouped >= 2 * 3
    assert staged == plain_tokens
