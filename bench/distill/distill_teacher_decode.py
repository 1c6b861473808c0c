"""The real teacher's decode tokens/s in bf16, int8 and fp8 on the worker's engine, interleaved (issue #15).

Issue 15's target: "An int8 or fp8 checkpoint must decode faster on the worker than the bf16 one at
batch 1, and no slower at batch 128". The teacher's decode columns in distill_results_gpu.md
(bf16 980 / int8 579 / fp8 560 tok/s at batch 1, 58.2k / 52.7k / 52.2k at batch 128) were measured
before the current quantized kernels, one model after another; gpu_quantized_decode_h200.md measured
the current kernels on random weights of the real shape. This page measures the real teacher.

The teacher directory (``--teacher-dir``; converted from ``--gguf`` by the worker's model store when
it holds no weights yet) is quantized by the distiller's own writer (radixfair_distiller.quantize:
format version 2, int8 embedding) into int8 and fp8 copies. The three are timed by
distill_decode_speed.interleaved_decode_speeds: each built by the worker's start-up path
(build_engine: Triton, bf16, CUDA-graph decode, overlap scheduling, the quantized kernels at the
EngineConfig defaults the worker runs) and warmed, then ``--rounds`` rounds of one run per model
and batch size. A run: ``batch`` random ``--prompt-len``-token prompts prefilled untimed, then the
decode steps of ``--new-tokens`` greedy tokens each (end-of-sequence ignored) timed.

Rows: median and worst (slowest) tokens/s over the rounds, and the ratio of medians to bf16 at the
same batch (``worst_ratio``: worst over bf16's worst). ``graph_ms``: device time of one decode step
(median replay of the engine's captured CUDA graph), free of the host's noise; ``graph_ratio``:
bf16's over this row's (above 1 = faster).

On the GPU machine (the teacher's GGUF joined in /tmp/gpu_model by ../shared/tools/gpu_model_parts.sh;
PYTHONPATH on every package's src, the distiller's included):

    python3 bench/distill/distill_teacher_decode.py --gguf /tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --teacher-dir /tmp/smollm2-real --out $OUT

Here, a CPU check of the script on a tiny random teacher (torch backend, fp32: not a speed figure):

    .venv/bin/python bench/distill/distill_teacher_decode.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.distill.distill_decode_speed import (  # noqa: E402
    DecodeSpeedConfig,
    InterleavedSpeeds,
    interleaved_decode_speeds,
)
from bench.report import markdown_table, regenerating_command, write_results  # noqa: E402

SCHEMES = ("int8", "fp8")
COLUMNS = [
    "variant", "batch", "rounds", "median_tok_s", "worst_tok_s", "best_tok_s", "ratio_to_bf16",
    "worst_ratio", "median_ms_step", "graph_ms", "graph_ratio", "weights_MB", "build_s", "target",
]  # fmt: skip
# The figures this page replaces (distill_results_gpu.md's teacher rows, measured before fc19d0e).
EARLIER = {("bf16", 1): 980, ("int8", 1): 579, ("fp8", 1): 560}
EARLIER |= {("bf16", 128): 58_223, ("int8", 128): 52_735, ("fp8", 128): 52_193}
# How the GPU page is regenerated: two device calls back to back (the GGUF travels in two parts).
GPU_CALLS = (
    "[call 1, carrying .gpu_model/part_00, sha256, whl/, gpu_model_parts.sh] mkdir -p /tmp/gpu_model && "
    "cp -r .gpu_model/. /tmp/gpu_model/; [call 2 at once, carrying .gpu_model/part_01, .snap (git archive "
    "of the commit) and bench/scratch/gpu_serving/whl's grpcio* and protobuf wheels] cp .gpu_model/part_01 "
    "/tmp/gpu_model/ && bash /tmp/gpu_model/gpu_model_parts.sh --join /tmp/gpu_model, those wheels into "
    "/tmp/site, then in .snap with PYTHONPATH on /tmp/site and every package's src, the distiller's too:"
)


def speed_rows(
    speeds: InterleavedSpeeds, reference: str, sizes_mb: dict[str, float] | None = None
) -> list[dict[str, object]]:
    """One row per (variant, batch), batch-major, each against ``reference``'s row at the same batch.

    ``target`` (quantized rows only): issue 15's rule on medians, "faster" than the reference at the
    smallest batch, "no slower" (ratio >= 1) at the largest.
    """
    batches = sorted({batch for _, batch in speeds.runs})
    variants = list(dict.fromkeys(name for name, _ in speeds.runs))
    rows: list[dict[str, object]] = []
    for batch in batches:
        ref_runs = [r.tok_s for r in speeds.runs[reference, batch]]
        ref_graph = speeds.graph_ms.get((reference, batch))
        for name in variants:
            runs = speeds.runs[name, batch]
            tok_s = [r.tok_s for r in runs]
            graph = speeds.graph_ms.get((name, batch))
            row: dict[str, object] = {
                "variant": name,
                "batch": batch,
                "rounds": len(runs),
                "median_tok_s": statistics.median(tok_s),
                "worst_tok_s": min(tok_s),
                "best_tok_s": max(tok_s),
                "ratio_to_bf16": statistics.median(tok_s) / statistics.median(ref_runs),
                "worst_ratio": min(tok_s) / min(ref_runs),
                "median_ms_step": statistics.median(r.ms_step for r in runs),
                "graph_ms": graph,
                "graph_ratio": ref_graph / graph if graph and ref_graph else None,
                "weights_MB": (sizes_mb or {}).get(name),
                "build_s": speeds.build_s.get(name),
                "runs_tok_s": tok_s,
            }
            if name != reference:
                row["target"] = target_verdict(
                    statistics.median(tok_s) / statistics.median(ref_runs), batch, batches
                )
            rows.append(row)
    return rows


def target_verdict(ratio: float, batch: int, batches: list[int]) -> str:
    """Issue 15's speed rule for one quantized row (ratio of medians to bf16 at the same batch)."""
    if batch == min(batches):
        return f"faster: {'yes' if ratio > 1 else 'NO'}"
    if batch == max(batches):
        return f"no slower: {'yes' if ratio >= 1 else 'NO'}"
    return ""


