"""The Triton int8 weight-only matmul against bf16 cuBLAS at SmolLM2-135M's projection shapes.

For each projection (the worker's fused qkv and gate_up, o, down, and the 49,152-row LM head) and
each batch (1 and 128 decode rows), the GPU time of one product through:

- ``bf16``: ``F.linear(x, w)`` with the bf16 weight (cuBLAS), what an unquantized worker runs;
- ``int8 worker now``: the worker's QuantizedLinear today, ``F.linear(x, q.to(bf16)) * scale``,
  which converts the whole weight on every call;
- ``int8 triton``: kernels/int8_matmul.py with its default tiles, and the best of a small sweep
  of tile shapes (the sweep's winner is printed, for choosing the defaults).

Times are medians of CUDA-graph replays (``triton.testing.do_bench_cudagraph``), so the CPU's
launch cost is not counted: these are the kernels' own times, and at batch 1 the worker replays
its decode step as a graph too. Each Triton result is first checked against the fp64 reference.
A decode-step estimate sums one token's 30 layers of projections (the LM head separately).

    PYTHONPATH=common/src:services/worker/src python3 bench/kernels/gpu_int8_bench.py --out bench/results
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import write_results  # noqa: E402
from radixfair_engine.kernels.accuracy import TOLERANCE, relative_error  # noqa: E402
from radixfair_engine.kernels.int8_matmul import int8_weight_matmul  # noqa: E402
from radixfair_engine.kernels.reference import int8_weight_matmul_reference  # noqa: E402
from radixfair_model_format.quantized_checkpoint import quantize_weight  # noqa: E402

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB, LAYERS = 576, 9, 3, 64, 1536, 49152, 30
# (name, N out, K in, how many per decoded token)
SHAPES = (
    ("qkv_proj", (HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN, LAYERS),
    ("o_proj", HIDDEN, HEADS * HEAD_DIM, LAYERS),
    ("gate_up_proj", 2 * INTERMEDIATE, HIDDEN, LAYERS),
    ("down_proj", HIDDEN, INTERMEDIATE, LAYERS),
    ("lm_head", VOCAB, HIDDEN, 1),
)
# Each tile compiles once per shape (~1 s); block_m 0 keeps the default for the batch.
TILES = [
    {"block_m": bm, "block_n": bn, "block_k": bk, "num_warps": 4, "num_stages": 4}
    for bm, bn, bk in itertools.product((0, 64), (16, 32, 64, 128), (64, 128))
]


def time_us(fn) -> float:
    try:
        return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median")
    except Exception:  # noqa: BLE001 (an older triton without graphs: events around each call)
        return 1e3 * triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def measure(name: str, n: int, k: int, m: int, sweep: bool) -> dict:
    torch.manual_seed(0)
    weight = torch.randn(n, k, device="cuda") * 0.05
    q, scale = quantize_weight(weight, "int8")
    w_bf16 = weight.to(torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    error = relative_error(
        int8_weight_matmul(x, q, scale, out=out), int8_weight_matmul_reference(x, q, scale)
    )
    if error >= TOLERANCE[torch.bfloat16]:
        raise SystemExit(f"{name} M={m}: int8 kernel relative error {error:.2e} is above tolerance")
    row = {
        "projection": name,
        "M": m,
        "N": n,
        "K": k,
        "rel_error": error,
        "bf16_us": time_us(lambda: F.linear(x, w_bf16)),
        "int8_worker_now_us": time_us(lambda: F.linear(x, q.to(torch.bfloat16)) * scale.to(torch.bfloat16)),
        "int8_triton_us": time_us(lambda: int8_weight_matmul(x, q, scale, out=out)),
    }
    if sweep:
        best = None
        for tile in TILES:
            if tile["block_m"] and m <= 16:
                continue  # one 16-row tile is the only sensible one for a decode row
            tile = {**tile, "block_m": tile["block_m"] or None}
            try:
                int8_weight_matmul(x, q, scale, out=out, **tile)
                t = time_us(lambda tile=tile: int8_weight_matmul(x, q, scale, out=out, **tile))
            except Exception:  # noqa: BLE001 (a tile that does not fit in shared memory)
                continue
            if best is None or t < best[0]:
                best = (t, tile)
        if best is not None:
            row["int8_triton_best_us"], row["best_tile"] = best[0], best[1]
    fastest = min(row["int8_triton_us"], row.get("int8_triton_best_us", float("inf")))
    row["speedup_vs_bf16"] = row["bf16_us"] / fastest
    row["weight_GBps_int8"] = n * k / fastest / 1e3
    row["weight_GBps_bf16"] = 2 * n * k / row["bf16_us"] / 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    parser.add_argument("--name", default="gpu_int8_h200")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--no-sweep", action="store_true", help="default tiles only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (the kernel's CPU check is tests/kernels/test_int8_matmul.py)")
    rows = []
    for m in args.batches:
        for name, n, k, _ in SHAPES:
            rows.append(measure(name, n, k, m, sweep=not args.no_sweep))
            print(rows[-1], flush=True)
    per_token = {name: count for name, _, _, count in SHAPES}
    estimates = {}
    for m in args.batches:
        layer_rows = [r for r in rows if r["M"] == m and r["projection"] != "lm_head"]
        for column in ("bf16_us", "int8_worker_now_us", "int8_triton_us"):
            estimates[f"M={m} {column} (30 layers of projections)"] = sum(
                r[column] * per_token[r["projection"]] for r in layer_rows
            )
    columns = [
        "projection",
        "M",
        "N",
        "K",
        "bf16_us",
        "int8_worker_now_us",
        "int8_triton_us",
        "int8_triton_best_us",
        "speedup_vs_bf16",
        "weight_GBps_int8",
        "weight_GBps_bf16",
        "rel_error",
    ]
    notes = (
        "Medians of CUDA-graph replays (kernel time, no CPU launch cost). speedup_vs_bf16 uses the faster "
        "of the default and the best swept tile; best_tile is in the JSON. Decode-step sums over 30 layers "
        "(LM head excluded: the worker dequantizes the embedding at load): "
        + "; ".join(f"{k}: {v:.1f} us" for k, v in estimates.items())
    )
    write_results(
        args.name, rows, columns, {"decode_step_estimates_us": estimates}, notes, results_dir=Path(args.out)
    )


if __name__ == "__main__":
    main()
