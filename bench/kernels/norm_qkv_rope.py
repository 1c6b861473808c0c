"""The step-fusion norm + QKV + RoPE + K/V store kernel (kernels/norm_qkv_rope.py): check and launches.

Off by default (model/step_fusion.py). Its timing against cuBLAS and the separate kernels
lives in bench/kernels/gpu_step_fusion_bench.py, which this layout leaves where it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.kernels.harness import (
    DEVICE,
    DTYPE,
    EPS,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    KV_HEADS,
    PAGE,
    Record,
    Sizes,
    rope_table,
)
from radixfair_engine.kernels import norm_qkv_rope
from radixfair_engine.kernels.accuracy import poisoned_like, relative_error
from radixfair_engine.kernels.reference import norm_qkv_rope_reference

TIMED_BY = "bench/kernels/gpu_step_fusion_bench.py"
ROWS = (1, 128)  # the decode batches a fused call takes (StepFusionConfig.max_rows)
QKV_ROWS = (HEADS + 2 * KV_HEADS) * HEAD_DIM


def check(dtype: torch.dtype, sizes: Sizes, record: Record) -> None:
    """q, the cached k and v, and the sum against the fp64 reference; other cache slots untouched."""
    table = rope_table()
    norm = 1 + 0.3 * torch.randn(HIDDEN, device=DEVICE)
    qkv = torch.randn(QKV_ROWS, HIDDEN, device=DEVICE) / HIDDEN**0.5
    for m in (1, min(ROWS[-1], sizes.tokens[-1])):  # --small: the interpreter's token count
        x = torch.randn(m, HIDDEN, dtype=dtype, device=DEVICE)
        residual = torch.randn_like(x)
        positions = torch.randint(0, table.shape[0], (m,), device=DEVICE)
        num_slots = (m // PAGE + 8) * PAGE
        slots = torch.randperm(num_slots, device=DEVICE)[:m]
        k_cache = poisoned_like(
            torch.empty(num_slots // PAGE, PAGE, KV_HEADS, HEAD_DIM, dtype=dtype, device=DEVICE)
        )
        v_cache = poisoned_like(k_cache)
        norm_w, qkv_w = norm.to(dtype), qkv.to(dtype)
        q, summed = norm_qkv_rope.norm_qkv_rope_write_kv(
            x, residual, norm_w, EPS, qkv_w, positions, table, k_cache, v_cache, slots
        )
        ref_q, ref_k, ref_v, ref_sum = norm_qkv_rope_reference(
            x.double(), residual.double(), norm_w.double(), EPS, qkv_w.double(), positions, table.double(),
            KV_HEADS,
        )  # fmt: skip
        k_slots, v_slots = k_cache.view(-1, KV_HEADS, HEAD_DIM), v_cache.view(-1, KV_HEADS, HEAD_DIM)
        untouched = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
        untouched[slots] = False
        error = max(
            relative_error(q, ref_q),
            relative_error(k_slots[slots], ref_k),
            relative_error(v_slots[slots], ref_v),
            relative_error(summed, ref_sum),
        )
        if not (bool(k_slots[untouched].isnan().all()) and bool(v_slots[untouched].isnan().all())):
            error = float("inf")
        record("norm_qkv_rope_write_kv", dtype, f"M={m}, other slots untouched", error)


def launches(m: int) -> list[tuple[str, Callable[[], object]]]:
    """The fused launch at ``m`` rows, default tiles and the variants the step-fusion bench times."""
    x = torch.randn(m, HIDDEN, dtype=DTYPE)
    residual = torch.randn(m, HIDDEN, dtype=DTYPE)
    norm = torch.ones(HIDDEN, dtype=DTYPE)
    qkv = torch.randn(QKV_ROWS, HIDDEN, dtype=DTYPE)
    positions = torch.zeros(m, dtype=torch.int64)
    table = torch.randn(8192, HEAD_DIM)
    cache = torch.zeros(m // PAGE + 2, PAGE, KV_HEADS, HEAD_DIM, dtype=DTYPE)
    slots = torch.arange(m)

    def qkv_launch(**tiles: int) -> Callable[[], object]:
        return lambda: norm_qkv_rope.norm_qkv_rope_write_kv(
            x, residual, norm, EPS, qkv, positions, table, cache, cache.clone(), slots, **tiles
        )

    return [
        ("qkv", qkv_launch()),
        ("qkv bk128", qkv_launch(block_k=128)),
        ("qkv bm64", qkv_launch(block_m=64)),
        ("qkv w8s4", qkv_launch(num_warps=8, num_stages=4)),
        ("qkv fp32", lambda: norm_qkv_rope.norm_qkv_rope_write_kv(
            x.float(), residual.float(), norm.float(), EPS, qkv.float(), positions, table,
            cache.float(), cache.float(), slots,
        )),
    ]  # fmt: skip
