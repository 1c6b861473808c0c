"""Fewer kernels per decode step (issue 14, part 2): each step fusion before/after, on the GPU, in one call.

SmolLM2-135M shapes, bf16, random weights. Sections, each with its own table:

1. ``ops``: each fused kernel against the unfused launches it replaces, at decode batches 1 and
   128. GPU time of CUDA-graph replays; every call cycles through 30 layers' distinct weights
   (211 MB of layer matrices against a 50-60 MB L2) so weights come from DRAM as in a real step,
   and the time is per layer. Fused kernels are timed at their default tiles and a few others;
   ``rel err`` is the fused output against the unfused one (bf16).
2. ``add_rms_norm``: ours against Liger-Kernel's fused add + RMSNorm (if the liger-kernel wheel
   imports) and torch.compile, at 65,536 tokens, interleaved rounds of graph replays
   (bench/kernels_bench.norm_ab), plus the same at 128 rows (a decode batch, L2-resident).
3. ``step``: the whole model's decode step (graph replay) at batch 1 and 128, with each fusion
   alone and together, kernel launches per step (torch.profiler on one eager step), and the
   logits against the unfused step (top-1 agreement, max |difference|). Plus fp32 greedy tokens
   of the Triton backend with every fusion on against the torch backend (must be identical).
4. ``attention``: decode attention at batch 128 over 1,024-token contexts, rotating four K/V
   sets so graph replays read DRAM, as % of a measured device-to-device copy.
5. ``engine``: the engine (CUDA graphs, overlap) decoding at batch 1 and 128, fusions off
   against on.

    PYTHONPATH=common/src:model_format/src:engine/src:services/worker/src \\
        python3 bench/kernels/gpu_step_fusion_bench.py [--out DIR]

``--sections ops,step`` runs a subset. ``--smoke`` runs every section's code path on the CPU
(Triton interpreter, tiny shapes, one timed call each): a check that the script works, not a
measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [
    str(ROOT / "model_format" / "src"),
    str(ROOT / "engine" / "src"),
    str(ROOT / "common" / "src"),
    str(ROOT),
]
if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.report import markdown_table, write_results  # noqa: E402
from radixfair_engine.kernels.accuracy import relative_error  # noqa: E402
from radixfair_engine.kernels.interpreter_compat import index_scalars_with_item  # noqa: E402
from radixfair_engine.kernels.norm_matmul import norm_gate_up_silu, norm_matmul  # noqa: E402
from radixfair_engine.kernels.norm_qkv_rope import norm_qkv_rope_write_kv  # noqa: E402
from radixfair_engine.kernels.rms_norm import add_rms_norm, rms_norm  # noqa: E402
from radixfair_engine.kernels.rope import rope_and_write_kv  # noqa: E402
from radixfair_engine.kernels.swiglu import silu_and_mul  # noqa: E402
from radixfair_engine.model.backend import ForwardBatch  # noqa: E402
from radixfair_engine.model.llama import KVCache, LlamaModel, rope_table  # noqa: E402
from radixfair_engine.model.step_fusion import StepFusionConfig  # noqa: E402
from radixfair_engine.model.torch_backend import TorchBackend  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402
from radixfair_model_format.model_config import ModelConfig  # noqa: E402

EPS = 1e-5
DTYPE = torch.bfloat16
BF16 = 2
PAGE = 16

FUSION_SETS: dict[str, StepFusionConfig] = {
    "unfused": StepFusionConfig(),
    "+qkv": StepFusionConfig(norm_into_qkv=True),
    "+gate_up": StepFusionConfig(norm_into_gate_up=True),
    "+lm_head": StepFusionConfig(norm_into_lm_head=True),
    "+small_matmul": StepFusionConfig(triton_small_matmul=True),
    "qkv+gate_up+lm_head": StepFusionConfig(
        norm_into_qkv=True, norm_into_gate_up=True, norm_into_lm_head=True
    ),
    "all": StepFusionConfig.all_on(),
}


SECTIONS = ("ops", "add_rms_norm", "step", "fp32_greedy", "attention", "engine")


@dataclasses.dataclass(frozen=True)
class Setup:
    """Shapes and timing for one run: the H200 measurement or the CPU smoke check."""

    model: ModelConfig
    device: torch.device
    layers: int  # distinct weight sets the per-op timings cycle through
    batches: tuple[int, ...]
    context: int
    smoke: bool

    def time_ms(self, fn: Callable[[], object]) -> float:
        """Median CUDA-graph replay time on the GPU; one wall-clock call in the smoke run."""
        if self.smoke:
            start = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - start)
        import triton.testing

        fn()
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


def smollm2() -> ModelConfig:
    from bench.kernels.model_greedy import SMOLLM2_135M

    return SMOLLM2_135M


def tiny() -> ModelConfig:
    return dataclasses.replace(
        smollm2(),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=512,
    )


# ---------------------------------------------------------------- 1. per-op before/after


def layer_weights(cfg: ModelConfig, layers: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    hidden, inter, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(rows, cols, device=device) * 0.02).to(DTYPE)

    return [
        {
            "norm": (1 + 0.1 * torch.randn(hidden, device=device)).to(DTYPE),
            "qkv": matrix(qkv_rows, hidden),
            "o": matrix(hidden, cfg.num_attention_heads * d),
            "gate_up": matrix(2 * inter, hidden),
            "down": matrix(hidden, inter),
        }
        for _ in range(layers)
    ]


def op_cases(setup: Setup, m: int) -> list[dict[str, object]]:
    """For each fused op: (name, launches replaced, unfused fn, {variant: fused fn}, output picker)."""
    cfg, device, layers = setup.model, setup.device, setup.layers
    weights = layer_weights(cfg, layers, device)
    hidden, d, kv_heads = cfg.hidden_size, cfg.head_dim, cfg.num_key_value_heads
    x = torch.randn(m, hidden, device=device).to(DTYPE)
    residual = torch.randn(m, hidden, device=device).to(DTYPE)
    attn_out = torch.randn(m, cfg.num_attention_heads * d, device=device).to(DTYPE)
    act = torch.randn(m, cfg.intermediate_size, device=device).to(DTYPE)
    positions = torch.randint(0, 1000, (m,), device=device)
    cos_sin = rope_table(cfg).to(device)
    pages = -(-m // PAGE) + 1
    caches = [
        (
            torch.zeros(pages, PAGE, kv_heads, d, dtype=DTYPE, device=device),
            torch.zeros(pages, PAGE, kv_heads, d, dtype=DTYPE, device=device),
        )
        for _ in range(layers)
    ]
    slots = torch.randperm(pages * PAGE, device=device)[:m]
    q_rows = cfg.num_attention_heads * d

    def qkv_unfused() -> torch.Tensor:
        for w, (kc, vc) in zip(weights, caches):
            normed, _ = add_rms_norm(x, residual, w["norm"], EPS)
            q, k, v = F.linear(normed, w["qkv"]).split([q_rows, kv_heads * d, kv_heads * d], dim=-1)
            q = rope_and_write_kv(
                q.view(m, -1, d), k.view(m, -1, d), v.view(m, -1, d), positions, cos_sin, kc, vc, slots
            )
        return q

    def qkv_fused(**tiles: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            for w, (kc, vc) in zip(weights, caches):
                q, _ = norm_qkv_rope_write_kv(
                    x, residual, w["norm"], EPS, w["qkv"], positions, cos_sin, kc, vc, slots, **tiles
                )
            return q

        return run

    def gate_up_unfused() -> torch.Tensor:
        for w in weights:
            normed, _ = add_rms_norm(x, residual, w["norm"], EPS)
            out = silu_and_mul(F.linear(normed, w["gate_up"]))
        return out

    def gate_up_fused(**tiles: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            for w in weights:
                out, _ = norm_gate_up_silu(x, residual, w["norm"], EPS, w["gate_up"], **tiles)
            return out

        return run

    def cublas(name: str, a: torch.Tensor) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            for w in weights:
                out = F.linear(a, w[name])
            return out

        return run

    def small_matmul(name: str, a: torch.Tensor, **tiles: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            for w in weights:
                out, _ = norm_matmul(a, None, None, 0.0, w[name], **tiles)
            return out

        return run

    # Variants: (block_m | block_n, block_k, warps, stages) around the defaults; GPU only.
    return [
        {
            "op": "norm + QKV + RoPE + K/V write",
            "replaces": "add_rms_norm, cuBLAS, rope_and_write_kv",
            "unfused": qkv_unfused,
            "fused": {
                "default": qkv_fused(),
                **(
                    {}
                    if setup.smoke
                    else {
                        "block_k=64": qkv_fused(block_k=64),
                        "block_k=128": qkv_fused(block_k=128),
                        "part=16": qkv_fused(part=16),
                        "part=32": qkv_fused(part=32),
                    }
                ),
            },
        },
        {
            "op": "norm + gate/up + SwiGLU",
            "replaces": "add_rms_norm, cuBLAS, silu_and_mul",
            "unfused": gate_up_unfused,
            "fused": {
                "default": gate_up_fused(),
                **(
                    {}
                    if setup.smoke
                    else {
                        "block_k=64": gate_up_fused(block_k=64),
                        "block_k=128": gate_up_fused(block_k=128),
                        "block_n=16": gate_up_fused(block_n=16),
                        "block_n=32": gate_up_fused(block_n=32),
                    }
                ),
            },
        },
        *(
            {
                "op": f"{name}_proj (no fusion: cuBLAS vs Triton small-M)",
                "replaces": "cuBLAS",
                "unfused": cublas(name, a),
                "fused": {
                    "default": small_matmul(name, a),
                    **(
                        {}
                        if setup.smoke
                        else {
                            "block_k=64": small_matmul(name, a, block_k=64),
                        }
                    ),
                },
            }
            for name, a in (("o", attn_out), ("down", act))
        ),
    ]


def lm_head_case(setup: Setup, m: int) -> dict[str, object]:
    cfg, device = setup.model, setup.device
    copies = 1 if setup.smoke else 2  # 2 x 57 MB: more than the L2, as a step reads it once
    heads = [
        (torch.randn(cfg.vocab_size, cfg.hidden_size, device=device) * 0.5).to(DTYPE) for _ in range(copies)
    ]
    norm = torch.ones(cfg.hidden_size, device=device, dtype=DTYPE)
    hidden = torch.randn(m, cfg.hidden_size, device=device).to(DTYPE)
    residual = torch.randn(m, cfg.hidden_size, device=device).to(DTYPE)
    rows = torch.arange(m, device=device)

    def unfused() -> torch.Tensor:
        for head in heads:
            logits = F.linear(rms_norm((hidden + residual)[rows], norm, EPS), head).float()
        return logits

    def fused(**tiles: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            for head in heads:
                logits, _ = norm_matmul(
                    hidden, residual, norm, EPS, head, row_indices=rows, out_dtype=torch.float32, **tiles
                )
            return logits

        return run

    variants = {"default": fused()}
    if not setup.smoke:
        variants["block_n=64"] = fused(block_n=64)
        variants["block_k=128"] = fused(block_k=128)
        if m > 64:
            variants["block_m=128"] = fused(block_m=128)
    return {
        "op": "final add + gather + norm + LM head + fp32",
        "replaces": "add, index, rms_norm, cuBLAS, cast",
        "unfused": unfused,
        "fused": variants,
        "repeat": copies,
    }


def run_ops(setup: Setup) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for m in setup.batches:
        for case in [*op_cases(setup, m), lm_head_case(setup, m)]:
            per = case.get("repeat", setup.layers)
            reference = case["unfused"]().detach().clone()  # type: ignore[operator]
            before = setup.time_ms(case["unfused"]) * 1e3 / per  # type: ignore[arg-type]
            for variant, fn in case["fused"].items():  # type: ignore[attr-defined]
                try:
                    out = fn()
                    after = setup.time_ms(fn) * 1e3 / per
                except Exception as error:  # a tile choice that does not compile: report, go on
                    rows.append({"batch": m, "op": case["op"], "variant": variant, "note": repr(error)[:160]})
                    continue
                rows.append(
                    {
                        "batch": m,
                        "op": case["op"],
                        "replaces": case["replaces"],
                        "variant": variant,
                        "unfused us": before,
                        "fused us": after,
                        "saved us": before - after,
                        "rel err": relative_error(out, reference),
                    }
                )
                print(
                    f"  B={m:<4d} {case['op']:48s} {variant:22s} {before:8.2f} -> {after:8.2f} us", flush=True
                )
    return rows


# ---------------------------------------------------------------- 2. add_rms_norm vs Liger


def run_norm(setup: Setup, copy_tbs: float) -> list[dict[str, object]]:
    if setup.smoke:
        x = torch.randn(4, 64, dtype=DTYPE)
        ms = setup.time_ms(lambda: add_rms_norm(x, x.clone(), torch.ones(64, dtype=DTYPE), EPS))
        return [{"tokens": 4, "impl": "ours (smoke: interpreter, one call)", "best us": 1e3 * ms}]
    from bench.kernels.kernels_bench import norm_ab

    rows = []
    for tokens in (65536,):
        for row in norm_ab(copy_tbs, tokens=tokens, rounds=2):
            rows.append({"tokens": tokens, **row})
    return rows


# ---------------------------------------------------------------- 3. whole decode step


def random_model(setup: Setup, dtype: torch.dtype) -> LlamaModel:
    torch.manual_seed(0)
    model = LlamaModel(setup.model, TritonBackend()).to(device=setup.device, dtype=dtype).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.02)
        model.embed_tokens.weight.normal_(0.0, 0.5)  # peaked logits (as gpu_engine_bench)
    model.cos_sin = rope_table(setup.model).to(setup.device)
    return model


def kernels_per_step(setup: Setup, forward: Callable[[], torch.Tensor]) -> int | None:
    if setup.smoke:
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def run_step(setup: Setup) -> list[dict[str, object]]:
    from bench.kernels.model_greedy import _batch

    model = random_model(setup, DTYPE)
    rows = []
    for batch in setup.batches:
        pages_per_seq = -(-(setup.context + 8) // PAGE)
        cache = KVCache(setup.model, batch * pages_per_seq, PAGE, DTYPE, setup.device)
        prompts = [torch.randint(0, setup.model.vocab_size, (setup.context,)).tolist() for _ in range(batch)]
        model.backend = TritonBackend(fusions=FUSION_SETS["unfused"])
        model(_batch(prompts, [0] * batch, pages_per_seq, setup.device), cache)
        step = _batch([[7] for _ in range(batch)], [setup.context] * batch, pages_per_seq, setup.device)
        reference = None
        for name, fusions in FUSION_SETS.items():
            model.backend = TritonBackend(fusions=fusions)

            def forward(step: ForwardBatch = step, cache: KVCache = cache) -> torch.Tensor:
                return model(step, cache)

            logits = forward().float()
            reference = logits if reference is None else reference
            ms = setup.time_ms(forward)
            rows.append(
                {
                    "batch": batch,
                    "fusions": name,
                    "graph step ms": ms,
                    "tok/s (graph only)": batch / ms * 1e3,
                    "kernels per step": kernels_per_step(setup, forward),
                    "top-1 = unfused": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
                    "max |dlogit|": (logits - reference).abs().max().item(),
                }
            )
            print(
                f"  step B={batch:<4d} {name:22s} {ms:.3f} ms  kernels {rows[-1]['kernels per step']}",
                flush=True,
            )
    return rows


def fp32_greedy_check(setup: Setup) -> dict[str, object]:
    """The Triton backend with every fusion on against the torch backend, fp32, own greedy tokens."""
    from bench.kernels.model_greedy import _run

    model = random_model(setup, torch.float32)
    generator = torch.Generator().manual_seed(5)
    prompts = [
        torch.randint(0, setup.model.vocab_size, (n,), generator=generator).tolist() for n in (5, 17, 40, 64)
    ]
    steps = 4 if setup.smoke else 24
    expected, _ = _run(model, TorchBackend(), prompts, steps, torch.float32)
    got, _ = _run(model, TritonBackend(fusions=StepFusionConfig.all_on()), prompts, steps, torch.float32)
    same = sum(a == b for a, b in zip(map(list, zip(*expected)), map(list, zip(*got))))
    return {"prompts": len(prompts), "steps": steps, "identical sequences": same}


# ---------------------------------------------------------------- 4. decode attention bandwidth


def run_attention(setup: Setup, copy_tbs: float) -> list[dict[str, object]]:
    if setup.smoke:
        return [{"note": "needs the GPU (bench/kernels_bench.decode_case)"}]
    from bench.kernels.kernels_bench import decode_case, run_case

    case = decode_case(batch=128, context=1024, rotate=4)
    case.impls = {name: fn for name, fn in case.impls.items() if name.startswith("ours")}
    return run_case(case, copy_tbs)


def copy_bandwidth(setup: Setup) -> float | None:
    if setup.smoke:
        return None
    from bench.kernels.kernels_bench import copy_bandwidth as measured

    return measured()


# ---------------------------------------------------------------- 5. engine


def run_engine(setup: Setup, new_tokens: int) -> list[dict[str, object]]:
    from bench.engine.gpu_engine_bench import (
        engine_throughput,
        greedy_outputs,
        make_engine,
        make_random_model,
        prompts,
    )

    overrides = None
    if setup.smoke:
        overrides = {
            "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 32,
        }  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_random_model(Path(tmp) / "model", overrides)
        # Unfused again at the end: run 1 saw the first engine of the process much slower at batch 128
        # (61k tok/s against 84k for the next), so the repeat shows how much is order, not kernels.
        for name in ("unfused", "qkv+gate_up+lm_head", "all", "unfused"):
            backend = TritonBackend(num_sms=1 if setup.smoke else None, fusions=FUSION_SETS[name])
            # One engine (and one set of captured graphs) per fusion set, serving each batch in turn.
            engine = make_engine(
                model_dir, "triton", "bfloat16", 0 if setup.smoke else 128,
                max_running=max(setup.batches), device=setup.device.type, kernel_backend=backend,
            )  # fmt: skip
            for batch in setup.batches:
                if setup.smoke:
                    start = time.perf_counter()
                    greedy_outputs(engine, prompts(batch, 8, seed=batch), 2)
                    result = {"tok_per_s": 2 * batch / (time.perf_counter() - start), "ms_per_step": None}
                else:
                    result = engine_throughput(engine, batch, 128, new_tokens)
                rows.append({"fusions": name, "batch": batch, **result})
                print(f"  engine {name:22s} B={batch:<4d} {result['tok_per_s']:.0f} tok/s", flush=True)
            del engine
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also copy results here (device $OUT)")
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: plumbing only")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--context", type=int, default=192, help="cached tokens per sequence in the step")
    parser.add_argument("--new-tokens", type=int, default=64, help="engine section: tokens per request")
    args = parser.parse_args()
    if args.smoke:
        index_scalars_with_item()
        setup = Setup(tiny(), torch.device("cpu"), 2, (1, 3), 20, True)
    else:
        setup = Setup(smollm2(), torch.device("cuda"), 30, (1, 128), args.context, False)
    started = time.perf_counter()
    name = "gpu_step_fusion_smoke" if args.smoke else "gpu_step_fusion"
    wanted = set(args.sections.split(","))
    if not wanted <= set(SECTIONS):
        parser.error(f"unknown sections {sorted(wanted - set(SECTIONS))}; choose from {SECTIONS}")
    sections: dict[str, object] = {}
    with torch.inference_mode():
        copy_tbs = copy_bandwidth(setup)
        print(f"copy bandwidth: {copy_tbs} TB/s", flush=True)
        runs: dict[str, Callable[[], object]] = {
            "ops": lambda: run_ops(setup),
            "add_rms_norm": lambda: run_norm(setup, copy_tbs or 1.0),
            "step": lambda: run_step(setup),
            "fp32_greedy": lambda: fp32_greedy_check(setup),
            "attention": lambda: run_attention(setup, copy_tbs or 1.0),
        }
        for section, run in runs.items():
            if section in wanted:
                print(f"== {section} ({time.perf_counter() - started:.0f} s)", flush=True)
                sections[section] = run()
                # Written after every section: a run cut short by the device's time limit keeps the rest.
                write_report(name, sections, copy_tbs, setup, time.perf_counter() - started, args.out)
    if "engine" in wanted:
        print(f"== engine ({time.perf_counter() - started:.0f} s)", flush=True)
        # Outside inference_mode, as the worker runs the engine.
        sections["engine"] = run_engine(setup, args.new_tokens)
        write_report(name, sections, copy_tbs, setup, time.perf_counter() - started, args.out)


def best_fused(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per (batch, op): the unfused time, the default fused time and the best variant."""
    best: dict[tuple[object, object], dict[str, object]] = {}
    for row in rows:
        if "fused us" not in row:
            continue
        key = (row["batch"], row["op"])
        entry = best.setdefault(
            key, {"batch": row["batch"], "op": row["op"], "unfused us": row["unfused us"]}
        )
        if row["variant"] == "default":
            entry["default us"] = row["fused us"]
        if "best us" not in entry or float(row["fused us"]) < float(entry["best us"]):  # type: ignore[arg-type]
            entry["best us"], entry["best variant"] = row["fused us"], row["variant"]
    return list(best.values())