def teacher_dir(args: argparse.Namespace, work: Path) -> Path:
    """The model directory timed: a tiny random teacher with --quick, else the real one (converted once)."""
    if args.quick:
        from bench.distill.distill_gpu_parts import tiny_teacher
        from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir

        tokenizer = resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser())
        return tiny_teacher(work / "tiny-teacher", tokenizer)
    if not (args.teacher_dir / "model.safetensors").exists():
        if args.gguf is None or not args.gguf.exists():
            raise SystemExit(f"no weights in {args.teacher_dir} and no --gguf to convert (see the docstring)")
        from radixfair_model_format.model_store import convert_gguf

        started = time.perf_counter()
        convert_gguf(args.gguf, args.teacher_dir)
        print(f"converted {args.gguf} in {time.perf_counter() - started:.1f} s", flush=True)
    return args.teacher_dir


def model_dirs(teacher: Path, work: Path, reference: str) -> dict[str, Path]:
    """The teacher and its int8 / fp8 copies, written by the distiller's own quantizer."""
    from radixfair_distiller.quantize import quantize_model_dir

    dirs = {reference: teacher}
    for scheme in SCHEMES:
        started = time.perf_counter()
        dirs[scheme] = quantize_model_dir(teacher, work / scheme, scheme)
        print(f"{scheme} copy written in {time.perf_counter() - started:.1f} s", flush=True)
    return dirs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher-dir", type=Path, default=Path(tempfile.gettempdir()) / "smollm2-real")
    parser.add_argument("--gguf", type=Path, default=None, help="converted into --teacher-dir if it is empty")
    parser.add_argument(
        "--quick", action="store_true", help="CPU, tiny random teacher: a check of the script"
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (2 with --quick)")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=None, help="default 1 128 (1 4 with --quick)"
    )
    parser.add_argument("--prompt-len", type=int, default=None, help="default 128 (8 with --quick)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 128 (4 with --quick)")
    parser.add_argument("--name", default=None, help="default distill_teacher_decode_h200 (_cpu_quick)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.quick
    args.device = "cuda" if cuda else "cpu"
    args.rounds = args.rounds or (5 if cuda else 2)
    args.batches = tuple(args.batches or ((1, 128) if cuda else (1, 4)))
    args.prompt_len = args.prompt_len or (128 if cuda else 8)
    args.new_tokens = args.new_tokens or (128 if cuda else 4)
    args.name = args.name or ("distill_teacher_decode_h200" if cuda else "distill_teacher_decode_cpu_quick")
    return args


def notes(args: argparse.Namespace, reference: str) -> str:
    pairs = [(name, batch) for batch in args.batches for name in (reference, *SCHEMES)]
    earlier = ", ".join(f"{n} b{b} {EARLIER[n, b]:,}" for n, b in pairs if (n, b) in EARLIER)
    model = "A tiny random teacher (--quick)" if args.quick else "The real SmolLM2-135M-Instruct teacher"
    engine = "Triton, bf16, CUDA-graph decode, overlap scheduling" if args.device == "cuda" else "torch, fp32"
    text = (
        f"{model}: {reference} = the unquantized checkpoint; int8 / fp8 = radixfair_distiller.quantize's "
        "copies (format v2: projections per output channel, embedding int8). Engine: build_engine as the "
        f"worker starts it, device {args.device}, {engine}; {args.prompt_len}-token random prompts, "
        f"{args.new_tokens} greedy tokens a request (EOS ignored), decode steps only. Every engine built "
        f"and warmed first, then {args.rounds} rounds, each one run of every engine at every batch in "
        "turn (the host's slow phases land on every variant alike). median / worst / best: tokens/s over "
        "the rounds; ratio_to_bf16: median over the unquantized median at the same batch; worst_ratio: "
        "worst over its worst; graph_ms: one decode step's device time (median CUDA-graph replay), "
        "graph_ratio: the unquantized graph_ms over this row's (above 1 = faster); target: issue 15's "
        "rule on the medians (faster at the smallest batch, no slower at the largest). weights_MB: "
        "model.safetensors on disk (the unquantized teacher as converted from the GGUF, float32; the "
        "engine loads it in bf16)."
    )
    if earlier and not args.quick:
        text += (
            " Earlier figures (distill_results_gpu.md, kernels before fc19d0e, one model at a time): "
            f"{earlier}."
        )
    if args.quick:
        text += " CPU --quick: a check of the script and its wiring, not a speed measurement."
    return text


def main() -> None:
    args = parse_args()
    if args.quick:
        # A tiny model's ops are too small to share out: one thread is ~10x faster on a shared 2-core
        # box (tests/conftest.py), and this mode checks the script, not the machine.
        torch.set_num_threads(1)
    reference = "bf16" if args.device == "cuda" else "fp32"
    config = DecodeSpeedConfig(
        batches=args.batches, prompt_len=args.prompt_len, new_tokens=args.new_tokens, device=args.device
    )
    work = Path(tempfile.mkdtemp(prefix="teacher-decode-"))
    try:
        dirs = model_dirs(teacher_dir(args, work), work, reference)
        sizes = {name: (path / "model.safetensors").stat().st_size / 1e6 for name, path in dirs.items()}
        speeds = interleaved_decode_speeds(dirs, config, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = speed_rows(speeds, reference, sizes)
    targets = {f"{r['variant']} b{r['batch']}": r["target"] for r in rows if r.get("target")}
    summary = {"reference": reference, "decode_config": dataclasses.asdict(config), "targets": targets}
    command = None if args.quick else f"{GPU_CALLS} {regenerating_command()}"
    text = notes(args, reference)
    write_results(args.name, rows, COLUMNS, summary, text, command=command, results_dir=args.out)
    print(markdown_table(rows, COLUMNS))
    print(text)


if __name__ == "__main__":
    main()
