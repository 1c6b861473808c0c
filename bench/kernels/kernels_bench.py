"""Per-kernel speed at SmolLM2-135M shapes: ours against torch eager, torch.compile and Liger-Kernel.

Shapes: hidden 576, intermediate 1536, 9 query heads, 3 KV heads, head 64, bf16,
pages of 16 tokens; 4,096 and 65,536 tokens for the token-parallel kernels, and
a decode batch of 128 sequences over 1,024-token contexts for decode attention.

Each implementation first runs once and is compared with the torch eager output
(relative error, ``kernels.accuracy``). Time is ``triton.testing.do_bench``'s
median with the L2 flushed before every call (launch included, as an eager
engine pays it), and, as a second column, the median of CUDA-graph replays
(``do_bench_cudagraph``: GPU time alone, as a captured decode step pays it).
Achieved bandwidth counts the fewest bytes the operation must move (each input
read once, each output written once) over the do_bench time, and is compared
with a measured device-to-device copy (bytes read plus bytes written).

    python3 bench/kernels/kernels_bench.py [--out DIR] [--sweep]

``--sweep`` also times our kernels over their block-size options and prints
the best; the defaults in the kernel modules come from such a sweep.

Each kernel's cases and sweep live in bench/kernels/<module>.py over bench/kernels/harness.py;
this entry point iterates over the kernel registry (``kernels/registry.py``) and writes the page.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "engine" / "src"), str(ROOT)]

from bench.kernels.decode_attention import decode_case  # noqa: E402,F401  (gpu_step_fusion_bench)
from bench.kernels.harness import Row, SweepRows, copy_bandwidth, run_case  # noqa: E402,F401
from bench.kernels.rms_norm import norm_ab  # noqa: E402
from bench.report import environment, markdown_table, regenerating_command  # noqa: E402
from radixfair_engine.kernels.registry import modules  # noqa: E402


def kernel_benches() -> list[ModuleType]:
    """bench/kernels/<module>.py of every registered kernel module, in registry order."""
    return [importlib.import_module(f"bench.kernels.{module}") for module in modules()]


def timed_rows(copy_tbs: float) -> list[Row]:
    rows: list[Row] = []
    for bench in kernel_benches():
        if not hasattr(bench, "cases"):
            print(f"{bench.__name__}: timed by {bench.TIMED_BY}")
            continue
        for size in bench.SIZES:
            for case in bench.cases(size):
                rows += run_case(case, copy_tbs)
            torch.cuda.empty_cache()
    return rows


def sweep_rows(copy_tbs: float) -> list[Row]:
    """Block-size options for the kernels whose first sweep (run 1, notes/kernels.md) left a
    question: swiglu's row-streaming version at 64k tokens, decode attention timed as the engine
    runs it (CUDA-graph replay, K/V rotated so it comes from DRAM), extend attention."""
    sweeper = SweepRows(copy_tbs)
    for bench in kernel_benches():
        if hasattr(bench, "sweep"):
            bench.sweep(sweeper)
    return sweeper.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--skip-main", action="store_true", help="only the sweep")
    parser.add_argument("--commit", default=None, help="the checkout's commit (the device copy has no .git)")
    parser.add_argument(
        "--norm-ab", action="store_true", help="add_rms_norm against Liger, interleaved rounds"
    )
    parser.add_argument("--render", type=Path, default=None, help="rewrite kernels.md from this kernels.json")
    args = parser.parse_args()
    if args.render:
        (args.render.parent / "kernels.md").write_text(render_markdown(json.loads(args.render.read_text())))
        return
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    copy_tbs = copy_bandwidth()
    props = torch.cuda.get_device_properties()
    print(f"{props.name}: {props.multi_processor_count} SMs, copy bandwidth {copy_tbs:.2f} TB/s")
    rows: list[Row] = []
    sweep: list[Row] = []
    with torch.inference_mode():
        if not args.skip_main:
            rows = timed_rows(copy_tbs)
            write(
                args.out, rows, sweep, copy_tbs, props, commit=args.commit
            )  # kept if the sweep runs out of time
        if args.sweep:
            sweep = sweep_rows(copy_tbs)
            write(args.out, rows, sweep, copy_tbs, props, commit=args.commit)
        if args.norm_ab:
            ab_rows = norm_ab(copy_tbs)
            write(args.out, rows, sweep, copy_tbs, props, ab_rows, commit=args.commit)


def write(
    out: Path,
    rows: list[dict[str, object]],
    sweep_rows: list[dict[str, object]],
    copy_tbs: float,
    props: object,
    ab_rows: list[dict[str, object]] | None = None,
    commit: str | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = environment(("torch", "triton", "liger-kernel"))
    env["git_commit"] = commit or env["git_commit"]
    meta = {
        **env,
        "command": regenerating_command(),
        "gpu": {"name": props.name, "sms": props.multi_processor_count},  # type: ignore[attr-defined]
        "copy_TBps": copy_tbs,
        "dtype": "bfloat16",
        "rows": rows,
        "sweep": sweep_rows,
        "add_rms_norm_ab": ab_rows or [],
    }
    (out / "kernels.json").write_text(json.dumps(meta, indent=2, default=str))
    markdown = render_markdown(meta)
    (out / "kernels.md").write_text(markdown)
    print(markdown)


# The targets at 65,536 tokens: >= 80% of copy bandwidth and no slower than Liger.
ELEMENTWISE_TARGETS = {
    "rms_norm": "rms_norm",
    "add_rms_norm": "add_rms_norm",
    "rope (q, k in place)": "rope (q, k in place)",
    "rope + K/V page write": None,  # Liger has no fused K/V page write
    "write_kv": None,
    "swiglu (fused gate_up)": "swiglu (fused gate_up)",
}


def targets(meta: dict) -> list[dict[str, object]]:  # type: ignore[type-arg]
    """One verdict row per target, from the measured rows alone."""
    by_key = {(r["kernel"], r["size"], r["impl"]): r for r in meta["rows"] if "us" in r}
    verdicts: list[dict[str, object]] = []
    for kernel in ELEMENTWISE_TARGETS:
        ours = by_key.get((kernel, "T=65536", "ours"))
        if ours is None:
            continue
        liger = by_key.get((kernel, "T=65536", "liger"))
        row: dict[str, object] = {
            "target": f"{kernel} at 65,536 tokens",
            "ours us (graph)": f"{ours['us']:.1f} ({ours['graph_us']:.1f})",
            "ours % copy": ours["% copy"],
            "liger us (graph)": f"{liger['us']:.1f} ({liger['graph_us']:.1f})" if liger else "n/a",
        }
        fast_enough = float(ours["% copy"]) >= 80  # type: ignore[arg-type]
        if liger:
            # Liger's do_bench time swings with its Python launch path; GPU time decides the tie.
            behind = 100 * (float(ours["graph_us"]) / float(liger["graph_us"]) - 1)  # type: ignore[arg-type]
            row["vs liger (GPU time)"] = f"{behind:+.1f}%"
            if not fast_enough or behind > 0.5:
                row["met"] = f"no: {behind:+.1f}% vs Liger" if fast_enough else "no: under 80% of copy"
            elif behind > 0:
                row["met"] = f"tie: {behind:+.1f}%, inside the ~0.5% run-to-run spread"
            else:
                row["met"] = "yes"
        else:
            row["met"] = "yes" if fast_enough else "no"
        verdicts.append(row)
    decode = next(
        (r for r in meta["rows"] if r["kernel"] == "decode attention" and "auto" in str(r["impl"])), None
    )
    if decode is not None:
        verdicts.append(
            {
                "target": "decode attention >= 70% of copy on its K/V",
                "ours us (graph)": f"{decode['us']:.1f} ({decode['graph_us']:.1f})",
                "ours % copy": decode["graph % copy"],
                "liger us (graph)": "n/a",
                "met": "yes (GPU time, cold K/V)" if float(decode["graph % copy"]) >= 70 else "no",  # type: ignore[arg-type]
            }
        )
    return verdicts


def regenerate_line(meta: dict) -> list[str]:  # type: ignore[type-arg]
    """The header's Regenerate line and a blank, or nothing for a kernels.json written before it kept one."""
    if "command" not in meta:
        return []
    note = meta.get("command_note") or f"code at commit {meta['git_commit'] or 'unknown'}"
    return [f"Regenerate ({note}): `{meta['command']}`", ""]


