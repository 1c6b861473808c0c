"""Cascade decode attention (kernels/cascade_decode_attention.py): GPU check and compile launches.

Its timing against plain decode lives in bench/kernels/gpu_cascade_bench.py (whole decode steps with
shared prefixes), which this layout leaves where it is.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from bench.kernels.decode_attention import attention_reference
from bench.kernels.harness import DEVICE, DTYPE, HEAD_DIM, HEADS, KV_HEADS, PAGE, Record, Sizes
from radixfair_engine.kernels import cascade_decode_attention
from radixfair_engine.kernels.accuracy import poisoned_like, relative_error
from radixfair_engine.kernels.paged_fixtures import random_shared_prefix_context
from radixfair_engine.kernels.prefix_groups import PrefixSharingConfig, find_prefix_groups

TIMED_BY = "bench/kernels/gpu_cascade_bench.py"


def check(dtype: torch.dtype, sizes: Sizes, record: Record) -> None:
    """Cascade decode against fp64 plain attention: ragged groups (two items), a prefix ending
    mid-page, a group of one, sequences in no group, padding rows; with and without own splits."""
    top = sizes.max_context
    big, small = top // 2 + 5, top // 4 + 3  # shared tokens: neither ends on a page boundary
    seq_lens = [big + random.randint(1, top // 2) for _ in range(40)]  # group 0: 40 sequences
    seq_lens += [small + random.randint(1, top // 4) for _ in range(5)]  # group 1
    seq_lens += [big + 9, random.randint(1, top), random.randint(1, top), 0, 0]  # group of one, none, pads
    group_of = [0] * 40 + [1] * 5 + [2, -1, -1, -1, -1]
    ctx = random_shared_prefix_context(
        seq_lens, group_of, [big, small, big], KV_HEADS, HEAD_DIM, PAGE, dtype, DEVICE
    )
    q = torch.randn(len(seq_lens), HEADS, HEAD_DIM, dtype=dtype, device=DEVICE)
    ref = attention_reference(q, ctx, list(range(len(seq_lens) + 1)), seq_lens)
    for block_m in (32, 64, 128):
        sharing = PrefixSharingConfig(min_saved_tokens=1, block_m=block_m)
        host = find_prefix_groups(
            ctx.page_table.cpu().numpy(), torch.tensor(seq_lens).numpy(), PAGE, HEADS // KV_HEADS, sharing
        )
        if host is None:
            record("cascade_decode", dtype, f"block_m={block_m}: no group found", float("inf"))
            continue
        groups = host.to_device(lambda t: t.to(DEVICE), capacity=len(seq_lens))
        for splits, prefix_splits in ((1, 1), (1, 8), (4, 2)):
            out = poisoned_like(q)
            cascade_decode_attention.cascade_decode_attention(
                q,
                ctx.k_cache,
                ctx.v_cache,
                ctx.page_table,
                ctx.seq_lens,
                groups,
                HEAD_DIM**-0.5,
                out=out,
                num_splits=splits,
                prefix_splits=prefix_splits,
                prefix_num_warps=8 if block_m == 128 else 4,
            )
            error = relative_error(out, ref)
            if not bool((out[-2:] == 0).all()):
                error = float("inf")
            grouped = int((host.seq_prefix_len > 0).sum())
            case = f"B={len(seq_lens)}, {grouped} grouped, block_m={block_m}, splits={splits}/{prefix_splits}"
            record("cascade_decode", dtype, case, error)


def launches(tokens: int) -> list[tuple[str, Callable[[], object]]]:
    """Two groups of 8 sharing 96 tokens each, own tails of 17 (``tokens`` is not used)."""
    seq_lens = [96 + 17] * 16
    ctx = random_shared_prefix_context(seq_lens, [0] * 8 + [1] * 8, [96, 96], KV_HEADS, HEAD_DIM, PAGE, DTYPE)
    sharing = PrefixSharingConfig(min_saved_tokens=1)
    host = find_prefix_groups(
        ctx.page_table.numpy(), torch.tensor(seq_lens).numpy(), PAGE, HEADS // KV_HEADS, sharing
    )
    assert host is not None, "the two groups share whole pages, so grouping must find them"
    groups = host.to_device(lambda t: t, capacity=len(seq_lens))
    q = torch.randn(len(seq_lens), HEADS, HEAD_DIM, dtype=DTYPE)
    return [
        (
            "cascade",
            lambda: cascade_decode_attention.cascade_decode_attention(
                q, ctx.k_cache, ctx.v_cache, ctx.page_table, ctx.seq_lens, groups, 0.125
            ),
        )
    ]
