"""The K/V page store on its own (kernels/write_kv.py) against torch's indexed store."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.kernels.harness import (
    BF16,
    DEVICE,
    DTYPE,
    HEAD_DIM,
    KV_HEADS,
    PAGE,
    TORCH,
    Case,
    Record,
    Sizes,
    compiled,
    qkv_views,
)
from radixfair_engine.kernels import write_kv

SIZES = (4096, 65536)  # tokens: L2-resident, and DRAM-bound


def cases(tokens: int) -> list[Case]:
    _, k, v = qkv_views(tokens)
    num_pages = tokens // PAGE + 1
    slots = torch.randperm(num_pages * PAGE, device=DEVICE)[:tokens]
    caches = [
        torch.randn(2, num_pages, PAGE, KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE) for _ in range(3)
    ]
    case = Case("write_kv", f"T={tokens}", tokens * KV_HEADS * HEAD_DIM * BF16 * 4 + tokens * 8)
    # Each implementation fills its own cache and returns it; the written K rows are compared.
    case.output = lambda cache: cache[0].view(-1, KV_HEADS, HEAD_DIM)[slots]  # type: ignore[index]
    write_compiled = compiled(TORCH.write_kv)
    for (name, write), cache in zip(
        [
            ("ours", write_kv.write_kv),
            ("torch eager", TORCH.write_kv),
            ("torch.compile", write_compiled),
        ],
        caches,
    ):
        case.impls[name] = lambda write=write, cache=cache: (write(k, v, cache[0], cache[1], slots), cache)[1]
    return [case]


def check(dtype: torch.dtype, sizes: Sizes, record: Record) -> None:
    """Exact copies at the slots, every other slot left as it was (NaN)."""
    tokens = sizes.rope_tokens
    _, k, v = qkv_views(tokens, dtype)
    num_slots = (tokens // PAGE + 8) * PAGE
    slots = torch.randperm(num_slots, device=DEVICE)[:tokens]
    k_cache = torch.full(
        (num_slots // PAGE, PAGE, KV_HEADS, HEAD_DIM), float("nan"), dtype=dtype, device=DEVICE
    )
    v_cache = torch.full_like(k_cache, float("nan"))
    write_kv.write_kv(k, v, k_cache, v_cache, slots)
    k_slots, v_slots = k_cache.view(-1, KV_HEADS, HEAD_DIM), v_cache.view(-1, KV_HEADS, HEAD_DIM)
    untouched = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    exact = (
        torch.equal(k_slots[slots], k)
        and torch.equal(v_slots[slots], v)
        and bool(k_slots[untouched].isnan().all())
    )
    record("write_kv", dtype, f"T={tokens}, exact", 0.0 if exact else float("inf"))


def launches(tokens: int) -> list[tuple[str, Callable[[], object]]]:
    _, k, v = qkv_views(tokens, DTYPE, "cpu")
    k_cache = torch.randn(tokens // PAGE + 1, PAGE, KV_HEADS, HEAD_DIM, dtype=DTYPE)
    slots = torch.arange(tokens)
    return [("write_kv", lambda: write_kv.write_kv(k, v, k_cache, k_cache.clone(), slots))]
