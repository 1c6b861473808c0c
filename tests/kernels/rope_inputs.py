"""Inputs the RoPE and K/V-write kernel tests share: a cos/sin table and q, k, v as the model makes them."""

from __future__ import annotations

import torch

Q_HEADS, KV_HEADS, HEAD_DIM = 6, 2, 16
MAX_POSITIONS = 64


def rope_table(head_dim: int = HEAD_DIM, theta: float = 10000.0) -> torch.Tensor:
    """[MAX_POSITIONS, head_dim] float32: cos of each position's angles, then sin."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.outer(torch.arange(MAX_POSITIONS).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def fused_qkv(tokens: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as the model makes them: strided views into one [T, (Hq + 2 Hkv) * D] projection."""
    qkv = torch.randn(tokens, (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=dtype)
    q, k, v = qkv.split([Q_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    return (
        q.view(tokens, Q_HEADS, HEAD_DIM),
        k.view(tokens, KV_HEADS, HEAD_DIM),
        v.view(tokens, KV_HEADS, HEAD_DIM),
    )
