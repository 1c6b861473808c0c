"""GPU kernel backend: the KernelBackend operations as our own Triton kernels.

Matrix products stay in cuBLAS (the model calls ``F.linear``); everything else in
a layer runs here. Besides the protocol's operations it offers
``rope_and_write_kv``, one launch for RoPE plus the K/V page store, which the
model can call instead of ``apply_rope`` followed by ``write_kv``.
"""

from __future__ import annotations

import torch

from radixfair_worker.kernels.cascade_decode_attention import cascade_decode_attention, choose_prefix_splits
from radixfair_worker.kernels.decode_attention import choose_num_splits, paged_decode_attention
from radixfair_worker.kernels.extend_attention import extend_attention
from radixfair_worker.kernels.prefix_groups import PrefixGroups
from radixfair_worker.kernels.rms_norm import add_rms_norm, rms_norm
from radixfair_worker.kernels.rope import apply_rope, rope_and_write_kv
from radixfair_worker.kernels.swiglu import silu_and_mul
from radixfair_worker.kernels.write_kv import write_kv
from radixfair_worker.model.backend import ForwardBatch


class TritonBackend:
    """Implements ``KernelBackend`` with the kernels in ``radixfair_worker.kernels``.

    ``num_sms`` sizes the decode split heuristic; it defaults to the current
    CUDA device's multiprocessor count (and to 1 on CPU, the interpreter's case).
    """

    name = "triton"
    reads_shared_prefixes = True

    def __init__(self, num_sms: int | None = None) -> None:
        if num_sms is None:
            num_sms = (
                torch.cuda.get_device_properties().multi_processor_count if torch.cuda.is_available() else 1
            )
        self.num_sms = num_sms

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm(x, weight, eps)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm(x, residual, weight, eps)

    def apply_rope(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_rope(q, k, positions, cos_sin)

    def rope_and_write_kv(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """Rotates q in place and stores rotated k and v in the caches; returns q (k is left as it was)."""
        return rope_and_write_kv(q, k, v, positions, cos_sin, k_cache, v_cache, slot_mapping)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(gate_up)

    def write_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        write_kv(k, v, k_cache, v_cache, slot_mapping)

    def attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        if batch.is_decode_only and q.shape[0] == batch.num_sequences:
            groups = batch.prefix_groups
            if groups is not None:
                return self._cascade_decode(q, k_cache, v_cache, batch, groups, scale)
            splits = choose_num_splits(batch.num_sequences, k_cache.shape[2], batch.max_seq_len, self.num_sms)
            return paged_decode_attention(
                q, k_cache, v_cache, batch.page_table, batch.seq_lens, scale, num_splits=splits
            )
        return extend_attention(
            q,
            k_cache,
            v_cache,
            batch.query_start_loc,
            batch.seq_lens,
            batch.page_table,
            batch.max_query_len,
            scale,
        )

    def _cascade_decode(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
        groups: PrefixGroups,
        scale: float,
    ) -> torch.Tensor:
        """Decode with each group's shared prefix read once (kernels.cascade_decode_attention)."""
        num_kv_heads = k_cache.shape[2]
        own_splits = choose_num_splits(batch.num_sequences, num_kv_heads, groups.max_own_len, self.num_sms)
        prefix_splits = choose_prefix_splits(
            groups.num_items, num_kv_heads, groups.max_prefix_len, self.num_sms
        )
        return cascade_decode_attention(
            q,
            k_cache,
            v_cache,
            batch.page_table,
            batch.seq_lens,
            groups,
            scale,
            num_splits=own_splits,
            prefix_splits=prefix_splits,
            concurrent=groups.concurrent_parts,
        )
