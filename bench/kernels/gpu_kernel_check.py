"""GPU correctness of every kernel at SmolLM2-135M shapes, in bf16 and fp32.

Each case draws fresh random inputs, poisons the outputs with NaN, runs the kernel
and compares with its torch reference (``kernels/reference.py``) computed in fp64 on
the same inputs (``kernels.accuracy``: ||out - ref|| / ||ref||, fp32 < 1e-5, bf16 < 1e-2).
The kernels are those of the registry (``kernels/registry.py``); each one's cases live in
``check`` of bench/kernels/<module>.py. Then the whole model runs a greedy prefill + decode
loop on the GPU with TritonBackend and with TorchBackend, same random weights: fp32 must
agree token for token.

    python3 bench/kernels/gpu_kernel_check.py [--out DIR] [--small]

Prints one row per case and exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "engine" / "src"), str(ROOT / "common" / "src"), str(ROOT)]

from bench.kernels.harness import SMALL, CheckRows, Row, Sizes  # noqa: E402
from radixfair_engine.kernels.interpreter_compat import index_scalars_with_item  # noqa: E402
from radixfair_engine.kernels.registry import modules  # noqa: E402


def check_kernels(dtype: torch.dtype, sizes: Sizes, checks: CheckRows) -> None:
    """Every registered kernel module's ``check``; one that raises is a failed row, not the end."""
    for module in modules():
        bench = importlib.import_module(f"bench.kernels.{module}")
        try:
            bench.check(dtype, sizes, checks.record)
        except Exception as error:  # report and go on: one broken kernel must not hide the others
            checks.rows.append(
                {"kernel": module, "dtype": str(dtype), "case": f"raised {error!r}"[:300], "ok": False}
            )


def check_model(dtype: torch.dtype, sizes: Sizes, rows: list[Row]) -> None:
    """Teacher-forced decode of a random-weight SmolLM2-135M against the fp32 torch backend.

    Triton fp32 must choose every token the fp32 torch backend chose; in bf16 the yardstick is
    the torch backend's own bf16, and Triton bf16 may trail it by at most 2 points.
    """
    if dtype != torch.bfloat16:
        return  # one pass covers both dtypes
    try:
        from bench.kernels.model_greedy import argmax_agreement
    except ImportError as error:  # the model's own imports need the worker's dependencies
        rows.append({"kernel": "model argmax", "dtype": "", "case": f"skipped: {error}", "ok": True})
        return
    rows = argmax_agreement(sizes.model_steps, sizes.model_layers)
    yardstick = next(r.agreement for r in rows if r.backend == "torch")
    for row in rows:
        needed = 1.0 if row.dtype == "float32" else yardstick - 0.02
        case = f"{row.backend} {row.dtype}: argmax agreement {row.agreement:.3f} with torch fp32"
        case += f", prefill logits err {row.prefill_logits_error:.2e}"
        if row.backend == "torch":
            case += " (yardstick)"
        rows.append(
            {
                "kernel": "model argmax vs torch fp32",
                "dtype": row.dtype,
                "case": case,
                "rel_error": 1.0 - row.agreement,
                "tolerance": 1.0 - needed,
                "ok": row.agreement >= needed or row.backend == "torch",
            }
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write gpu_kernel_check.json here")
    parser.add_argument("--small", action="store_true", help="tiny shapes, for TRITON_INTERPRET=1 on a CPU")
    args = parser.parse_args()
    sizes = SMALL if args.small else Sizes()
    if args.small:
        index_scalars_with_item()
    torch.manual_seed(0)
    random.seed(0)
    checks = CheckRows()
    for dtype in (torch.bfloat16, torch.float32):
        check_kernels(dtype, sizes, checks)
        try:
            check_model(dtype, sizes, checks.rows)
        except Exception as error:  # report: the kernels' rows above still stand
            checks.rows.append(
                {"kernel": "check_model", "dtype": str(dtype), "case": f"raised {error!r}"[:300], "ok": False}
            )
    rows = checks.rows
    print(f"{'kernel':32s} {'dtype':9s} {'rel.error':>10s} {'tol':>7s}  ok  case")
    for row in rows:
        error = row.get("rel_error")
        error_text = f"{error:10.2e}" if isinstance(error, float) else f"{'':10s}"
        tol = row.get("tolerance")
        tol_text = f"{tol:7.0e}" if isinstance(tol, float) else f"{'':7s}"
        verdict = "ok" if row["ok"] else "XX"
        print(f"{row['kernel']:32s} {row['dtype']:9s} {error_text} {tol_text}  {verdict}  {row['case']}")
    failed = [row for row in rows if not row["ok"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} cases pass")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_kernel_check.json").write_text(json.dumps(rows, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
