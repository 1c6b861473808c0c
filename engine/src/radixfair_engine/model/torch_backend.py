"""Reference kernel backend in plain torch ops; runs on CPU and GPU, and needs no triton."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from radixfair_engine.kernels.registry import kernel
from radixfair_engine.model.backend import ForwardBatch


class TorchBackend:
    """Implements ``KernelBackend`` with the kernels' torch references and one padded SDPA per step."""

    name = "torch"
    # Its padded SDPA reads every sequence's context; grouping would only cost host time.
    reads_shared_prefixes = False

    # The plain operations are the kernels' torch references (kernels/registry.py's table pairs each
    # Triton launcher with its reference), so this backend is the reference the kernels match.
    rms_norm = staticmethod(kernel("rms_norm").reference)
    add_rms_norm = staticmethod(kernel("add_rms_norm").reference)
    apply_rope = staticmethod(kernel("apply_rope").reference)
    rope_and_write_kv = staticmethod(kernel("rope_and_write_kv").reference)
    silu_and_mul = staticmethod(kernel("silu_and_mul").reference)
    write_kv = staticmethod(kernel("write_kv").reference)

    # The reference runs every operation on its own: no fused forms.
    def norm_qkv_rope_write_kv(self, *args: object) -> None:
        return None

    def norm_gate_up_silu(self, *args: object) -> None:
        return None

    def norm_lm_head(self, *args: object) -> None:
        return None

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> None:
        return None

    # QuantizedLinear's own dequantizing forward is the reference.
    def quantized_linear(self, *args: object) -> None:
        return None

    def attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        plan = batch.backend_cache.get("torch_attention")
        if plan is None:
            plan = batch.backend_cache["torch_attention"] = _AttentionPlan.build(
                batch, k_cache.shape[1], q.device
            )
        slots_k = k_cache.view(-1, *k_cache.shape[2:])
        slots_v = v_cache.view(-1, *v_cache.shape[2:])
        keys = slots_k[plan.key_slots].transpose(1, 2)  # [B, Hkv, S, D]
        values = slots_v[plan.key_slots].transpose(1, 2)
        queries = q.new_zeros((plan.batch, plan.max_query, *q.shape[1:]))
        queries[plan.query_rows, plan.query_cols] = q
        out = F.scaled_dot_product_attention(
            queries.transpose(1, 2),
            keys,
            values,
            attn_mask=plan.mask,
            scale=scale,
            enable_gqa=q.shape[1] != k_cache.shape[2],
        )
        return out.transpose(1, 2)[plan.query_rows, plan.query_cols]


@dataclass(frozen=True)
class _AttentionPlan:
    """Gather indices and mask that turn a ragged paged batch into one padded SDPA call.

    Sequence b's context is padded to the batch's longest (S) and its new
    tokens to the longest query (L); the mask is causal within each sequence
    and hides the padding. Built once per forward pass, used by every layer.
    """

    batch: int
    max_query: int
    key_slots: torch.Tensor  # [B, S] flat cache slots (padding points at slot 0)
    query_rows: torch.Tensor  # [T] sequence of each new token
    query_cols: torch.Tensor  # [T] index of each new token within its sequence's queries
    mask: torch.Tensor  # [B, 1, L, S] bool, True where attention is allowed

    @classmethod
    def build(cls, batch: ForwardBatch, page_size: int, device: torch.device) -> _AttentionPlan:
        seq_lens = torch.tensor(batch.seq_lens_host, device=device)
        query_lens = torch.tensor(batch.query_lens_host, device=device)
        count, longest, max_query = len(batch.seq_lens_host), batch.max_seq_len, batch.max_query_len
        positions = torch.arange(longest, device=device)
        pages = batch.page_table.long()[:, positions // page_size]
        key_slots = pages * page_size + positions % page_size
        valid = positions[None, :] < seq_lens[:, None]
        key_slots = torch.where(valid, key_slots, torch.zeros_like(key_slots))
        query_rows = torch.repeat_interleave(torch.arange(count, device=device), query_lens)
        starts = torch.cumsum(query_lens, 0) - query_lens
        query_cols = torch.arange(len(query_rows), device=device) - starts[query_rows]
        # Query i of sequence b sits at position seq_len - query_len + i.
        query_pos = (seq_lens - query_lens)[:, None] + torch.arange(max_query, device=device)[None, :]
        mask = (positions[None, None, :] <= query_pos[:, :, None]) & valid[:, None, :]
        return cls(count, max_query, key_slots, query_rows, query_cols, mask[:, None])
