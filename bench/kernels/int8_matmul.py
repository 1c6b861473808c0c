"""The int8- and fp8-weight matmul (kernels/int8_matmul.py): GPU check and compile launches.

Its timing per projection against bf16 cuBLAS lives in bench/kernels/gpu_int8_bench.py, which this
layout leaves where it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.kernels.harness import DEVICE, DTYPE, HIDDEN, INTER, Record, Sizes
from radixfair_engine.kernels import int8_matmul
from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error
from radixfair_engine.kernels.reference import fp8_weight_matmul_reference, int8_weight_matmul_reference
from radixfair_model_format.quantized_checkpoint import quantize_weight

TIMED_BY = "bench/kernels/gpu_int8_bench.py"


def check(dtype: torch.dtype, sizes: Sizes, record: Record) -> None:
    """The gate/up projection's shape at each token count, bf16 activations (the kernel's dtype)."""
    if dtype != torch.bfloat16:
        return
    weight = torch.randn(2 * INTER, HIDDEN, device=DEVICE) * 0.05
    q, scale = quantize_weight(weight, "int8")
    codes, fp8_scale = quantize_weight(weight, "fp8")
    codes = codes.view(torch.uint8)
    for tokens in sizes.tokens:
        x = torch.randn(tokens, HIDDEN, dtype=dtype, device=DEVICE)
        out = poisoned_like(torch.empty(tokens, 2 * INTER, dtype=dtype, device=DEVICE))
        int8_matmul.int8_weight_matmul(x, q, scale, out=out)
        error = relative_error(out, int8_weight_matmul_reference(x, q, scale))
        record("int8_weight_matmul", dtype, f"T={tokens}", error, TOLERANCE[torch.bfloat16])
        out = poisoned_like(out)
        int8_matmul.fp8_weight_matmul(x, codes, fp8_scale, out=out)
        error = relative_error(out, fp8_weight_matmul_reference(x, codes, fp8_scale))
        record("fp8_weight_matmul", dtype, f"T={tokens}", error, TOLERANCE[torch.bfloat16])
        if tokens > 4:
            continue
        # The GEMV form the worker takes at up to QuantizedKernelConfig.gemv_max_rows rows.
        out = poisoned_like(out)
        int8_matmul.int8_weight_matmul(x, q, scale, out=out, gemv_max_rows=tokens)
        error = relative_error(out, int8_weight_matmul_reference(x, q, scale))
        record("int8_weight_matmul", dtype, f"T={tokens} gemv", error, TOLERANCE[torch.bfloat16])
        out = poisoned_like(out)
        int8_matmul.fp8_weight_matmul(x, codes, fp8_scale, out=out, gemv_max_rows=tokens)
        error = relative_error(out, fp8_weight_matmul_reference(x, codes, fp8_scale))
        record("fp8_weight_matmul", dtype, f"T={tokens} gemv", error, TOLERANCE[torch.bfloat16])


def launches(tokens: int) -> list[tuple[str, Callable[[], object]]]:
    """A decode batch of 128 rows through the gate/up projection (``tokens`` is not used)."""
    q, scale = quantize_weight(torch.randn(2 * INTER, HIDDEN) * 0.05, "int8")
    codes, fp8_scale = quantize_weight(torch.randn(2 * INTER, HIDDEN) * 0.05, "fp8")
    x = torch.randn(128, HIDDEN, dtype=DTYPE)
    return [
        ("int8 gate_up", lambda: int8_matmul.int8_weight_matmul(x, q, scale)),
        ("fp8 gate_up", lambda: int8_matmul.fp8_weight_matmul(x, codes.view(torch.uint8), fp8_scale)),
    ]
