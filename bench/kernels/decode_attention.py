"""Paged decode attention (kernels/decode_attention.py) against gather + SDPA and the torch backend."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

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
    compiled,
    forward_batch,
)
from radixfair_engine.kernels import decode_attention
from radixfair_engine.kernels.accuracy import poisoned_like, relative_error
from radixfair_engine.kernels.paged_fixtures import random_paged_context
from radixfair_engine.kernels.reference import paged_attention_reference

SIZES = ((128, 1024),)  # (batch, context): a decode step of 128 sequences


def cases(size: tuple[int, int]) -> list[Case]:
    return [decode_case(*size)]


def decode_case(batch: int = 128, context: int = 1024, rotate: int = 4) -> Case:
    """``rotate`` independent contexts, used in turn, so that even CUDA-graph replays (which do
    not flush the L2) read their K/V from DRAM: 4 x 101 MB against a 50 MB L2."""
    contexts = [
        random_paged_context([context] * batch, [1] * batch, KV_HEADS, HEAD_DIM, PAGE, DTYPE, DEVICE)
        for _ in range(rotate)
    ]
    queries = [torch.randn(batch, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE) for _ in range(rotate)]
    scale = HEAD_DIM**-0.5
    kv_bytes = batch * context * KV_HEADS * HEAD_DIM * BF16 * 2
    total = kv_bytes + batch * HEADS * HEAD_DIM * BF16 * 2 + contexts[0].page_table.numel() * 4
    flops = 4.0 * batch * HEADS * context * HEAD_DIM
    case = Case("decode attention", f"B={batch} ctx={context}", total, flops)
    sms = torch.cuda.get_device_properties().multi_processor_count
    auto = decode_attention.choose_num_splits(batch, KV_HEADS, context, sms)
    pages = context // PAGE

    def rotating(step: Callable[[int], torch.Tensor]) -> Callable[[], torch.Tensor]:
        calls = [0]  # each implementation starts at context 0, so first outputs compare

        def run() -> torch.Tensor:
            calls[0] += 1
            return step((calls[0] - 1) % rotate)

        return run

    def ours(i: int, splits: int = auto) -> torch.Tensor:
        ctx = contexts[i]
        return decode_attention.paged_decode_attention(
            queries[i], ctx.k_cache, ctx.v_cache, ctx.page_table, ctx.seq_lens, scale, num_splits=splits
        )

    def gather_sdpa(i: int) -> torch.Tensor:
        # The careful plain-torch way: gather each sequence's pages, then one batched SDPA.
        ctx = contexts[i]
        table = ctx.page_table[:, :pages].long()
        keys = ctx.k_cache[table].view(batch, context, KV_HEADS, HEAD_DIM).transpose(1, 2)
        values = ctx.v_cache[table].view(batch, context, KV_HEADS, HEAD_DIM).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(
            queries[i].unsqueeze(2), keys, values, scale=scale, enable_gqa=True
        )
        return out.squeeze(2)

    batches = [forward_batch(ctx, [1] * batch, [context] * batch) for ctx in contexts]
    case.impls[f"ours (splits={auto}, auto)"] = rotating(ours)
    other = 2 if auto == 1 else 1
    case.impls[f"ours (splits={other})"] = rotating(lambda i: ours(i, other))
    case.impls["torch eager (gather + SDPA)"] = rotating(gather_sdpa)
    gather_compiled = compiled(gather_sdpa)
    case.impls["torch.compile (gather + SDPA)"] = rotating(lambda i: gather_compiled(i))
    case.impls["torch backend (per-sequence loop)"] = rotating(
        lambda i: TORCH.attention(queries[i], contexts[i].k_cache, contexts[i].v_cache, batches[i], scale)
    )
    return case


def sweep(sweeper: SweepRows, batch: int = 128, context: int = 1024, rotate: int = 4) -> None:
    """Splits, tile and pipeline options timed as the engine runs decode: CUDA-graph replay,
    K/V rotated so that it comes from DRAM."""
    contexts = [
        random_paged_context([context] * batch, [1] * batch, KV_HEADS, HEAD_DIM, PAGE, DTYPE, DEVICE)
        for _ in range(rotate)
    ]
    q_dec = torch.randn(batch, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    kv_bytes = batch * context * KV_HEADS * HEAD_DIM * BF16 * 2
    for splits in (1, 2, 4):
        for block_n in (64, 128):
            for warps in (4, 8):
                for stages in (2, 3):
                    calls = [0]

                    def launch(
                        s: int = splits,
                        n: int = block_n,
                        w: int = warps,
                        st: int = stages,
                        c: list[int] = calls,
                    ) -> torch.Tensor:
                        c[0] += 1
                        ctx = contexts[c[0] % rotate]
                        return decode_attention.paged_decode_attention(
                            q_dec, ctx.k_cache, ctx.v_cache, ctx.page_table, ctx.seq_lens, 0.125,
                            num_splits=s, block_n=n, num_warps=w, num_stages=st,
                        )  # fmt: skip

                    config = f"splits={splits} block_n={block_n} warps={warps} stages={stages}"
                    sweeper.record(f"decode B={batch} ctx={context} (graph)", config, launch, kv_bytes)


def attention_reference(q: torch.Tensor, ctx, query_start: list[int], seq_lens: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """fp64 plain attention over a ``paged_fixtures`` context (decode, cascade and extend checks)."""
    return paged_attention_reference(
        q.double(),
        ctx.k_cache.double(),
        ctx.v_cache.double(),
        query_start,
        seq_lens,
        ctx.page_table,
        HEAD_DIM**-0.5,
    )


def check(dtype: torch.dtype, sizes: Sizes, record: Record) -> None:
    top, long = sizes.max_context, sizes.long_context
    lengths = [1, 16, 17, top // 2, top] + [random.randint(1, top) for _ in range(123)]
    cases = [(f"B=128 ragged 1..{top}", lengths, (1, 2, 4, 8))]
    cases.append((f"B=1 ctx {long}", [long], (1, 16)))
    cases.append(("B=8 with 3 zero-length pads", [top // 7, 0, 77, 1, 0, top - 5, 0, 64], (1, 4)))
    for name, seq_lens, split_options in cases:
        ctx = random_paged_context(
            seq_lens, [min(1, s) for s in seq_lens], KV_HEADS, HEAD_DIM, PAGE, dtype, DEVICE
        )
        q = torch.randn(len(seq_lens), HEADS, HEAD_DIM, dtype=dtype, device=DEVICE)
        ref = attention_reference(q, ctx, list(range(len(seq_lens) + 1)), seq_lens)
        for splits in split_options:
            out = poisoned_like(q)
            decode_attention.paged_decode_attention(
                q,
                ctx.k_cache,
                ctx.v_cache,
                ctx.page_table,
                ctx.seq_lens,
                HEAD_DIM**-0.5,
                out=out,
                num_splits=splits,
            )
            error = relative_error(out, ref)
            if 0 in seq_lens and not bool((out[[i for i, s in enumerate(seq_lens) if s == 0]] == 0).all()):
                error = float("inf")
            record("decode_attention", dtype, f"{name}, splits={splits}", error)


def launches(tokens: int) -> list[tuple[str, Callable[[], object]]]:
    """A decode batch of 8 over 64-token contexts, one split and four (``tokens`` is not used)."""
    ctx = random_paged_context([64] * 8, [1] * 8, KV_HEADS, HEAD_DIM, PAGE, DTYPE)
    q = torch.randn(8, HEADS, HEAD_DIM, dtype=DTYPE)

    def launch(splits: int) -> Callable[[], object]:
        return lambda: decode_attention.paged_decode_attention(
            q, ctx.k_cache, ctx.v_cache, ctx.page_table, ctx.seq_lens, 0.125, num_splits=splits
        )

    return [("decode", launch(1)), ("decode/4", launch(4))]
