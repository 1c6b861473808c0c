"""RoPE in place, and RoPE fused with the K/V page store (kernels/rope.py), against torch and Liger."""

from __future__ import annotations

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
    compiled,
    qkv_views,
    rope_table,
    try_liger,
)
from radixfair_engine.kernels import rope, write_kv
from radixfair_engine.kernels.accuracy import relative_error
from radixfair_engine.kernels.reference import rope_reference

SIZES = (4096, 65536)  # tokens: L2-resident, and DRAM-bound


def cases(tokens: int) -> list[Case]:
    table = rope_table()
    positions = torch.randint(0, table.shape[0], (tokens,), device=DEVICE)
    return [in_place_case(tokens, table, positions), write_kv_case(tokens, table, positions)]


def in_place_case(tokens: int, table: torch.Tensor, positions: torch.Tensor) -> Case:
    qk_bytes = tokens * (HEADS + KV_HEADS) * HEAD_DIM * BF16 * 2
    table_bytes = tokens * HEAD_DIM * 4
    case = Case(
        "rope (q, k in place)", f"T={tokens}", qk_bytes + table_bytes, output=lambda result: result[0]
    )  # type: ignore[index]
    q, k, _ = qkv_views(tokens)
    # Each implementation rotates its own copy: in-place kernels change their inputs.
    q_ours, k_ours = q.clone(), k.clone()
    case.impls["ours"] = lambda: rope.apply_rope(q_ours, k_ours, positions, table)
    case.impls["torch eager"] = lambda: TORCH.apply_rope(q, k, positions, table)
    rope_compiled = compiled(TORCH.apply_rope)
    case.impls["torch.compile"] = lambda: rope_compiled(q, k, positions, table)
    liger = try_liger("rope")
    if liger is not None:
        # Liger takes Hugging Face's layout: [1, H, T, D] views of [1, T, H, D] storage, and
        # per-token cos/sin [1, T, D] in the activations' dtype, gathered beforehand.
        q_hf = q.clone().unsqueeze(0).transpose(1, 2)
        k_hf = k.clone().unsqueeze(0).transpose(1, 2)
        half = table[positions]
        cos = torch.cat([half[:, : HEAD_DIM // 2]] * 2, dim=-1).to(DTYPE).unsqueeze(0)
        sin = torch.cat([half[:, HEAD_DIM // 2 :]] * 2, dim=-1).to(DTYPE).unsqueeze(0)

        def liger_rope() -> tuple[torch.Tensor, torch.Tensor]:
            q_out, k_out = liger.apply(q_hf, k_hf, cos, sin)  # type: ignore[attr-defined]
            return q_out.transpose(1, 2)[0], k_out.transpose(1, 2)[0]

        case.impls["liger"] = liger_rope
    return case


def write_kv_case(tokens: int, table: torch.Tensor, positions: torch.Tensor) -> Case:
    kv_bytes = tokens * KV_HEADS * HEAD_DIM * BF16 * 4  # read k, v; write both to the cache
    total = tokens * HEADS * HEAD_DIM * BF16 * 2 + kv_bytes + tokens * HEAD_DIM * 4 + tokens * 16
    case = Case("rope + K/V page write", f"T={tokens}", total, output=lambda result: result)
    q, k, v = qkv_views(tokens)
    num_pages = tokens // PAGE + 1
    slots = torch.randperm(num_pages * PAGE, device=DEVICE)[:tokens]
    caches = {
        name: torch.randn(2, num_pages, PAGE, KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
        for name in "abc"
    }
    q_fused = q.clone()
    case.impls["ours"] = lambda: rope.rope_and_write_kv(
        q_fused, k, v, positions, table, caches["a"][0], caches["a"][1], slots
    )

    def eager_rope_kv(cache: torch.Tensor) -> torch.Tensor:
        q_rot, k_rot = TORCH.apply_rope(q, k, positions, table)
        TORCH.write_kv(k_rot, v, cache[0], cache[1], slots)
        return q_rot

    case.impls["torch eager"] = lambda: eager_rope_kv(caches["b"])
    eager_compiled = compiled(eager_rope_kv)
    case.impls["torch.compile"] = lambda: eager_compiled(caches["c"])
    q_two, k_two = q.clone(), k.clone()

    def ours_unfused() -> torch.Tensor:
        rope.apply_rope(q_two, k_two, positions, table)
        write_kv.write_kv(k_two, v, caches["a"][0], caches["a"][1], slots)
        return q_two

    case.impls["ours unfused (2 launches)"] = ours_unfused
    return case


def check(dtype: torch.dtype, sizes: Sizes, record: Record) -> None:
    table = rope_table()
    tokens = sizes.rope_tokens
    q, k, v = qkv_views(tokens, dtype)
    positions = torch.randint(0, table.shape[0], (tokens,), device=DEVICE)
    ref_q = rope_reference(q.double(), positions, table.double())
    ref_k = rope_reference(k.double(), positions, table.double())
    rope.apply_rope(q, k, positions, table)
    record("rope", dtype, f"T={tokens} in place", max(relative_error(q, ref_q), relative_error(k, ref_k)))

    q, k, v = qkv_views(tokens, dtype)
    num_slots = (tokens // PAGE + 8) * PAGE
    slots = torch.randperm(num_slots, device=DEVICE)[:tokens]
    k_cache = torch.full(
        (num_slots // PAGE, PAGE, KV_HEADS, HEAD_DIM), float("nan"), dtype=dtype, device=DEVICE
    )
    v_cache = torch.full_like(k_cache, float("nan"))
    ref_q = rope_reference(q.double(), positions, table.double())
    ref_k = rope_reference(k.double(), positions, table.double())
    k_before = k.clone()
    rope.rope_and_write_kv(q, k, v, positions, table, k_cache, v_cache, slots)
    k_slots, v_slots = k_cache.view(-1, KV_HEADS, HEAD_DIM), v_cache.view(-1, KV_HEADS, HEAD_DIM)
    untouched = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    exact = (
        torch.equal(v_slots[slots], v)
        and torch.equal(k, k_before)
        and bool(k_slots[untouched].isnan().all())
        and bool(v_slots[untouched].isnan().all())
    )
    error = max(relative_error(q, ref_q), relative_error(k_slots[slots], ref_k)) if exact else float("inf")
    record("rope+write_kv", dtype, f"T={tokens}, v exact, others untouched", error)


def launches(tokens: int) -> list[tuple[str, Callable[[], object]]]:
    q, k, v = qkv_views(tokens, DTYPE, "cpu")
    positions = torch.arange(tokens)
    table = torch.randn(8192, HEAD_DIM)
    k_cache = torch.randn(tokens // PAGE + 1, PAGE, KV_HEADS, HEAD_DIM, dtype=DTYPE)
    slots = torch.arange(tokens)
    return [
        ("rope", lambda: rope.apply_rope(q, k, positions, table)),
        (
            "rope+kv",
            lambda: rope.rope_and_write_kv(q, k, v, positions, table, k_cache, k_cache.clone(), slots),
        ),
    ]
