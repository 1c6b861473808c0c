"""What every per-kernel benchmark shares: SmolLM2-135M shapes, inputs, timing and the GPU check's rows.

A kernel's file in bench/kernels/ (named as its module in the worker's kernels/, which
``kernels/registry.py`` lists) provides up to four functions over this harness:

- ``SIZES`` and ``cases(size) -> list[Case]``: the timed implementations at each size (ours,
  torch eager, torch.compile, Liger where it has the op), run by bench/kernels/kernels_bench.py; a
  module whose timing lives in its own GPU script names it in ``TIMED_BY`` instead.
- ``sweep(sweeper)``: our kernel over its block-size options (``kernels_bench --sweep``).
- ``check(dtype, sizes, record)``: correctness against the fp64 reference, for
  bench/kernels/gpu_kernel_check.py (poisoned outputs, ``kernels.accuracy``).
- ``launches(rows) -> list[(label, launch)]``: the launches the backend makes at ``rows`` tokens,
  compiled for sm_90 by bench/kernels/kernels_compile_report.py (or step_fusion_compile_report.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton.testing

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "engine" / "src", ROOT / "common" / "src", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from radixfair_engine.kernels.accuracy import TOLERANCE  # noqa: E402
from radixfair_engine.model.backend import ForwardBatch  # noqa: E402
from radixfair_engine.model.torch_backend import TorchBackend  # noqa: E402

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, PAGE = 576, 1536, 9, 3, 64, 16
VOCAB = 49152
EPS = 1e-5
DTYPE = torch.bfloat16
BF16 = 2
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TORCH = TorchBackend()

Row = dict[str, object]
Record = Callable[..., None]


@dataclass
class Case:
    """One operation at one size, with its implementations (each a no-argument callable)."""

    kernel: str
    size: str
    bytes: int
    flops: float = 0.0
    impls: dict[str, Callable[[], object]] = field(default_factory=dict)
    # Reduces an implementation's return value to the tensor that is compared with eager's.
    output: Callable[[object], torch.Tensor] = lambda result: result  # type: ignore[assignment,return-value]


@dataclass(frozen=True)
class Sizes:
    """The GPU check's token counts and context lengths; ``SMALL`` is for the CPU interpreter."""

    tokens: tuple[int, ...] = (1, 4097, 65536)
    rope_tokens: int = 4097
    max_context: int = 2048
    long_context: int = 4096
    model_layers: int = 30
    model_steps: int = 16


SMALL = Sizes(tokens=(1, 37), rope_tokens=37, max_context=80, long_context=130, model_layers=2, model_steps=3)


class CheckRows:
    """The GPU check's result rows; ``record`` is what each kernel's ``check`` is handed."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def record(
        self, kernel: str, dtype: torch.dtype, case: str, error: float, tolerance: float | None = None
    ) -> None:
        tolerance = TOLERANCE[dtype] if tolerance is None else tolerance
        self.rows.append(
            {
                "kernel": kernel,
                "dtype": str(dtype).removeprefix("torch."),
                "case": case,
                "rel_error": error,
                "tolerance": tolerance,
                "ok": error < tolerance,
            }
        )


def try_liger(name: str) -> object | None:
    """Liger-Kernel's autograd function for ``name``, or None where it is not installed."""
    try:
        if name == "rms_norm":
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction

            return LigerRMSNormFunction
        if name == "add_rms_norm":
            from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

            return LigerFusedAddRMSNormFunction
        if name == "rope":
            from liger_kernel.ops.rope import LigerRopeFunction

            return LigerRopeFunction
        if name == "swiglu":
            from liger_kernel.ops.swiglu import LigerFusedGateUpSiLUMulFunction

            return LigerFusedGateUpSiLUMulFunction
    except ImportError as error:
        print(f"liger-kernel {name} unavailable: {error}")
    return None


def compiled(fn: Callable[..., object]) -> Callable[..., object]:
    return torch.compile(fn, dynamic=False, fullgraph=False)