def section_notes(sections: dict[str, object]) -> list[str]:
    """Markdown for each section that ran."""
    tables: list[tuple[str, str, list[str]]] = [
        (
            "ops",
            "## 1. Each fusion against the launches it replaces (µs per layer, GPU time of graph"
            " replays, 30 layers' weights cycled so they come from DRAM)",
            ["batch", "op", "replaces", "variant", "unfused us", "fused us", "saved us", "rel err", "note"],
        ),
        (
            "add_rms_norm",
            "## 2. add_rms_norm against Liger-Kernel and torch.compile (graph replays, interleaved"
            " rounds; no liger row means the liger-kernel wheel did not import)",
            ["tokens", "impl", "graph_us per round", "best us", "% copy"],
        ),
        (
            "step",
            "## 3. Decode step (whole model, graph replay), each fusion alone and together",
            ["batch", "fusions", "graph step ms", "tok/s (graph only)", "kernels per step", "top-1 = unfused",
             "max |dlogit|"],
        ),
        (
            "attention",
            "## 4. Decode attention, batch 128 x 1,024-token contexts (K/V rotated through 4 sets)",
            ["impl", "us", "graph_us", "% copy", "graph % copy", "note"],
        ),
        (
            "engine",
            "## 5. Engine decode (CUDA graphs, overlap on), 128-token prompts",
            ["fusions", "batch", "tok_per_s", "ms_per_step"],
        ),
    ]  # fmt: skip
    notes: list[str] = []
    for key, title, columns in tables:
        if key not in sections:
            continue
        notes += ["", title, ""]
        if key == "ops":
            best_columns = ["batch", "op", "unfused us", "default us", "best us", "best variant"]
            notes += [markdown_table(best_fused(sections["ops"]), best_columns), "", "All variants:", ""]  # type: ignore[arg-type]
        notes.append(markdown_table(sections[key], columns))  # type: ignore[arg-type]
        if key == "step" and "fp32_greedy" in sections:
            notes += [
                "",
                f"fp32 greedy, Triton with every fusion vs torch backend: {sections['fp32_greedy']}",
            ]
    return notes


def write_report(
    name: str,
    sections: dict[str, object],
    copy_tbs: float | None,
    setup: Setup,
    seconds: float,
    out: Path | None,
) -> None:
    notes = [
        f"Copy bandwidth {copy_tbs} TB/s; whole run {seconds:.0f} s;"
        f" decode step context {setup.context} tokens.",
        *section_notes(sections),
    ]
    for results_dir in (None, out) if out is not None else (None,):
        path = write_results(
            name,
            sections.get("step", []),  # type: ignore[arg-type]
            ["batch", "fusions", "graph step ms", "kernels per step"],
            {"sections": sections, "copy_tbs": copy_tbs, "seconds": seconds},
            notes="\n".join(notes),
            results_dir=results_dir,
        )
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
