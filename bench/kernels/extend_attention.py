"""Prefill/extend attention over paged K/V (kernels/extend_attention.py) against the torch backend."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from bench.kernels.decode_attention import attention_reference
from bench.kernels.harness import (
    BF16,
    DEVICE,
    DTYPE,
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    PAGE,
    TORCH,
    Case,
    Record,
    Sizes,
    SweepRows,
    forward_batch,
)
from radixfair_engine.kernels import extend_attention
from radixfair_engine.kernels.accuracy import poisoned_like, relative_error
from radixfair_engine.kernels.paged_fixtures import random_paged_context

# (sequences, cached prefix, new tokens): chunks resuming from a cache, and fresh long prompts.
SIZES = ((8, 512, 512), (64, 0, 1024))


def cases(size: tuple[int, int, int]) -> list[Case]:
    return [extend_case(*size)]


def extend_case(seqs: int, prefix: int, new: int) -> Case:
    seq_lens, query_lens = [prefix + new] * seqs, [new] * seqs
    ctx = random_paged_context(seq_lens, query_lens, KV_HEADS, HEAD_DIM, PAGE, DTYPE, DEVICE)
    q = torch.randn(seqs * new, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    scale = HEAD_DIM**-0.5
    visible = seqs * (new * prefix + new * (new + 1) / 2)  # (query, key) pairs under the causal mask
    flops = 4.0 * HEADS * HEAD_DIM * visible
    total = (q.numel() * 2 + seqs * (prefix + new) * KV_HEADS * HEAD_DIM * 2) * BF16
    case = Case("extend attention", f"{seqs}x({prefix} cached + {new} new)", total, flops)
    case.impls["ours"] = lambda: extend_attention.extend_attention(
        q, ctx.k_cache, ctx.v_cache, ctx.query_start_loc, ctx.seq_lens, ctx.page_table, new, scale
    )
    fb = forward_batch(ctx, query_lens, seq_lens)
    case.impls["torch backend (per-sequence SDPA)"] = lambda: TORCH.attention(
        q, ctx.k_cache, ctx.v_cache, fb, scale
    )
    return case


def sweep(sweeper: SweepRows, seqs: int = 64, new: int = 1024) -> None:
    ctx = random_paged_context([new] * seqs, [new] * seqs, KV_HEADS, HEAD_DIM, PAGE, DTYPE, DEVICE)
    q = torch.randn(seqs * new, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    flops = 4.0 * HEADS * HEAD_DIM * seqs * new * (new + 1) / 2
    for block_m, block_n in ((64, 64), (128, 64), (64, 128), (128, 128)):
        for warps in (4, 8):
            for stages in (2, 3):

                def extend(
                    m: int = block_m, n: int = block_n, w: int = warps, st: int = stages
                ) -> torch.Tensor:
                    return extend_attention.extend_attention(
                        q, ctx.k_cache, ctx.v_cache, ctx.query_start_loc, ctx.seq_lens, ctx.page_table, new,
                        0.125, block_m=m, block_n=n, num_warps=w, num_stages=st,
                    )  # fmt: skip

                config = f"block_m={block_m} block_n={block_n} warps={warps} stages={stages}"
                sweeper.record(f"extend {seqs}x{new} new", config, extend, q.numel() * 2 * BF16, flops)


def check(dtype: torch.dtype, sizes: Sizes, record: Record) -> None:
    top = sizes.max_context
    # (context after the step, new tokens): fresh prompts, chunks resuming from cached
    # prefixes (mid-page and on page boundaries), decode rows and a one-token prompt.
    batch = [(37, 37), (top // 4, top // 4), (top - 1, top - 1), (1, 1), (top // 2, top // 3), (32, 16)]
    batch += [(top, top // 2 + 1), (top, 1)]
    batch += [(random.randint(2, top), 1) for _ in range(8)]
    seq_lens, query_lens = [s for s, _ in batch], [q for _, q in batch]
    ctx = random_paged_context(seq_lens, query_lens, KV_HEADS, HEAD_DIM, PAGE, dtype, DEVICE)
    q = torch.randn(sum(query_lens), HEADS, HEAD_DIM, dtype=dtype, device=DEVICE)
    out = poisoned_like(q)
    extend_attention.extend_attention(
        q,
        ctx.k_cache,
        ctx.v_cache,
        ctx.query_start_loc,
        ctx.seq_lens,
        ctx.page_table,
        max(query_lens),
        HEAD_DIM**-0.5,
        out=out,
    )
    ref = attention_reference(q, ctx, ctx.query_start_host, seq_lens)
    record("extend_attention", dtype, f"mixed batch, T={q.shape[0]}", relative_error(out, ref))


def launches(tokens: int) -> list[tuple[str, Callable[[], object]]]:
    """Four sequences of 32 new tokens over 64-token contexts (``tokens`` is not used)."""
    ctx = random_paged_context([64] * 4, [32] * 4, KV_HEADS, HEAD_DIM, PAGE, DTYPE)
    q = torch.randn(128, HEADS, HEAD_DIM, dtype=DTYPE)
    return [
        (
            "extend",
            lambda: extend_attention.extend_attention(
                q, ctx.k_cache, ctx.v_cache, ctx.query_start_loc, ctx.seq_lens, ctx.page_table, 32, 0.125
            ),
        )
    ]
