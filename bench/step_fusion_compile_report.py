"""Compiles the step-fusion kernels for sm_90 on this machine (no GPU) and reports their resources.

The same local compile as bench/kernels_compile_report.py (launches intercepted, not run), for
the fused kernels of kernels/norm_matmul.py and kernels/norm_qkv_rope.py at SmolLM2-135M shapes,
decode batches 1 and 128, default tiles and the variants bench/gpu_step_fusion_bench.py times.
It proves each variant compiles for the H200 before device time is spent, and shows registers,
spills (local bytes) and whether the products use the tensor cores (HMMA).

    .venv/bin/python bench/step_fusion_compile_report.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "services", "worker", "src")]
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.kernels_compile_report import capture  # noqa: E402
from radixfair_worker.kernels import norm_matmul, norm_qkv_rope  # noqa: E402

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 576, 1536, 9, 3, 64, 49152


def launches(m: int) -> list[tuple[str, Callable[[], object]]]:
    bf16 = torch.bfloat16
    x = torch.randn(m, HIDDEN, dtype=bf16)
    residual = torch.randn(m, HIDDEN, dtype=bf16)
    norm = torch.ones(HIDDEN, dtype=bf16)
    qkv = torch.randn((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN, dtype=bf16)
    gate_up = torch.randn(2 * INTER, HIDDEN, dtype=bf16)
    down = torch.randn(HIDDEN, INTER, dtype=bf16)
    act = torch.randn(m, INTER, dtype=bf16)
    head = torch.randn(VOCAB, HIDDEN, dtype=bf16)
    positions = torch.zeros(m, dtype=torch.int64)
    table = torch.randn(8192, HEAD_DIM)
    cache = torch.zeros(m // 16 + 2, 16, KV_HEADS, HEAD_DIM, dtype=bf16)
    slots = torch.arange(m)
    rows = torch.arange(m)

    def qkv_launch(**tiles: int) -> Callable[[], object]:
        return lambda: norm_qkv_rope.norm_qkv_rope_write_kv(
            x, residual, norm, 1e-5, qkv, positions, table, cache, cache.clone(), slots, **tiles
        )

    return [
        ("qkv", qkv_launch()),
        ("qkv bk128", qkv_launch(block_k=128)),
        ("qkv bm64", qkv_launch(block_m=64)),
        ("qkv w8s4", qkv_launch(num_warps=8, num_stages=4)),
        ("qkv fp32", lambda: norm_qkv_rope.norm_qkv_rope_write_kv(
            x.float(), residual.float(), norm.float(), 1e-5, qkv.float(), positions, table,
            cache.float(), cache.float(), slots,
        )),
        ("gate_up", lambda: norm_matmul.norm_gate_up_silu(x, residual, norm, 1e-5, gate_up)),
        ("gate_up bn64", lambda: norm_matmul.norm_gate_up_silu(x, residual, norm, 1e-5, gate_up, block_n=64)),
        ("gate_up first", lambda: norm_matmul.norm_gate_up_silu(x, None, norm, 1e-5, gate_up)),
        ("down", lambda: norm_matmul.norm_matmul(act, None, None, 0.0, down)),
        ("down bk128", lambda: norm_matmul.norm_matmul(act, None, None, 0.0, down, block_k=128)),
        ("lm_head", lambda: norm_matmul.norm_matmul(
            x, residual, norm, 1e-5, head, row_indices=rows, out_dtype=torch.float32
        )),
        ("lm_head bn256", lambda: norm_matmul.norm_matmul(
            x, residual, norm, 1e-5, head, row_indices=rows, out_dtype=torch.float32, block_n=256
        )),
    ]  # fmt: skip


def main() -> None:
    # The tensors are CPU ones, which the launchers take for the interpreter: compile the GPU path.
    saved = [module.interpreted for module in (norm_matmul, norm_qkv_rope)]
    norm_matmul.interpreted = norm_qkv_rope.interpreted = lambda tensor: False  # type: ignore[assignment]
    try:
        for m in (1, 128):
            for label, launch in launches(m):
                try:
                    reports = capture(f"M={m} {label}", launch)
                except Exception as error:  # report every failing variant, not only the first
                    print(f"M={m} {label:16s} FAILED: {type(error).__name__}: {str(error)[:400]}")
                    continue
                for r in reports:
                    print(
                        f"{r.name:48s} regs {r.registers:>4s} local {r.local_bytes:>4s}"
                        f" shared {r.shared:>6d} {r.sass}"
                    )
    finally:
        norm_matmul.interpreted, norm_qkv_rope.interpreted = saved  # type: ignore[assignment]


if __name__ == "__main__":
    main()
