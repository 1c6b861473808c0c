"""Turns one step's scheduled chunks into a ForwardBatch, runs the model and samples its next tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from radixfair_engine.kernels.prefix_groups import PrefixGroups, PrefixSharingConfig, find_prefix_groups
from radixfair_engine.model.backend import ForwardBatch
from radixfair_engine.model.llama import KVCache, LlamaModel
from radixfair_engine.request import Request
from radixfair_engine.sampler import SampledRows, Sampler


class ScheduledChunk(NamedTuple):
    """Tokens ``start:start+length`` of ``request.fill_ids`` computed this step.

    A NamedTuple, not a frozen dataclass: the engine makes one per running request per step, and
    at batch 128 the dataclass's construction alone was a visible share of the host's step time.
    """

    request: Request
    start: int
    length: int

    @property
    def completes_fill(self) -> bool:
        """True when this chunk reaches the end of fill_ids, so a next token is sampled."""
        return self.start + self.length == self.request.num_tokens


@dataclass(frozen=True)
class CarriedTokens:
    """Input ids that only the device knows yet: the previous step's sampled tokens.

    With overlap scheduling a decode chunk's input is often the token the
    still-running previous step sampled; the host has a placeholder there.
    ``tokens`` [S_prev] int64 on the model's device is that step's sampled
    ids; ``rows[i]`` is the row of ``tokens`` that is the last input id of
    chunk ``i`` (a placeholder is only ever a request's newest token), or -1
    where the chunk's ids are all known.
    """

    tokens: torch.Tensor
    rows: tuple[int, ...]


def gather_carried(input_ids: torch.Tensor, carried: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """One device gather: ``source[j]`` is j for a known id, or len(input_ids) + r for ``carried[r]``.

    input_ids [T] int64 (placeholders where carried), carried [S_prev] int64, source [T] int64.
    """
    return torch.cat((input_ids, carried)).index_select(0, source)


class StepRunner(Protocol):
    """What the engine needs from whatever computes a step: the model, or a simulator's cost model.

    The runner owns the sampler (as nano-vllm's and SGLang's model runners do): ``run`` returns
    the step's sampled ids, still on the device, not its logits. ``carry`` is only passed with
    overlap scheduling on; runners used without it (the simulator's) never see one.
    """

    page_size: int

    @property
    def num_pages(self) -> int: ...

    def forward(self, chunks: list[ScheduledChunk], carry: CarriedTokens | None = None) -> torch.Tensor:
        """Logits [S, vocab], one row per chunk that completes its fill, in chunk order."""
        ...

    def run(
        self, chunks: list[ScheduledChunk], sampled: list[Request], carry: CarriedTokens | None = None
    ) -> SampledRows:
        """The step: ``forward``, then one token per row drawn for ``sampled`` (the requests of the
        chunks that complete their fill, in order): row r is token len(output_ids) of sampled[r]."""
        ...

    def forget(self, request_id: str) -> None:
        """Drops what the runner keeps for a finished request (its sampling seed)."""
        ...


class SamplingRunner:
    """The sampling half of a StepRunner, for a runner whose ``forward`` gives logits.

    Subclasses provide ``forward``; ``sampler`` (batched on the device, per-request seeds that do
    not depend on the batch's composition: sampler.Sampler) is the runner's own. A runner that
    wraps another (a test's fault injection) shares the wrapped one's sampler, so seeds carry over.
    """

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.sampler = sampler if sampler is not None else Sampler()

    def forward(self, chunks: list[ScheduledChunk], carry: CarriedTokens | None = None) -> torch.Tensor:
        raise NotImplementedError

    def run(
        self, chunks: list[ScheduledChunk], sampled: list[Request], carry: CarriedTokens | None = None
    ) -> SampledRows:
        # Only overlap passes ``carry``, so runners without overlap support keep their signature.
        logits = self.forward(chunks) if carry is None else self.forward(chunks, carry)
        return self.sampler.sample_requests(logits, sampled)

    def forget(self, request_id: str) -> None:
        self.sampler.forget(request_id)


class DecodeReplayer(Protocol):
    def supports(self, chunks: list[ScheduledChunk]) -> bool: ...

    def forward(self, chunks: list[ScheduledChunk], carry: CarriedTokens | None = None) -> torch.Tensor: ...


class ModelRunner(SamplingRunner):
    """Owns the model, its KV pages and the sampler; runs one forward pass per engine step.

    ``num_pages`` is what requests may use; the KV cache may hold more (a
    scratch page for padded graph rows). Decode steps go to ``decode_graphs``
    when given (CUDA graphs on the GPU), everything else runs eagerly. An eager
    decode batch carries the groups of sequences sharing leading pages
    (``prefix_sharing``) when the backend reads a shared prefix once per group.
    """

    def __init__(
        self,
        model: LlamaModel,
        kv_cache: KVCache,
        num_pages: int,
        decode_graphs: DecodeReplayer | None = None,
        prefix_sharing: PrefixSharingConfig | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.kv_cache = kv_cache
        self.device = kv_cache.k.device
        self.page_size = kv_cache.page_size
        self._num_pages = num_pages
        self.decode_graphs = decode_graphs
        sharing = prefix_sharing or PrefixSharingConfig()
        self.prefix_sharing = sharing if model.backend.reads_shared_prefixes else None
        self._gqa = model.config.num_attention_heads // model.config.num_key_value_heads

    @property
    def num_pages(self) -> int:
        return self._num_pages

    def forward(self, chunks: list[ScheduledChunk], carry: CarriedTokens | None = None) -> torch.Tensor:
        """Returns logits [S, vocab] fp32, one row per chunk that completes its fill, in order."""
        if self.decode_graphs is not None and self.decode_graphs.supports(chunks):
            return self.decode_graphs.forward(chunks, carry)
        batch = self.build_batch(chunks, carry)
        return self.model(batch, self.kv_cache)

    def build_batch(self, chunks: list[ScheduledChunk], carry: CarriedTokens | None = None) -> ForwardBatch:
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
        query_lens = [c.length for c in chunks]
        ids = self._upload(torch.tensor(input_ids, dtype=torch.int64))
        if carry is not None:
            source = torch.arange(len(input_ids), dtype=torch.int64)
            for row, carried_row in enumerate(carry.rows):
                if carried_row >= 0:
                    source[query_start[row + 1] - 1] = len(input_ids) + carried_row
            ids = gather_carried(ids, carry.tokens, self._upload(source))
        return ForwardBatch(
            input_ids=ids,
            positions=self._upload(torch.tensor(positions, dtype=torch.int64)),
            query_start_loc=self._upload(torch.tensor(query_start, dtype=torch.int32)),
            seq_lens=self._upload(torch.tensor(seq_lens, dtype=torch.int32)),
            page_table=self._upload(page_table),
            slot_mapping=self._upload(torch.tensor(slots, dtype=torch.int64)),
            logits_indices=self._upload(torch.tensor(logits_indices, dtype=torch.int64)),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
            prefix_groups=self._prefix_groups(page_table, seq_lens) if max(query_lens) == 1 else None,
        )

    def _prefix_groups(self, page_table: torch.Tensor, seq_lens: list[int]) -> PrefixGroups | None:
        if self.prefix_sharing is None:
            return None
        host = find_prefix_groups(
            page_table.numpy(), np.array(seq_lens), self.page_size, self._gqa, self.prefix_sharing
        )
        return None if host is None else host.to_device(self._upload)

    def _upload(self, host: torch.Tensor) -> torch.Tensor:
        """Host tensor to the model's device without waiting for the device to go idle.

        A plain copy from pageable memory synchronises the stream, which would make the host
        wait for the step still running there; a pinned, non-blocking copy does not (the
        caching host allocator keeps the pinned block alive until the copy has run).
        """
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)
