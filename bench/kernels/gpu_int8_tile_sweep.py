"""Launch shapes of the int8 / fp8 tile kernel at decode-batch row counts, against cuBLAS bf16 (#15).

On the real teacher (bench/results/distill_teacher_decode_h200.md) an int8 checkpoint decodes at
batch 128 at 0.996x bf16 and its CUDA-graph step takes 1.30 against 1.20 ms: per product, the tile
form at 128 rows lost to cuBLAS by 0.4-2.2 us (gpu_quantized_decode_h200.md). This sweep times the
tile form over launch shapes (row and column tile, K step, warps, pipeline stages, and the weight tile
loaded as stored and transposed in registers, ``weight_rows``) on SmolLM2-135M's four projections,
every weight in DRAM as in a decode step (each timed graph cycles through distinct copies, over twice
the L2), next to torch.mm on the bf16 weight.

Stage 1 times every shape of ``GRID`` in int8 with the weight addressed transposed; stage 2 times
each projection's best ``--top`` shapes with ``weight_rows`` and all of them in fp8, weight-only and
with fp8 activations (``fp8_a8``: each row rounded to e4m3 under its own scale, so the product runs on
the fp8 MMA). Rows: us per
product (median CUDA-graph replay over the copies, divided by their count) and ``vs_bf16`` (bf16's
time over this one, above 1 = faster), and ``rel_err`` against the fp64 reference of what the row
computes (kernels/reference.py). The summary gives per projection and scheme the default
shape (kernels/int8_matmul.tile_sizes) and the fastest one.

On the GPU machine (PYTHONPATH as bench/engine/gpu_env.sh sets it):

    python3 bench/kernels/gpu_int8_tile_sweep.py --out $OUT
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.kernels.gpu_quantized_decode_bench import (  # noqa: E402
    COLD_CODE_BYTES,
    LAYER_STD,
    projection_shapes,
)
from bench.report import markdown_table, write_results  # noqa: E402
from bench.smollm2_shape import SMOLLM2_135M_HF_CONFIG  # noqa: E402
from radixfair_model_format.quantized_checkpoint import quantize_weight  # noqa: E402

TILES = [(32, 16), (32, 32), (32, 64), (64, 16), (64, 32), (64, 64), (128, 32), (128, 64)]
GRID = [
    {"block_m": m, "block_n": n, "block_k": k, "num_warps": w, "num_stages": s}
    for (m, n), k, (w, s) in itertools.product(TILES, (64, 128), ((4, 3), (4, 4), (8, 4)))
]


def timed_us(run) -> float | None:  # type: ignore[no-untyped-def]
    """Median CUDA-graph replay of ``run`` in us, None when the launch shape does not compile or fit."""
    import triton.testing

    try:
        run()  # compiles outside the capture
        torch.cuda.synchronize()
        return 1e3 * triton.testing.do_bench_cudagraph(run, rep=30, return_mode="median")
    except Exception as error:  # noqa: BLE001 (a shape over the shared memory, say)
        print(f"skipped: {error}", flush=True)
        return None


def sweep_projection(name: str, n: int, k: int, m: int, top: int) -> list[dict[str, object]]:
    from radixfair_engine.kernels.accuracy import relative_error
    from radixfair_engine.kernels.int8_matmul import fp8_weight_matmul, int8_weight_matmul, tile_sizes
    from radixfair_engine.kernels.reference import (
        fp8_activation_matmul_reference,
        fp8_weight_matmul_reference,
        int8_weight_matmul_reference,
    )

    torch.manual_seed(0)
    copies = max(30, -(-COLD_CODE_BYTES // (n * k)))
    weights = [torch.randn(n, k, device="cuda") * LAYER_STD for _ in range(copies)]
    w16 = [w.to(torch.bfloat16) for w in weights]
    codes = {"int8": [quantize_weight(w, "int8") for w in weights]}
    codes["fp8"] = [(q.view(torch.uint8), s) for q, s in (quantize_weight(w, "fp8") for w in weights)]
    del weights
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    matmuls = {"int8": int8_weight_matmul, "fp8": fp8_weight_matmul}
    references = {"int8": int8_weight_matmul_reference, "fp8": fp8_weight_matmul_reference}

    def bf16() -> None:
        for w in w16:
            torch.mm(x, w.t(), out=out)

    bf16_us = timed_us(bf16) / copies  # type: ignore[operator]
    default_m, default_n = tile_sizes(m, n)

    def row(scheme: str, shape: dict[str, int], weight_rows: bool) -> dict[str, object] | None:
        matmul = matmuls[scheme.removesuffix("_a8")]
        extra = {"fp8_activations": True} if scheme == "fp8_a8" else {}

        def run() -> None:
            for q, scale in codes[scheme.removesuffix("_a8")]:
                matmul(x, q, scale, out=out, weight_rows=weight_rows, **shape, **extra)

        us = timed_us(run)
        if us is None:
            return None
        us /= copies
        default = shape["block_m"] == default_m and shape["block_n"] == default_n
        default = default and shape["block_k"] == 128 and (shape["num_warps"], shape["num_stages"]) == (4, 4)
        result = {"projection": name, "M": m, "N": n, "K": k, "scheme": scheme, **shape}
        result.update(weight_rows=weight_rows, default=default and not weight_rows, us=us, bf16_us=bf16_us)
        result["vs_bf16"] = bf16_us / us
        # The product checked against its fp64 reference on the first copy (the GPU's own fp8 paths).
        q, scale = codes[scheme.removesuffix("_a8")][0]
        matmul(x, q, scale, out=out, weight_rows=weight_rows, **shape, **extra)
        reference = fp8_activation_matmul_reference if scheme == "fp8_a8" else references[scheme]
        result["rel_err"] = relative_error(out, reference(x, q, scale))
        print(result, flush=True)
        return result

    rows = [r for shape in GRID if (r := row("int8", shape, False)) is not None]
    best = sorted(rows, key=lambda r: r["us"])[:top]
    shapes = [{key: r[key] for key in GRID[0]} for r in best]
    rows += [r for shape in shapes if (r := row("int8", shape, True)) is not None]
    default_shape = {
        "block_m": default_m,
        "block_n": default_n,
        "block_k": 128,
        "num_warps": 4,
        "num_stages": 4,
    }
    for scheme in ("fp8", "fp8_a8"):
        for weight_rows in (False, True):
            for shape in [default_shape, *shapes]:
                if (r := row(scheme, shape, weight_rows)) is not None:
                    rows.append(r)
    return rows  # the copies go with this frame; main empties the cache


def summary(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per projection and scheme: bf16's time, the default shape's, and the fastest shape."""
    out = []
    for name, scheme in dict.fromkeys((r["projection"], r["scheme"]) for r in rows):
        mine = [r for r in rows if r["projection"] == name and r["scheme"] == scheme]
        default = next((r for r in mine if r["default"]), None)
        fastest = min(mine, key=lambda r: r["us"])
        out.append(
            {
                "projection": name,
                "scheme": scheme,
                "bf16_us": fastest["bf16_us"],
                "default_us": default["us"] if default else None,
                "fastest_us": fastest["us"],
                "fastest_vs_bf16": fastest["vs_bf16"],
                "fastest_shape": "{block_m}x{block_n} k{block_k} w{num_warps} s{num_stages}".format(**fastest)
                + (" weight_rows" if fastest["weight_rows"] else ""),
                "max_rel_err": max(r["rel_err"] for r in mine),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=128, help="M: the decode batch")
    parser.add_argument("--top", type=int, default=6, help="best int8 shapes per projection taken to stage 2")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no new projection after this")
    parser.add_argument("--name", default="gpu_int8_tile_sweep_h200")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU: it times kernels")
    start, rows = time.monotonic(), []
    columns = [
        "projection",
        "scheme",
        "bf16_us",
        "default_us",
        "fastest_us",
        "fastest_vs_bf16",
        "fastest_shape",
        "max_rel_err",
    ]
    for name, n, k in projection_shapes(SMOLLM2_135M_HF_CONFIG):
        if time.monotonic() - start > args.budget_s:
            print(f"budget spent: {name} and later projections not swept", flush=True)
            break
        rows += sweep_projection(name, n, k, args.rows, args.top)
        torch.cuda.empty_cache()
        table = summary(rows)
        notes = (
            f"SmolLM2-135M projections at M = {args.rows} rows, bf16 activations, weights in DRAM (each "
            "timed graph cycles through distinct copies, over twice the L2); us per product. default: "
            "kernels/int8_matmul.tile_sizes' shape with block_k 128, 4 warps, 4 stages. Stage 1: every "
            f"shape of the grid in int8 ({len(GRID)} shapes); stage 2: the {args.top} fastest with "
            "weight_rows, and in fp8 with the default, weight-only and with fp8 activations (fp8_a8, "
            "W8A8 per-token). Every timed row, with its error against the fp64 reference, is in the "
            "JSON's `rows`."
        )
        write_results(args.name, table, columns, {"rows": rows, "grid": GRID}, notes, results_dir=args.out)
        print(markdown_table(table, columns), flush=True)


if __name__ == "__main__":
    main()
