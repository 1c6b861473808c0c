"""The host side of DecodeGraphRunner on the CPU: staging, padding rows and the carried-token gather.

CUDA graphs cannot be captured here, so capture is skipped and each replay
runs the model eagerly over the runner's static buffers. Everything the host
does per decode step is the production code: staging into alternating
buffer sets, padding rows, copying up, and overwriting placeholder input ids
from the previous step's sampled tokens (overlap scheduling). What the CPU
cannot show is the double buffering itself: here every copy is synchronous.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from worker.engine_harness import greedy, make_stack

from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.cuda_graph_runner import DecodeGraphRunner
from radixfair_engine.engine import Engine
from radixfair_engine.model.llama import KVCache
from radixfair_engine.model.loader import load_model
from radixfair_engine.model.torch_backend import TorchBackend
from radixfair_engine.model_runner import ModelRunner
from radixfair_engine.request import Request
from radixfair_engine.scheduler.registry import build_policy

NUM_PAGES, PAGE_SIZE, MAX_CONTEXT = 128, 8, 1024


class EagerReplayRunner(DecodeGraphRunner):
    """A DecodeGraphRunner whose "replay" is an eager forward over the same static buffers.

    Each replay also checks what a graph would read against the requests themselves: every
    row's pages in the static page table are its request's current page table.
    """

    replays = 0
    _chunks: list = []

    def _capture_all(self) -> None:
        pass

    def forward(self, chunks, carry=None):  # noqa: ANN001, ANN201 - DecodeReplayer
        self._chunks = list(chunks)
        return super().forward(chunks, carry)

    def _replay(self, size: int) -> torch.Tensor:
        self.replays += 1
        for row, chunk in enumerate(self._chunks):
            pages = chunk.request.page_table
            staged = self._page_table[row, : len(pages)].tolist()
            assert staged == pages, f"row {row} ({chunk.request.request_id}) stages stale pages"
        # The torch backend sizes attention from host lengths; the Triton kernels read the device ones.
        lengths = self._seq_lens[:size].tolist()
        batch = dataclasses.replace(self._batch(size), seq_lens_host=lengths, max_seq_len=max(lengths))
        return self.model(batch, self.kv_cache)


def graph_engine(model_dir: Path, overlap: bool) -> tuple[Engine, EagerReplayRunner]:
    config = EngineConfig(
        num_pages=NUM_PAGES,
        page_size=PAGE_SIZE,
        max_batched_tokens=256,
        overlap_schedule=overlap,
        scheduler=SchedulerConfig(policy="fcfs"),
    )
    model = load_model(model_dir, TorchBackend(), torch.float32, "cpu")
    # One page beyond the allocator's for padding rows, as engine_builder does.
    kv_cache = KVCache(model.config, NUM_PAGES + 1, PAGE_SIZE, torch.float32, torch.device("cpu"))
    graphs = EagerReplayRunner(model, kv_cache, NUM_PAGES, MAX_CONTEXT // PAGE_SIZE, (1, 2, 4, 8))
    runner = ModelRunner(model, kv_cache, NUM_PAGES, graphs)
    return Engine(config, runner, build_policy(config.scheduler), frozenset(), MAX_CONTEXT), graphs


def staggered_requests() -> list[Request]:
    # Different lengths, so the decode batch shrinks and grows: rows that carried a
    # placeholder become padding rows of a later, smaller batch.
    return [greedy([10 + i] * (5 + 3 * i), 6 + 2 * i, f"r{i}", ignore_eos=True) for i in range(6)]


def run(engine: Engine, requests: list[Request]) -> list[list[int]]:
    for request in requests[:4]:
        engine.submit(request)
    for step in range(500):
        if step == 5:
            for request in requests[4:]:
                engine.submit(request)
        elif step > 5 and not engine.has_work():
            return [r.output_ids for r in requests]
        engine.step()
    raise AssertionError("engine still busy after 500 steps")


def test_graph_runner_decode_steps_match_eager_engine_with_and_without_overlap(tiny_model_dir):
    expected = run(
        make_stack(tiny_model_dir, num_pages=NUM_PAGES, page_size=PAGE_SIZE).engine, staggered_requests()
    )
    for overlap in (False, True):
        engine, graphs = graph_engine(tiny_model_dir, overlap)
        assert run(engine, staggered_requests()) == expected, f"overlap={overlap}"
        assert graphs.replays > 10


def test_staged_page_tables_follow_a_page_swapped_for_a_cached_twin(tiny_model_dir):
    """Two identical greedy requests write identical pages; when one inserts a page the other
    cached first, its table takes the cached page and frees its own, which a later request then
    reuses. A staged row that kept the freed page would read that request's K/V (the replay
    checks every row against its request's table, and the tokens against the eager engine)."""

    def requests() -> list[Request]:
        twins = [greedy([21, 22, 23, 24, 25], 40, f"twin{i}", ignore_eos=True) for i in range(2)]
        later = [greedy([30 + i] * 9, 30, f"later{i}", ignore_eos=True) for i in range(4)]
        return twins + later

    expected = run(make_stack(tiny_model_dir, num_pages=NUM_PAGES, page_size=PAGE_SIZE).engine, requests())
    for overlap in (False, True):
        engine, graphs = graph_engine(tiny_model_dir, overlap)
        swaps = []
        cache_computed = engine.pages.cache_computed

        def watched(request: Request, cache_computed=cache_computed, swaps=swaps) -> None:
            before = list(request.page_table)
            cache_computed(request)
            if request.page_table != before and len(request.page_table) == len(before):
                swaps.append(request.request_id)

        engine.pages.cache_computed = watched
        assert run(engine, requests()) == expected, f"overlap={overlap}"
        assert swaps, "no request's page was swapped for a cached twin: the case is not exercised"
        assert graphs.replays > 10