def rope_table(positions: int = 8192, device: str = DEVICE) -> torch.Tensor:
    """[positions, HEAD_DIM] fp32: cos of the HEAD_DIM/2 frequencies, then sin (SmolLM2's theta)."""
    inv_freq = 1.0 / 100000.0 ** (torch.arange(0, HEAD_DIM, 2, device=device).float() / HEAD_DIM)
    freqs = torch.outer(torch.arange(positions, device=device).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def qkv_views(
    tokens: int, dtype: torch.dtype = DTYPE, device: str = DEVICE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [T, HEADS, D], k and v [T, KV_HEADS, D]: views into one fused projection, as the model has."""
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=dtype, device=device)
    q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    return (
        q.view(tokens, HEADS, HEAD_DIM),
        k.view(tokens, KV_HEADS, HEAD_DIM),
        v.view(tokens, KV_HEADS, HEAD_DIM),
    )


def forward_batch(ctx, query_lens: list[int], seq_lens: list[int]) -> ForwardBatch:  # type: ignore[no-untyped-def]
    """A ForwardBatch over a ``paged_fixtures`` context, for timing the torch backend's attention."""
    return ForwardBatch(
        input_ids=torch.zeros(sum(query_lens), dtype=torch.int64, device=ctx.page_table.device),
        positions=ctx.positions,
        query_start_loc=ctx.query_start_loc,
        seq_lens=ctx.seq_lens,
        page_table=ctx.page_table,
        slot_mapping=ctx.slot_mapping,
        logits_indices=ctx.query_start_loc[1:].long() - 1,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_host=query_lens,
        seq_lens_host=seq_lens,
    )


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, bytes read plus written, in TB/s."""
    src = torch.randn(512 * 2**20, dtype=DTYPE, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * BF16 / (ms * 1e-3) / 1e12


def time_impl(fn: Callable[[], object]) -> tuple[float, float, float | None]:
    """(do_bench median us, a second do_bench median us (the run-to-run spread), CUDA-graph
    replay median us or None if it cannot be captured)."""
    ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    again = triton.testing.do_bench(fn, warmup=5, rep=100, return_mode="median")
    try:
        graph_ms = triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
    except Exception as error:  # some baselines (host syncs in the loop) cannot be captured
        print(f"    graph capture failed: {type(error).__name__}: {str(error)[:120]}")
        graph_ms = None
        torch.cuda.synchronize()
    return ms * 1e3, again * 1e3, (graph_ms * 1e3 if graph_ms is not None else None)


def run_case(case: Case, copy_tbs: float) -> list[Row]:
    """Runs each implementation once (compared with torch eager's output), then times it."""
    from radixfair_engine.kernels.accuracy import relative_error

    rows = []
    reference = None
    results: dict[str, torch.Tensor] = {}
    for name, fn in case.impls.items():
        try:
            results[name] = case.output(fn()).detach().clone()
        except Exception as error:
            print(f"  {case.kernel} {case.size} {name}: failed: {error!r}"[:300])
    if "torch eager" in results:
        reference = results["torch eager"]
    elif results:
        reference = next((v for k, v in results.items() if k.startswith("torch")), None)
    for name, fn in case.impls.items():
        if name not in results:
            rows.append({"kernel": case.kernel, "size": case.size, "impl": name, "note": "failed"})
            continue
        us, us_again, graph_us = time_impl(fn)
        tbs = case.bytes / (us * 1e-6) / 1e12
        row: Row = {
            "kernel": case.kernel,
            "size": case.size,
            "impl": name,
            "us": us,
            "us (2nd)": us_again,
            "graph_us": graph_us,
            "TB/s": tbs,
            "% copy": 100 * tbs / copy_tbs,
            "graph % copy": (100 * case.bytes / (graph_us * 1e-6) / 1e12 / copy_tbs) if graph_us else None,
            "rel err vs torch": relative_error(results[name], reference) if reference is not None else None,
            "bytes": case.bytes,
        }
        if case.flops:
            row["TFLOP/s"] = case.flops / (us * 1e-6) / 1e12
        rows.append(row)
        print(
            f"  {case.kernel:24s} {case.size:24s} {name:36s} {us:9.1f} us"
            f"  graph {graph_us or float('nan'):9.1f} us"
            f"  {tbs:5.2f} TB/s  {row['% copy']:5.1f}% copy  err {row['rel err vs torch']}"
        )
    return rows


class SweepRows:
    """The block-size sweep's rows; ``record`` is what each kernel's ``sweep`` is handed."""

    def __init__(self, copy_tbs: float) -> None:
        self.copy_tbs = copy_tbs
        self.rows: list[Row] = []

    def record(
        self, kernel: str, config: str, fn: Callable[[], object], nbytes: int, flops: float = 0.0
    ) -> None:
        try:
            fn()
            if kernel.startswith("decode"):
                us = triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median") * 1e3
            else:
                us = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3
        except Exception as error:
            print(f"  sweep {kernel} {config}: {error!r}"[:200])
            torch.cuda.synchronize()
            return
        tbs = nbytes / (us * 1e-6) / 1e12
        row: Row = {"kernel": kernel, "config": config, "us": us, "% copy": 100 * tbs / self.copy_tbs}
        if flops:
            row["TFLOP/s"] = flops / (us * 1e-6) / 1e12
        self.rows.append(row)
        print(f"  sweep {kernel:28s} {config:48s} {us:8.1f} us {row['% copy']:5.1f}%")
