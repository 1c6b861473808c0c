"""Compiles every kernel for sm_90 on this machine (no GPU needed) and reports its resources.

METHOD.md: read what costs no device time first. For each launch the backend makes
at SmolLM2-135M shapes, this prints registers, spilled bytes, shared memory and
the SASS mix that matters for memory-bound code: how wide the global loads and
stores are (LDG.E.128 is 16 bytes per thread; LDG.E.U16 is 2) and whether the
tensor-core instructions are there. Launches are intercepted, not run: arguments
are specialised the way Triton's JIT does (16-byte-aligned pointers and integers
divisible by 16 get the divisibility hint, integers equal to 1 become constants).

    .venv/bin/python bench/kernels_compile_report.py
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "services", "worker", "src"))

from radixfair_worker.kernels import decode_attention, extend_attention, rms_norm, rope, swiglu  # noqa: E402
from radixfair_worker.kernels.paged_fixtures import random_paged_context  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16", torch.int32: "i32"}
_DTYPES[torch.int64] = "i64"


@dataclass
class Report:
    name: str
    registers: str
    local_bytes: str
    shared: int
    sass: dict[str, int]


def _specialise(fn: JITFunction, args: tuple, kwargs: dict) -> tuple[dict, dict, dict]:
    bound = dict(zip(fn.arg_names, args))
    bound.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(fn.arg_names):
        value = bound[name]
        path = (index,)
        if index in fn.constexprs:
            signature[name] = "constexpr"
            constexprs[path] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _DTYPES[value.dtype]
            attrs[path] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[name] = "constexpr"
                constexprs[path] = 1
                continue
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[path] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: cannot specialise {type(value)}")
    return signature, constexprs, attrs


def _resources(cubin: bytes) -> tuple[str, str, str]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        usage = subprocess.run(
            [f"{BIN}/cuobjdump", "--dump-resource-usage", handle.name], capture_output=True, text=True
        ).stdout
        sass = subprocess.run(
            [f"{BIN}/cuobjdump", "--dump-sass", handle.name], capture_output=True, text=True
        ).stdout
    registers = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    return (registers.group(1) if registers else "?"), (local.group(1) if local else "?"), sass


def _sass_mix(sass: str) -> dict[str, int]:
    ops = collections.Counter(re.findall(r"\b((?:LDG|STG|LDL|STL|HMMA|HGMMA|LDGSTS|MUFU)[A-Z0-9_.]*)", sass))
    return dict(sorted(ops.items()))


def capture(label: str, launch: Callable[[], object]) -> list[Report]:
    """Runs ``launch`` with every JIT launch replaced by a local sm_90 compile."""
    reports: list[Report] = []
    original = JITFunction.run

    def compile_instead(
        self: JITFunction, *args: object, grid: object, warmup: bool, **kwargs: object
    ) -> None:
        signature, constexprs, attrs = _specialise(self, args, kwargs)
        options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        kernel = triton.compile(ASTSource(self, signature, constexprs, attrs), target=TARGET, options=options)
        registers, local, sass = _resources(kernel.asm["cubin"])
        reports.append(
            Report(f"{label}:{self.fn.__name__}", registers, local, kernel.metadata.shared, _sass_mix(sass))
        )

    # The tensors here are CPU ones, which the launchers take for the interpreter; compile the GPU path.
    modules = (decode_attention, extend_attention)
    saved = [module.interpreted for module in modules]
    JITFunction.run = compile_instead  # type: ignore[method-assign]
    for module in modules:
        module.interpreted = lambda tensor: False
    try:
        launch()
    finally:
        JITFunction.run = original  # type: ignore[method-assign]
        for module, interpreted in zip(modules, saved):
            module.interpreted = interpreted
    return reports


def launches(tokens: int = 4096) -> list[tuple[str, Callable[[], object]]]:
    """The backend's launches at SmolLM2-135M shapes, in bf16."""
    bf16 = torch.bfloat16
    hidden, inter, heads, kv_heads, head_dim = 576, 1536, 9, 3, 64
    x = torch.randn(tokens, hidden, dtype=bf16)
    weight = torch.randn(hidden, dtype=bf16)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=bf16)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k, v = (
        q.view(tokens, heads, head_dim),
        k.view(tokens, kv_heads, head_dim),
        v.view(tokens, kv_heads, head_dim),
    )
    positions = torch.arange(tokens)
    table = torch.randn(8192, head_dim)
    k_cache = torch.randn(tokens // 16 + 1, 16, kv_heads, head_dim, dtype=bf16)
    slots = torch.arange(tokens)
    decode = random_paged_context([64] * 8, [1] * 8, kv_heads, head_dim, 16, bf16)
    prefill = random_paged_context([64] * 4, [32] * 4, kv_heads, head_dim, 16, bf16)
    q_decode = torch.randn(8, heads, head_dim, dtype=bf16)
    q_prefill = torch.randn(128, heads, head_dim, dtype=bf16)
    gate_up = torch.randn(tokens, 2 * inter, dtype=bf16)
    return [
        ("rms_norm", lambda: rms_norm.rms_norm(x, weight, 1e-5)),
        ("add_rms_norm", lambda: rms_norm.add_rms_norm(x, x, weight, 1e-5)),
        ("rope", lambda: rope.apply_rope(q, k, positions, table)),
        (
            "rope+kv",
            lambda: rope.rope_and_write_kv(q, k, v, positions, table, k_cache, k_cache.clone(), slots),
        ),
        ("swiglu", lambda: swiglu.silu_and_mul(gate_up)),
        (
            "decode",
            lambda: decode_attention.paged_decode_attention(
                q_decode, decode.k_cache, decode.v_cache, decode.page_table, decode.seq_lens, 0.125
            ),
        ),
        (
            "decode/4",
            lambda: decode_attention.paged_decode_attention(
                q_decode,
                decode.k_cache,
                decode.v_cache,
                decode.page_table,
                decode.seq_lens,
                0.125,
                num_splits=4,
            ),
        ),
        (
            "extend",
            lambda: extend_attention.extend_attention(
                q_prefill,
                prefill.k_cache,
                prefill.v_cache,
                prefill.query_start_loc,
                prefill.seq_lens,
                prefill.page_table,
                32,
                0.125,
            ),
        ),
    ]


def main() -> None:
    only = set(sys.argv[1:])
    for label, launch in launches():
        if only and label not in only:
            continue
        for report in capture(label, launch):
            print(
                f"{report.name:40s} regs {report.registers:>4s} local {report.local_bytes:>4s} "
                f"shared {report.shared:>6d}  {report.sass}"
            )


if __name__ == "__main__":
    main()
