"""Where one bf16 decode step of SmolLM2-135M spends its GPU time, kernel by kernel.

For batch 1, 32 and 128 with 128-token contexts (the end-to-end benchmark's prompts):
the whole model forward (TritonBackend, random weights) is captured in a CUDA graph and
its replay timed (the GPU time of a step with no CPU in the way), and one eager forward
runs under torch.profiler to split that time by kernel. Comparing the graph time with the
engine's measured time per step (bench/results/gpu_engine.md) separates GPU work from
the engine's own per-step CPU work.

    python3 bench/engine/decode_step_profile.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
import triton.testing
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [
    str(ROOT / "model_format" / "src"),
    str(ROOT / "engine" / "src"),
    str(ROOT / "common" / "src"),
    str(ROOT),
]

from bench.kernels.model_greedy import PAGE_SIZE, SMOLLM2_135M, _batch  # noqa: E402
from bench.report import environment, markdown_table, regenerating_command  # noqa: E402
from radixfair_engine.model.llama import KVCache, LlamaModel, rope_table  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402


def kernel_group(name: str) -> str:
    """Folds library kernel names into what they are."""
    lowered = name.lower()
    if any(tag in lowered for tag in ("gemm", "nvjet", "xmma", "cutlass", "gemv", "splitk")):
        return "cuBLAS matrix products"
    if "elementwise" in lowered or "vectorized" in lowered or "copy" in lowered:
        return f"torch elementwise: {name[:60]}"
    return name[:80]


def profile_batch(batch: int, context: int) -> dict[str, object]:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = LlamaModel(SMOLLM2_135M, TritonBackend()).to(device=device, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.02)
    model.cos_sin = rope_table(SMOLLM2_135M).to(device)
    pages_per_seq = -(-(context + 8) // PAGE_SIZE)
    cache = KVCache(SMOLLM2_135M, batch * pages_per_seq, PAGE_SIZE, torch.bfloat16, device)
    prompts = [torch.randint(0, 49152, (context,)).tolist() for _ in range(batch)]
    model(_batch(prompts, [0] * batch, pages_per_seq, device), cache)
    step = _batch([[7] for _ in range(batch)], [context] * batch, pages_per_seq, device)

    def forward() -> torch.Tensor:
        return model(step, cache)

    for _ in range(3):  # compile the kernels for this shape before capture
        forward()
    torch.cuda.synchronize()
    graph_ms = triton.testing.do_bench_cudagraph(forward, rep=200, return_mode="median")
    eager_ms = triton.testing.do_bench(forward, warmup=10, rep=200, return_mode="median")

    repeats = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            forward()
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_kernel[kernel_group(event.name)]
            entry[0] += event.time_range.elapsed_us() / repeats  # µs per step
            entry[1] += 1 / repeats
    kernel_us = sum(v[0] for v in per_kernel.values())
    rows = sorted(
        (
            {
                "kernel": name,
                "launches per step": round(v[1]),
                "us per step": v[0],
                "% of kernel time": 100 * v[0] / kernel_us,
            }
            for name, v in per_kernel.items()
        ),
        key=lambda r: -float(r["us per step"]),  # type: ignore[arg-type]
    )
    return {
        "batch": batch,
        "context": context,
        "graph_step_ms": graph_ms,
        "eager_step_ms": eager_ms,
        "kernel_sum_ms": kernel_us / 1e3,
        "kernels": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--context", type=int, default=192, help="tokens already cached per sequence")
    parser.add_argument("--commit", default=None)
    args = parser.parse_args()
    results = []
    with torch.inference_mode():
        for batch in args.batches:
            results.append(profile_batch(batch, args.context))
            last = results[-1]
            print(
                f"B={batch}: graph {last['graph_step_ms']:.3f} ms, eager {last['eager_step_ms']:.3f} ms,"
                f" kernels {last['kernel_sum_ms']:.3f} ms",
                flush=True,
            )
    env = environment(("torch", "triton"))
    env["git_commit"] = args.commit or env["git_commit"]
    command = regenerating_command()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_step_profile.json").write_text(
        json.dumps({**env, "command": command, "results": results}, indent=2, default=str)
    )
    lines = [
        "# decode_step_profile",
        "",
        f"{env['date']} · {torch.cuda.get_device_name()} · torch {torch.__version__}"
        f" · commit {env['git_commit']}",
        "",
        f"Regenerate (code at commit {env['git_commit'] or 'unknown'}): `{command}`",
        "",
        f"One bf16 decode step of random-weight SmolLM2-135M (TritonBackend), every sequence with"
        f" {args.context} cached tokens. `graph`: CUDA-graph replay median; `eager`: launched from Python;"
        " the kernel table splits an eager step's GPU time (torch.profiler, mean of 5 steps).",
        "",
        markdown_table(
            [
                {k: r[k] for k in ("batch", "graph_step_ms", "eager_step_ms", "kernel_sum_ms")}
                for r in results
            ],
            ["batch", "graph_step_ms", "eager_step_ms", "kernel_sum_ms"],
        ),
    ]
    for result in results:
        lines += ["", f"## batch {result['batch']}", ""]
        lines.append(
            markdown_table(
                result["kernels"], ["kernel", "launches per step", "us per step", "% of kernel time"]
            )  # type: ignore[arg-type]
        )
    (args.out / "decode_step_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
