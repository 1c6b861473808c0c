"""Compiles the step-fusion kernels for sm_90 on this machine (no GPU) and reports their resources.

The same local compile as bench/kernels/kernels_compile_report.py (launches intercepted, not run), for
the registry's step-fusion kernels (kernels/norm_matmul.py, kernels/norm_qkv_rope.py) at SmolLM2-135M
shapes, decode batches 1 and 128, default tiles and the variants bench/kernels/gpu_step_fusion_bench.py times
(``launches`` in bench/kernels/<module>.py).
It proves each variant compiles for the H200 before device time is spent, and shows registers,
spills (local bytes) and whether the products use the tensor cores (HMMA).

    .venv/bin/python bench/kernels/step_fusion_compile_report.py
"""

from __future__ import annotations

import os
import sys

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "..", "engine", "src")]
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from bench.kernels.kernels_compile_report import capture, launches, report_line  # noqa: E402


def main() -> None:
    for m in (1, 128):
        for label, launch in launches(step_fusion=True, rows=m):
            try:
                reports = capture(f"M={m} {label}", launch)
            except Exception as error:  # report every failing variant, not only the first
                print(f"M={m} {label:16s} FAILED: {type(error).__name__}: {str(error)[:400]}")
                continue
            for report in reports:
                print(report_line(report, width=48))


if __name__ == "__main__":
    main()
