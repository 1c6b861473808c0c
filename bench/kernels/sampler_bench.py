"""The device sampler alone: the sort-based top-p (the tests' reference) against the sorting-free one.

For each batch size and logits shape, times one sampling call of each path on
the same logits and per-row table (temperature 0.7, top-p 0.9, seed = row; a
second setting adds top-k 50):

- ``eager_ms``: wall time per call of back-to-back eager calls (what the
  engine pays when the device is the bottleneck; it includes the host's
  launches when they are slower);
- ``host_ms``: the host's time to launch one call (the loop's time before the
  final synchronisation);
- ``graph_ms``: the device's time per call, replaying the call captured in a
  CUDA graph (no launch cost; None where capture fails or off CUDA).

``agree`` is the share of rows where both paths drew the same token (the tests
say when they may differ: a draw within rounding of a boundary).

Logits: ``flat`` = N(0, 1) (random weights: top-p 0.9 keeps most of the
vocabulary), ``peaked`` = N(0, 4) rounded to bf16 (a trained model's shape,
ties included: a small nucleus).

    PYTHONPATH=common/src:services/worker/src python3 bench/kernels/sampler_bench.py --batches 1 32 128
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from worker.sampler_reference import sample_rows_sorted, top_p_keep_sorted  # noqa: E402

from bench.report import markdown_table, write_results  # noqa: E402
from radixfair_engine.nucleus import keep_top_k, top_p_keep  # noqa: E402
from radixfair_engine.sampler import sample_rows  # noqa: E402

SETTINGS = {"t0.7 p0.9": (0.7, 0, 0.9), "t0.7 k50 p0.9": (0.7, 50, 0.9)}


def make_logits(shape: str, batch: int, vocab: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    if shape == "flat":
        return torch.randn(batch, vocab, generator=g).to(device)
    return (torch.randn(batch, vocab, generator=g) * 4).bfloat16().float().to(device)


def make_table(batch: int, temperature: float, top_k: int, top_p: float, device: str) -> torch.Tensor:
    table = torch.zeros(batch, 6, dtype=torch.float64)
    table[:, 0] = torch.arange(batch, dtype=torch.float64)  # seed = row
    table[:, 2] = 7.0  # the token index
    table[:, 3], table[:, 4], table[:, 5] = temperature, top_k, top_p
    return table.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_eager(call: Callable[[], object], iters: int, device: str) -> tuple[float, float]:
    """(wall ms per call, host launch ms per call) over ``iters`` back-to-back calls."""
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        call()
    launched = time.perf_counter()
    sync(device)
    done = time.perf_counter()
    return 1e3 * (done - start) / iters, 1e3 * (launched - start) / iters


def time_graph(call: Callable[[], object], iters: int, device: str) -> float | None:
    """Device ms per call, replaying ``call`` captured in a CUDA graph; None off CUDA or if capture fails."""
    if device != "cuda":
        return None
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm the allocator and any lazy initialisation outside the capture
                call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
    except Exception as error:  # a path that cannot be captured is reported as such, not fatal
        print(f"graph capture failed: {error!r}", flush=True)
        return None
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def measure(batch: int, vocab: int, shape: str, setting: str, args: argparse.Namespace) -> dict[str, object]:
    temperature, top_k, top_p = SETTINGS[setting]
    logits = make_logits(shape, batch, vocab, args.device)
    table = make_table(batch, temperature, top_k, top_p, args.device)
    paths = {
        "sort": lambda: sample_rows_sorted(logits, table, True),
        "radix": lambda: sample_rows(logits, table, top_k, top_p < 1.0),
    }
    row: dict[str, object] = {"batch": batch, "vocab": vocab, "logits": shape, "sampling": setting}
    tokens = {}
    for name, call in paths.items():
        for _ in range(args.warmup):
            call()
        tokens[name] = call()[0]
        eager, host = time_eager(call, args.iters, args.device)
        row[f"{name}_eager_ms"] = eager
        row[f"{name}_host_ms"] = host
        row[f"{name}_graph_ms"] = time_graph(call, args.iters, args.device)
    row["eager_speedup"] = row["sort_eager_ms"] / row["radix_eager_ms"]
    if row["sort_graph_ms"] and row["radix_graph_ms"]:
        row["graph_speedup"] = row["sort_graph_ms"] / row["radix_graph_ms"]
    else:
        row["graph_speedup"] = None
    row["agree"] = (tokens["sort"] == tokens["radix"]).double().mean().item()
    row.update(kept_sets(logits, table, top_k))
    print(row, flush=True)
    return row


def kept_sets(logits: torch.Tensor, table: torch.Tensor, top_k: int) -> dict[str, bool]:
    """Whether the device's top-p kept set equals the CPU's (exact integer arithmetic: must) and the sort's.

    The same tempered scores and probabilities feed all three, so only the selection is compared.
    """
    scores = (logits - logits.amax(dim=-1, keepdim=True)) / table[:, 3:4].float()
    if top_k:
        scores = keep_top_k(scores, table[:, 4].long(), top_k)
    probs = torch.softmax(scores, dim=-1)
    keep = top_p_keep(scores, probs, table[:, 5])
    on_cpu = top_p_keep(scores.cpu(), probs.cpu(), table[:, 5].cpu())
    return {
        "keep_equals_cpu": torch.equal(keep.cpu(), on_cpu),
        "keep_equals_sort": torch.equal(keep, top_p_keep_sorted(scores, probs, table[:, 5])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-name", default=None, help="results name (default sampler_bench_<device>)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    parser.add_argument("--out", type=Path, default=None, help="also copy the results here (device $OUT)")
    args = parser.parse_args()
    rows = [
        measure(batch, args.vocab, shape, setting, args)
        for batch in args.batches
        for shape in ("flat", "peaked")
        for setting in SETTINGS
    ]
    name = args.out_name or f"sampler_bench_{args.device}"
    notes = (
        f"One sampling call of [batch, {args.vocab}] fp32 logits on {args.device}, {args.iters} calls per "
        "figure after a warm-up. sort = the sort-based path of 6df3feb (tests/worker/sampler_reference.py); "
        "radix = radixfair_engine.sampler.sample_rows (top-p by radix selection, top-k by one topk). "
        "eager_ms: wall per call, back to back; host_ms: launch time per call; graph_ms: device time per "
        "call from a CUDA-graph replay. agree: share of rows drawing the same token on both paths. "
        "keep_equals_cpu / keep_equals_sort: the device's top-p kept set, from the same probabilities, "
        "equals the CPU's / the sort's (the tests say when the latter may differ: within rounding). "
        "flat = N(0,1) logits; peaked = N(0,4) rounded to bf16."
    )
    columns = list(rows[0])
    path = write_results(name, rows, columns, {}, notes, results_dir=args.results_dir)
    print(markdown_table(rows, columns))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".json"):
            (args.out / f"{name}{suffix}").write_text(path.with_suffix(suffix).read_text())


if __name__ == "__main__":
    main()
