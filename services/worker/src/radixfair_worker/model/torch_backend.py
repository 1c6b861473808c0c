"""Reference kernel backend in plain torch ops; runs on CPU and GPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radixfair_worker.model.backend import ForwardBatch


class TorchBackend:
    name = "torch"

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        variance = x32.pow(2).mean(-1, keepdim=True)
        return weight * (x32 * torch.rsqrt(variance + eps)).to(x.dtype)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        summed = x + residual
        return self.rms_norm(summed, weight, eps), summed

    def apply_rope(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        half = cos_sin.shape[-1] // 2
        table = cos_sin[positions]
        cos = torch.cat([table[:, :half], table[:, :half]], dim=-1).unsqueeze(1)
        sin = torch.cat([table[:, half:], table[:, half:]], dim=-1).unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

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
        q, k = self.apply_rope(q, k, positions, cos_sin)
        self.write_kv(k, v, k_cache, v_cache, slot_mapping)
        return q

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def write_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        k_cache.view(-1, *k_cache.shape[2:])[slot_mapping] = k.to(k_cache.dtype)
        v_cache.view(-1, *v_cache.shape[2:])[slot_mapping] = v.to(v_cache.dtype)

    def attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        page_size = k_cache.shape[1]
        out = torch.empty_like(q)
        start = 0
        for b, (query_len, seq_len) in enumerate(zip(batch.query_lens_host, batch.seq_lens_host)):
            num_pages = -(-seq_len // page_size)
            pages = batch.page_table[b, :num_pages].long()
            keys = k_cache[pages].flatten(0, 1)[:seq_len]  # [S, Hkv, D]
            values = v_cache[pages].flatten(0, 1)[:seq_len]
            queries = q[start : start + query_len]
            out[start : start + query_len] = _causal_gqa(queries, keys, values, scale)
            start += query_len
        return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def _causal_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [L, Hq, D] are the last L positions of a context k, v [S, Hkv, D]."""
    query_len, context_len = q.shape[0], k.shape[0]
    # Query i sits at position context_len - query_len + i.
    rows = torch.arange(query_len, device=q.device).unsqueeze(1) + (context_len - query_len)
    cols = torch.arange(context_len, device=q.device).unsqueeze(0)
    mask = cols <= rows
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1),
        v.transpose(0, 1),
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.transpose(0, 1)