def render_markdown(meta: dict) -> str:  # type: ignore[type-arg]
    columns = ["kernel", "size", "impl", "us", "us (2nd)", "graph_us", "TB/s", "% copy", "graph % copy"]
    columns.append("rel err vs torch")
    gpu = meta["gpu"]
    lines = [
        "# kernels",
        "",
        f"{meta['date']} · {gpu['name']} ({gpu['sms']} SMs) · "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
        + f" · bf16 · measured copy bandwidth {meta['copy_TBps']:.2f} TB/s · commit {meta['git_commit']}",
        "",
        *regenerate_line(meta),
        "`us`: triton.testing.do_bench median, L2 flushed, launch included; `us (2nd)`: the same timed "
        "again (run-to-run spread). `graph_us`: CUDA-graph replay median (GPU time only; decode rotates four "
        "K/V sets so replays read DRAM). `% copy`: fewest bytes the op must move over `us`, against the copy "
        "bandwidth. Shapes: SmolLM2-135M (hidden 576, intermediate 1536, 9 heads, 3 KV heads, head 64, "
        "pages of 16).",
        "",
        "## Targets",
        "",
        markdown_table(
            targets(meta),
            ["target", "ours us (graph)", "ours % copy", "liger us (graph)", "vs liger (GPU time)", "met"],
        ),
        "",
        "## All measurements",
        "",
        markdown_table(meta["rows"], columns),
    ]
    sweep_rows = meta.get("sweep") or []
    if sweep_rows:
        best: dict[str, dict[str, object]] = {}
        for row in sweep_rows:
            kernel = str(row["kernel"])
            if kernel not in best or float(row["us"]) < float(best[kernel]["us"]):  # type: ignore[arg-type]
                best[kernel] = row
        lines += ["", "## Best block sizes (sweep; swiglu at 65,536 tokens)", ""]
        lines.append(markdown_table(list(best.values()), ["kernel", "config", "us", "% copy", "TFLOP/s"]))
    ab_rows = meta.get("add_rms_norm_ab") or []
    if ab_rows:
        lines += ["", "## add_rms_norm at 65,536 tokens, GPU time, interleaved rounds", ""]
        lines.append(markdown_table(ab_rows, ["impl", "graph_us per round", "best us", "% copy"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
