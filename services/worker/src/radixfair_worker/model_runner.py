"""Turns one step's scheduled chunks into a ForwardBatch and runs the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from radixfair_worker.model.backend import ForwardBatch
from radixfair_worker.model.llama import KVCache, LlamaModel
from radixfair_worker.request import Request


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens ``start:start+length`` of ``request.fill_ids`` computed this step."""

    request: Request
    start: int
    length: int

    @property
    def completes_fill(self) -> bool:
        """True when this chunk reaches the end of fill_ids, so a next token is sampled."""
        return self.start + self.length == self.request.num_tokens


class StepRunner(Protocol):
    """What the engine needs from whatever computes a step: the model, or a simulator's cost model."""

    page_size: int

    @property
    def num_pages(self) -> int: ...

    def forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Logits [S, vocab], one row per chunk that completes its fill, in chunk order."""
        ...


class DecodeReplayer(Protocol):
    def supports(self, chunks: list[ScheduledChunk]) -> bool: ...

    def forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor: ...


class ModelRunner:
    """Owns the model and its KV pages; runs one forward pass per engine step.

    ``num_pages`` is what requests may use; the KV cache may hold more (a
    scratch page for padded graph rows). Decode steps go to ``decode_graphs``
    when given (CUDA graphs on the GPU), everything else runs eagerly.
    """

    def __init__(
        self,
        model: LlamaModel,
        kv_cache: KVCache,
        num_pages: int,
        decode_graphs: DecodeReplayer | None = None,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.device = kv_cache.k.device
        self.page_size = kv_cache.page_size
        self._num_pages = num_pages
        self.decode_graphs = decode_graphs

    @property
    def num_pages(self) -> int:
        return self._num_pages

    def forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Returns logits [S, vocab] fp32, one row per chunk that completes its fill, in order."""
        if self.decode_graphs is not None and self.decode_graphs.supports(chunks):
            return self.decode_graphs.forward(chunks)
        batch = self.build_batch(chunks)
        return self.model(batch, self.kv_cache)

    def build_batch(self, chunks: list[ScheduledChunk]) -> ForwardBatch:
        page_size = self.page_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        logits_indices: list[int] = []
        max_pages = max(len(c.request.page_table) for c in chunks)
        page_table = torch.zeros((len(chunks), max_pages), dtype=torch.int32)
        for row, chunk in enumerate(chunks):
            request = chunk.request
            end = chunk.start + chunk.length
            table = request.page_table
            input_ids.extend(request.token_slice(chunk.start, end))
            span = range(chunk.start, end)
            positions.extend(span)
            slots.extend(table[pos // page_size] * page_size + pos % page_size for pos in span)
            query_start.append(query_start[-1] + chunk.length)
            seq_lens.append(end)
            page_table[row, : len(table)] = torch.tensor(table, dtype=torch.int32)
            if chunk.completes_fill:
                logits_indices.append(query_start[-1] - 1)
        device = self.device
        query_lens = [c.length for c in chunks]
        return ForwardBatch(
            input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
            positions=torch.tensor(positions, dtype=torch.int64, device=device),
            query_start_loc=torch.tensor(query_start, dtype=torch.int32, device=device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
            page_table=page_table.to(device),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            logits_indices=torch.tensor(logits_indices, dtype=torch.int64, device=device),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
        )
