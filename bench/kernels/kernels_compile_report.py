"""Compiles every kernel for sm_90 on this machine (no GPU needed) and reports its resources.

METHOD.md: read what costs no device time first. For each launch the backend makes
at SmolLM2-135M shapes, this prints registers, spilled bytes, shared memory and
the SASS mix that matters for memory-bound code: how wide the global loads and
stores are (LDG.E.128 is 16 bytes per thread; LDG.E.U16 is 2) and whether the
tensor-core instructions are there. Launches are intercepted, not run: arguments
are specialised the way Triton's JIT does (16-byte-aligned pointers and integers
divisible by 16 get the divisibility hint, integers equal to 1 become constants).

    .venv/bin/python bench/kernels/kernels_compile_report.py [--rows N] [--list] [LABEL ...]

The launches are those of the registry's kernels (``kernels/registry.py``), each built by
``launches`` in bench/kernels/<module>.py; the step-fusion kernels (off by default) have
their own report, bench/kernels/step_fusion_compile_report.py.
"""

from __future__ import annotations

import argparse
import collections
import importlib
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

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "..", "engine", "src")]
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from radixfair_engine.kernels.registry import modules  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16", torch.int32: "i32"}
_DTYPES.update({torch.int64: "i64", torch.int8: "i8"})


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
    kernels = [importlib.import_module(f"radixfair_engine.kernels.{name}") for name in modules()]
    kernels = [module for module in kernels if hasattr(module, "interpreted")]
    saved = [module.interpreted for module in kernels]
    JITFunction.run = compile_instead  # type: ignore[method-assign]
    for module in kernels:
        module.interpreted = lambda tensor: False
    try:
        launch()
    finally:
        JITFunction.run = original  # type: ignore[method-assign]
        for module, interpreted in zip(kernels, saved):
            module.interpreted = interpreted
    return reports


def report_line(report: Report, width: int = 40) -> str:
    return (
        f"{report.name:{width}s} regs {report.registers:>4s} local {report.local_bytes:>4s} "
        f"shared {report.shared:>6d}  {report.sass}"
    )


def launches(step_fusion: bool, rows: int) -> list[tuple[str, Callable[[], object]]]:
    """The backend's launches at ``rows`` tokens, SmolLM2-135M shapes, bf16, for the registry's
    kernel modules (the step-fusion ones, or the others)."""
    found: list[tuple[str, Callable[[], object]]] = []
    for module in modules(step_fusion=step_fusion):
        found += importlib.import_module(f"bench.kernels.{module}").launches(rows)
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compile each registry kernel's launches for sm_90 (no GPU) and print registers, "
        "spills, shared memory and the SASS load/store/tensor-core mix."
    )
    parser.add_argument(
        "labels", nargs="*", metavar="LABEL", help="report only these launches (default: all); see --list"
    )
    parser.add_argument("--rows", type=int, default=4096, help="tokens per launch (default: 4096)")
    parser.add_argument("--list", action="store_true", help="print the launch labels and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    found = launches(step_fusion=False, rows=args.rows)
    known = [label for label, _ in found]
    if args.list:
        print("\n".join(known))
        return
    unknown = sorted(set(args.labels) - set(known))
    if unknown:
        sys.exit(f"unknown launch label(s) {unknown}; known: {', '.join(known)}")
    only = set(args.labels)
    for label, launch in found:
        if only and label not in only:
            continue
        try:
            reports = capture(label, launch)
        except Exception as error:  # report every failing launch, not only the first
            print(f"{label:40s} FAILED: {type(error).__name__}: {str(error)[:400]}")
            continue
        for report in reports:
            print(report_line(report))


if __name__ == "__main__":
    main()
