"""Decode steps replayed as captured CUDA graphs.

A decode step of a small model is dozens of short kernels; launched one by
one from Python, the launch overhead outweighs the work. Each supported batch
size is captured once into a CUDA graph over static input buffers, and a
decode step of n sequences copies its inputs into those buffers and replays
the graph of the smallest captured size >= n. Padding rows have context
length 0 (the attention kernel writes zeros for them) and store their K/V
into a scratch page that no request owns.

With prefix sharing on (and a backend that reads shared prefixes), each size is
captured twice: with plain decode attention and with cascade attention over
static group buffers. The groups change every step; the host finds them while
staging, and replays the cascade graph only when some group pays. The cascade
kernels' grids depend on buffer sizes only, so one graph serves any grouping.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from radixfair_engine.kernels.prefix_groups import PrefixGroups, PrefixSharingConfig, find_prefix_groups
from radixfair_engine.model.backend import ForwardBatch
from radixfair_engine.model.llama import KVCache, LlamaModel
from radixfair_engine.model_runner import CarriedTokens, ScheduledChunk, gather_carried


@dataclass(frozen=True)
class _Staged:
    """A pinned host buffer and its numpy view (numpy writes skip torch's per-element overhead)."""

    tensor: torch.Tensor
    array: np.ndarray


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor


# Rows of the static group table: one int32 entry per batch row each (items never outnumber rows).
_GROUP_BUFFERS = (
    "seq_prefix_len",
    "item_row",
    "item_prefix_len",
    "item_member_start",
    "item_member_count",
    "members",
)


class DecodeGraphRunner:
    """Captures ``model``'s decode forward for each of ``batch_sizes`` and replays it."""

    def __init__(
        self,
        model: LlamaModel,
        kv_cache: KVCache,
        scratch_page: int,
        max_pages_per_seq: int,
        batch_sizes: tuple[int, ...],
        prefix_sharing: PrefixSharingConfig | None = None,
    ) -> None:
        self.model = model
        sharing = prefix_sharing or PrefixSharingConfig()
        self.prefix_sharing = sharing if sharing.enabled and model.backend.reads_shared_prefixes else None
        self._gqa = model.config.num_attention_heads // model.config.num_key_value_heads
        self.kv_cache = kv_cache
        self.page_size = kv_cache.page_size
        self.batch_sizes = sorted(batch_sizes)
        self.max_batch = self.batch_sizes[-1]
        self.scratch_slot = scratch_page * self.page_size
        self.max_pages = max_pages_per_seq
        device = kv_cache.k.device
        biggest = self.max_batch
        self._input_ids = torch.zeros(biggest, dtype=torch.int64, device=device)
        self._positions = torch.zeros(biggest, dtype=torch.int64, device=device)
        self._seq_lens = torch.zeros(biggest, dtype=torch.int32, device=device)
        self._slots = torch.full((biggest,), self.scratch_slot, dtype=torch.int64, device=device)
        self._page_table = torch.zeros((biggest, max_pages_per_seq), dtype=torch.int32, device=device)
        self._query_start = torch.arange(biggest + 1, dtype=torch.int32, device=device)
        self._logits_indices = torch.arange(biggest, dtype=torch.int64, device=device)
        # Where a row's input id comes from when the previous step's token is carried (not graphed).
        self._gather_source = torch.zeros(biggest, dtype=torch.int64, device=device)
        # One table, so a grouped step uploads its groups in one copy (host time per step counts).
        self._group_table = torch.zeros((len(_GROUP_BUFFERS), biggest), dtype=torch.int32, device=device)
        self._groups = {name: self._group_table[row] for row, name in enumerate(_GROUP_BUFFERS)}
        self._grouped = False  # whether the batch staged last has a group that pays
        # Pinned host staging, filled with numpy and copied up in one transfer per buffer. Two
        # sets, used in turn: with overlap scheduling the host stages step n+1 while step n's
        # non-blocking copies may not have run yet; by the time it stages n+2 the engine has
        # waited for step n, so two sets are enough.
        self._staging = [self._new_staging(), self._new_staging()]
        # Per staging set and row: the page list (and its length) whose ids the row holds.
        self._table_owners: list[list[tuple[list[int], int] | None]] = [[None] * biggest, [None] * biggest]
        self._turn = 0
        self._graphs: dict[int, _Captured] = {}
        self._cascade_graphs: dict[int, _Captured] = {}
        self._capture_all()

    def supports(self, chunks: list[ScheduledChunk]) -> bool:
        return len(chunks) <= self.max_batch and all(c.length == 1 for c in chunks)

    def forward(self, chunks: list[ScheduledChunk], carry: CarriedTokens | None = None) -> torch.Tensor:
        """Logits [n, vocab] for n decode chunks; ``carry`` supplies inputs the host does not know yet."""
        count = len(chunks)
        size = self.batch_sizes[bisect.bisect_left(self.batch_sizes, count)]
        turn = self._turn
        self._turn ^= 1
        staging = self._staging[turn]
        self._stage(chunks, size, staging, self._table_owners[turn])
        for name, buffer in self._device_buffers().items():
            buffer[:size].copy_(staging[name].tensor[:size], non_blocking=True)
        if self._grouped:
            self._group_table.copy_(staging["group_table"].tensor, non_blocking=True)
        if carry is not None:
            self._gather_carried(size, carry, staging["gather_source"])
        return self._replay(size)[:count]

    def _replay(self, size: int) -> torch.Tensor:
        """Runs the captured graph of batch ``size`` over the static buffers; its logits [size, vocab]."""
        captured = (self._cascade_graphs if self._grouped else self._graphs)[size]
        captured.graph.replay()
        return captured.logits

    def _gather_carried(self, size: int, carry: CarriedTokens, source: _Staged) -> None:
        """Overwrites the placeholder input ids with the previous step's tokens, on the device."""
        rows = source.array
        carried = np.asarray(carry.rows, dtype=np.int64)
        count = len(carried)
        identity = np.arange(size)
        rows[:count] = np.where(carried >= 0, size + carried, identity[:count])
        rows[count:size] = identity[count:]
        device_source = self._gather_source[:size]
        device_source.copy_(source.tensor[:size], non_blocking=True)
        ids = self._input_ids[:size]
        ids.copy_(gather_carried(ids, carry.tokens, device_source))

    def _stage(
        self,
        chunks: list[ScheduledChunk],
        size: int,
        staging: dict[str, _Staged],
        table_owners: list[tuple[list[int], int] | None],
    ) -> None:
        """Writes the batch into pinned staging: per-row values as lists (one numpy conversion per
        buffer, not one per element), and a page-table row only when it changed since this staging
        set last held it (a row changes when its request does or gains a page, every page_size
        steps): this is host time of every decode step, which at batch 128 bounds the step."""
        ids, positions, seq_lens = (staging[n].array for n in ("input_ids", "positions", "seq_lens"))
        slots, table = staging["slots"].array, staging["page_table"].array
        page_size = self.page_size
        id_list, position_list, slot_list = [], [], []
        for row, (request, position, _) in enumerate(chunks):
            output_ids = request.output_ids
            id_list.append(output_ids[-1] if output_ids else request.prompt_ids[-1])
            position_list.append(position)
            pages = request.page_table
            slot_list.append(pages[position // page_size] * page_size + position % page_size)
            owner = table_owners[row]
            # Identity, not equality: PageBinder replaces a table it edits, so a held list only grows,
            # and only its new tail is written (a 1,088-token prompt's row is 68 pages; converting
            # the whole list every time it gains one was most of this loop on shared prefixes).
            if owner is None or owner[0] is not pages:
                table[row, : len(pages)] = pages
                table_owners[row] = (pages, len(pages))
            elif owner[1] != len(pages):
                table[row, owner[1] : len(pages)] = pages[owner[1] :]
                table_owners[row] = (pages, len(pages))
        count = len(chunks)
        ids[:count] = id_list
        positions[:count] = position_list
        seq_lens[:count] = positions[:count] + 1
        slots[:count] = slot_list
        # A padding row may hold a stale placeholder (-1) from an earlier carried step; the
        # embedding lookup would fault on it.
        ids[count:size] = 0
        seq_lens[count:size] = 0
        slots[count:size] = self.scratch_slot
        positions[count:size] = 0
        self._grouped = self._stage_groups(size, staging)

    def _stage_groups(self, size: int, staging: dict[str, _Staged]) -> bool:
        """Finds this batch's prefix groups and stages them; False when none pays (plain graph)."""
        if self.prefix_sharing is None:
            return False
        table, seq_lens = staging["page_table"].array[:size], staging["seq_lens"].array[:size]
        host = find_prefix_groups(table, seq_lens, self.page_size, self._gqa, self.prefix_sharing)
        if host is None:
            return False
        table_rows = staging["group_table"].array
        for row, name in enumerate(_GROUP_BUFFERS):
            values = getattr(host, name)
            table_rows[row, : len(values)] = values
            table_rows[row, len(values) : size] = 0  # empty items; members past the grouped ones are unread
        return True

    def _new_staging(self) -> dict[str, _Staged]:
        buffers = {**self._device_buffers(), "gather_source": self._gather_source}
        if self.prefix_sharing is not None:
            buffers["group_table"] = self._group_table
        staging = {}
        for name, buffer in buffers.items():
            tensor = torch.zeros(buffer.shape, dtype=buffer.dtype, pin_memory=buffer.is_cuda)
            staging[name] = _Staged(tensor, tensor.numpy())
        return staging

    def _device_buffers(self) -> dict[str, torch.Tensor]:
        buffers = {
            "input_ids": self._input_ids,
            "positions": self._positions,
            "seq_lens": self._seq_lens,
            "slots": self._slots,
            "page_table": self._page_table,
        }
        return buffers

    def _static_groups(self, size: int) -> PrefixGroups:
        """Groups over the static buffers, with the capture's bounds as the launch-shape facts."""
        assert self.prefix_sharing is not None
        max_seq_len = self.max_pages * self.page_size
        per_item = max(1, self.prefix_sharing.block_m // self._gqa)
        buffers = {name: buffer[:size] for name, buffer in self._groups.items()}
        return PrefixGroups(
            **buffers,
            # One group of the whole batch is the case worth sizing the shared part's splits for.
            num_items=-(-size // per_item),
            max_prefix_len=max_seq_len,
            max_own_len=max_seq_len,
            block_m=self.prefix_sharing.block_m,
            concurrent_parts=self.prefix_sharing.concurrent_parts,
        )

    def _batch(self, size: int, grouped: bool = False) -> ForwardBatch:
        max_seq_len = self.max_pages * self.page_size
        return ForwardBatch(
            input_ids=self._input_ids[:size],
            positions=self._positions[:size],
            query_start_loc=self._query_start[: size + 1],
            seq_lens=self._seq_lens[:size],
            page_table=self._page_table[:size],
            slot_mapping=self._slots[:size],
            logits_indices=self._logits_indices[:size],
            max_query_len=1,
            max_seq_len=max_seq_len,
            query_lens_host=[1] * size,
            seq_lens_host=[max_seq_len] * size,
            prefix_groups=self._static_groups(size) if grouped else None,
        )

    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        # Largest first, so smaller graphs reuse the largest one's memory pool.
        for size in reversed(self.batch_sizes):
            self._graphs[size] = self._capture(self._batch(size), pool, stream)
            if self.prefix_sharing is not None:
                # The group buffers are zero here: no sequence shares, every item is empty.
                self._cascade_graphs[size] = self._capture(self._batch(size, grouped=True), pool, stream)
        torch.cuda.synchronize()

    def _capture(self, batch: ForwardBatch, pool: tuple[int, int], stream: torch.cuda.Stream) -> _Captured:
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compile and autotune outside the capture
                self.model(batch, self.kv_cache)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = self.model(batch, self.kv_cache)
        return _Captured(graph, logits)


def capture_sizes(limit: int) -> tuple[int, ...]:
    """Batch sizes worth a graph: every size to 8, then steps that keep padding under ~25%."""
    sizes = [1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256]
    return tuple(s for s in sizes if s <= limit) or (1,)
