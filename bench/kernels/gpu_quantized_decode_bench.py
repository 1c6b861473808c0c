"""Decode speed of int8 and fp8 checkpoints on the worker's engine against the bf16 one (issue #15).

Random weights of the SmolLM2-135M shape (bench/smollm2_shape.py; layer matrices N(0, 0.02), the
tied embedding at std 0.5 as in bench/engine/gpu_engine_bench.py) are written as a bf16 checkpoint,
then as int8 and fp8 checkpoints in the format the distiller writes
(radixfair_model_format.quantized_checkpoint: every projection per output channel, the embedding
int8). Each is served by the worker's own engine (engine_builder.build_engine: Triton backend, bf16,
CUDA-graph decode, overlap scheduling), and decodes ``--new-tokens`` tokens after
``--prompt-len``-token prompts at batch 1 and 128; a row is the median of ``--repeats`` runs.

Rows (``path``):
- ``bf16``: the unquantized checkpoint (cuBLAS projections);
- ``triton``: a quantized checkpoint, products of up to ``EngineConfig.quantized_triton_max_rows``
  (128) rows through the weight-only kernel (kernels/int8_matmul.py), as the worker runs it now;
- ``dequantize``: the same checkpoint with ``quantized_triton_max_rows=0``, QuantizedLinear's
  convert-the-whole-weight-per-call path (the worker before the kernel was wired).
``agree_vs_dequant``: share of greedy tokens (8 prompts x 32 tokens on CUDA) where the triton row's engine
picks the same token as the dequantize row's, the same checkpoint: a check of the kernel in place.

On CUDA a second table times one product per SmolLM2 projection and row count (1 to 512; medians
of CUDA-graph replays): bf16 cuBLAS, the int8 and fp8 kernels, and the dequantizing path, to place
the row limit (model/quantized_linear.QuantizedKernelConfig) on measurements.

The lead's device call (one; estimated 4-6 minutes, not yet run there; the engine rows are written
before the kernel table, so a cut run keeps them). The GPU image has torch, triton, numpy,
safetensors, and tokenizers, yaml and jinja2 (transformers' and torch's dependencies); it lacks
grpcio and opentelemetry, which the worker package imports, so the carried wheels go in first; the
tokenizer is SmolLM2's, carried too:

    run(carry=["bench/scratch/gpu_serving"], timeout_s=600, command="python3 -m pip install -q
      --no-index --no-deps --no-compile --target /tmp/site bench/scratch/gpu_serving/whl/*.whl &&
      PYTHONPATH=/tmp/site:common/src:model_format/src:engine/src:services/worker/src python3
      bench/kernels/gpu_quantized_decode_bench.py --tokenizer-dir bench/scratch/gpu_serving/tokenizer
      --out $OUT")

Here, end to end on the CPU in a tiny shape (the Triton kernels in the interpreter):

    .venv/bin/python bench/kernels/gpu_quantized_decode_bench.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The CPU run takes the Triton backend through Triton's interpreter, which must be chosen before
# triton is first imported (as tests/kernels/conftest.py does).
if "--quick" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from radixfair_engine.kernels.interpreter_compat import index_scalars_with_item

    index_scalars_with_item()

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import markdown_table, write_results  # noqa: E402
from bench.smollm2_shape import SMOLLM2_135M_HF_CONFIG  # noqa: E402
from radixfair.gc_tuning import tune_for_serving  # noqa: E402
from radixfair_engine.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_engine.engine import Engine  # noqa: E402
from radixfair_engine.engine_builder import build_engine  # noqa: E402
from radixfair_engine.request import FinishReason, Request, SamplingConfig  # noqa: E402
from radixfair_model_format.quantized_checkpoint import (  # noqa: E402
    CONFIG_KEY,
    config_section,
    quantize_weight,
    quantized_state,
)

EMBEDDING_STD = 0.5  # peaked next-token logits, so greedy agreement tests arithmetic, not near-ties
LAYER_STD = 0.02
TINY_SHAPE = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
}
ROW_COUNTS = (1, 16, 32, 64, 128, 256, 512)
_REQUEST_IDS = itertools.count()  # the engine keeps request ids apart; every run submits new ones


def random_state(config: dict) -> dict[str, torch.Tensor]:
    """SmolLM2-layout weights in Hugging Face names, bf16 (norms ones, embedding tied)."""
    generator = torch.Generator().manual_seed(0)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_out = config["num_attention_heads"] * config["head_dim"]
    kv_out = config["num_key_value_heads"] * config["head_dim"]
    shapes = {
        "self_attn.q_proj": (q_out, hidden),
        "self_attn.k_proj": (kv_out, hidden),
        "self_attn.v_proj": (kv_out, hidden),
        "self_attn.o_proj": (hidden, q_out),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }

    def normal(shape: tuple[int, int], std: float) -> torch.Tensor:
        return (torch.randn(shape, generator=generator) * std).to(torch.bfloat16)

    state = {"model.embed_tokens.weight": normal((config["vocab_size"], hidden), EMBEDDING_STD)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        for name, shape in shapes.items():
            state[f"{prefix}{name}.weight"] = normal(shape, LAYER_STD)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"{prefix}{norm}.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    state["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return state


def write_checkpoint(target: Path, state: dict[str, torch.Tensor], config: dict, tokenizer_dir: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(config))
    for path in tokenizer_dir.iterdir():
        if path.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(path, target / path.name)
    return target


def checkpoints(root: Path, config: dict, tokenizer_dir: Path) -> dict[str, Path]:
    state = random_state(config)
    dirs = {"bf16": write_checkpoint(root / "bf16", state, config, tokenizer_dir)}
    for scheme in ("int8", "fp8"):
        section = {**config, CONFIG_KEY: config_section(scheme)}
        dirs[scheme] = write_checkpoint(root / scheme, quantized_state(state, scheme), section, tokenizer_dir)
    return dirs


def make_engine(model_dir: Path, args: argparse.Namespace, max_rows: int) -> Engine:
    config = EngineConfig(
        num_pages=args.num_pages,
        page_size=16,
        max_running_requests=max(args.batches),
        max_batched_tokens=args.max_batched_tokens,
        device=args.device,
        dtype=args.dtype,
        backend="triton",
        cuda_graph_max_batch=max(args.batches),
        quantized_triton_max_rows=max_rows,
        scheduler=SchedulerConfig(policy="fcfs"),
    )
    engine = build_engine(config, model_dir).engine
    # The worker's engine process runs under these collector settings (engine_loop.run_engine_process).
    tune_for_serving()
    return engine


def prompt_ids(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab - 1, (length,), generator=generator).tolist() for _ in range(count)]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_run(engine: Engine, args: argparse.Namespace, batch: int, vocab: int) -> dict[str, float]:
    """One batch: prefill, then the decode phase timed (tokens/s of the decode steps only)."""
    requests = [
        Request(
            f"b{next(_REQUEST_IDS)}",
            f"c{i % 4}",
            p,
            SamplingConfig(max_tokens=args.new_tokens, ignore_eos=True),
        )
        for i, p in enumerate(prompt_ids(batch, args.prompt_len, vocab, seed=100 + batch))
    ]
    for request in requests:
        engine.submit(request)
    while any(r.tokens_to_compute > 1 and not r.is_finished for r in requests):
        engine.step()  # prefill (in chunks of max_batched_tokens) and the first token
    synchronize(args.device)
    already = sum(len(r.output_ids) for r in requests)
    steps = engine.steps
    start = time.perf_counter()
    while engine.has_work():
        engine.step()
    synchronize(args.device)
    elapsed = time.perf_counter() - start
    failed = [r.request_id for r in requests if r.finish_reason is not FinishReason.LENGTH]
    if failed:
        raise SystemExit(f"requests {failed} did not run to their length (see the engine's log)")
    decoded = sum(len(r.output_ids) for r in requests) - already
    return {"tok_s": decoded / elapsed, "ms_step": 1e3 * elapsed / max(1, engine.steps - steps)}


def greedy(engine: Engine, vocab: int, count: int, tokens: int) -> list[list[int]]:
    requests = [
        Request(f"g{next(_REQUEST_IDS)}", "g", p, SamplingConfig(max_tokens=tokens, ignore_eos=True))
        for p in prompt_ids(count, 24, vocab, seed=7)
    ]
    for request in requests:
        engine.submit(request)
    while engine.has_work():
        engine.step()
    if any(r.finish_reason is not FinishReason.LENGTH for r in requests):
        raise SystemExit("a greedy request did not run to its length (see the engine's log)")
    return [r.output_ids for r in requests]


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)]
    return sum(x == y for x, y in pairs) / len(pairs)


def engine_rows(dirs: dict[str, Path], args: argparse.Namespace, vocab: int) -> list[dict[str, object]]:
    variants = [("bf16", "bf16", 0), ("int8", "triton", 128), ("int8", "dequantize", 0)]
    variants += [("fp8", "triton", 128), ("fp8", "dequantize", 0)]
    rows: list[dict[str, object]] = []
    tokens: dict[tuple[str, str], list[list[int]]] = {}
    for checkpoint, path, max_rows in variants:
        built = time.perf_counter()
        engine = make_engine(dirs[checkpoint], args, max_rows)
        build_s = time.perf_counter() - built
        tokens[checkpoint, path] = greedy(engine, vocab, *args.greedy)
        decode_run(engine, args, 1, vocab)  # warm-up: allocator, first replays
        for batch in args.batches:
            runs = sorted(
                (decode_run(engine, args, batch, vocab) for _ in range(args.repeats)),
                key=lambda r: r["tok_s"],
            )
            median = runs[len(runs) // 2]
            row: dict[str, object] = {
                "checkpoint": checkpoint,
                "path": path,
                "batch": batch,
                "tok_s": median["tok_s"],
                "ms_step": median["ms_step"],
                "min_max_tok_s": f"{runs[0]['tok_s']:,.0f}-{runs[-1]['tok_s']:,.0f}",
                "weights_MB": (dirs[checkpoint] / "model.safetensors").stat().st_size / 1e6,
                "build_s": build_s,
            }
            rows.append(row)
            print(row, flush=True)
        del engine
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    for row in rows:
        bf16 = next(r for r in rows if r["checkpoint"] == "bf16" and r["batch"] == row["batch"])
        row["vs_bf16"] = float(row["tok_s"]) / float(bf16["tok_s"])
        if row["path"] == "triton":
            key = str(row["checkpoint"])
            row["agree_vs_dequant"] = agreement(tokens[key, "triton"], tokens[key, "dequantize"])
    return rows


def kernel_rows(config: dict) -> list[dict[str, object]]:
    """One product per projection and row count: bf16 cuBLAS, the kernels, the dequantizing path."""
    from radixfair_engine.model.quantized_linear import QuantizedLinear

    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_out = config["num_attention_heads"] * config["head_dim"]
    qkv_out = q_out + 2 * config["num_key_value_heads"] * config["head_dim"]
    shapes = [("qkv_proj", qkv_out, hidden), ("o_proj", hidden, q_out)]
    shapes += [("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)]

    rows: list[dict[str, object]] = []
    for name, n, k in shapes:
        torch.manual_seed(0)
        weight = torch.randn(n, k, device="cuda") * LAYER_STD
        layers = {}
        for scheme in ("int8", "fp8"):
            q, scale = quantize_weight(weight, scheme)
            layer = QuantizedLinear(k, n, scheme).cuda()
            layer.weight.copy_(q.view(layer.weight.dtype))
            layer.weight_scale.copy_(scale)
            layers[scheme] = layer.to(torch.bfloat16)
        for m in ROW_COUNTS:
            row = {"projection": name, "M": m, "N": n, "K": k}
            row.update(product_times(m, weight.to(torch.bfloat16), layers["int8"], layers["fp8"]))
            rows.append(row)
            print(row, flush=True)
    return rows


def product_times(m: int, w16: torch.Tensor, i8: torch.nn.Module, f8: torch.nn.Module) -> dict[str, float]:
    import triton.testing

    from radixfair_engine.kernels.int8_matmul import fp8_weight_matmul, int8_weight_matmul

    n, k = w16.shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    products = {
        "bf16_us": lambda: torch.nn.functional.linear(x, w16),
        "int8_kernel_us": lambda: int8_weight_matmul(x, i8.weight, i8.weight_scale, out=out),
        "int8_dequant_us": lambda: i8(x),
        "fp8_kernel_us": lambda: fp8_weight_matmul(x, f8.weight, f8.weight_scale, out=out),
        "fp8_dequant_us": lambda: f8(x),
    }
    return {
        column: 1e3 * triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median")
        for column, fn in products.items()
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CPU, tiny shape, Triton interpreter")
    parser.add_argument("--tokenizer-dir", type=Path, default=None, help="default: the packaged model's")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--prompt-len", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-kernels", action="store_true", help="skip the per-projection table")
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.quick
    args.device = "cuda" if cuda else "cpu"
    args.dtype = "bfloat16" if cuda else "float32"
    args.batches = args.batches or ([1, 128] if cuda else [1, 4])
    args.prompt_len = args.prompt_len or (128 if cuda else 8)
    args.new_tokens = args.new_tokens or (128 if cuda else 4)
    args.max_batched_tokens = 8192 if cuda else 64
    args.greedy = (8, 32) if cuda else (2, 3)  # prompts, tokens of the agreement check
    args.num_pages = 4096 if cuda else 64
    args.name = args.name or ("gpu_quantized_decode_h200" if cuda else "gpu_quantized_decode_cpu_quick")
    if args.tokenizer_dir is None:
        from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir

        args.tokenizer_dir = resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models"))
    return args


def main() -> None:
    args = parse_args()
    config = {**SMOLLM2_135M_HF_CONFIG, **(TINY_SHAPE if args.device == "cpu" else {})}
    root = Path(tempfile.mkdtemp(prefix="quantized-decode-"))
    try:
        dirs = checkpoints(root, config, args.tokenizer_dir)
        rows = engine_rows(dirs, args, config["vocab_size"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    columns = ["checkpoint", "path", "batch", "tok_s", "ms_step", "min_max_tok_s", "vs_bf16"]
    columns += ["agree_vs_dequant", "weights_MB", "build_s"]
    shape = "SmolLM2-135M" if args.device == "cuda" else f"tiny {TINY_SHAPE}"
    notes = (
        f"Random weights, {shape} shape; engine: Triton backend, {args.dtype}, device {args.device}, "
        f"CUDA-graph decode up to {max(args.batches)} rows (cuda), overlap scheduling (cuda); "
        f"{args.prompt_len}-token prompts, {args.new_tokens} new tokens, decode phase only; each row the "
        f"median of {args.repeats} runs (min_max_tok_s: slowest and fastest). path: bf16 = unquantized "
        "checkpoint; triton = quantized products of up to 128 rows through kernels/int8_matmul.py; "
        "dequantize = quantized_triton_max_rows 0 (the whole weight converted per call). vs_bf16: "
        "tokens/s over the bf16 row's at the same batch. agree_vs_dequant: greedy tokens "
        f"equal to the dequantize row's on the same checkpoint ({args.greedy[0]} prompts x {args.greedy[1]})."
    )
    if args.device == "cpu":
        notes += " CPU --quick: an end-to-end check of the bench and the wiring, not a speed measurement."
    # The engine rows are written first, so a run cut short during the kernel table keeps them.
    write_results(args.name, rows, columns, {"kernel_rows": []}, notes, results_dir=args.out)
    print(markdown_table(rows, columns), flush=True)
    if args.device == "cpu" or args.no_kernels:
        return
    kernels = kernel_rows(config)
    notes += "\n\nOne product per projection (us, medians of CUDA-graph replays, bf16 activations):\n\n"
    notes += markdown_table(kernels, list(kernels[0]))
    write_results(args.name, rows, columns, {"kernel_rows": kernels}, notes, results_dir=args.out)


if __name__ == "__main__":
    main()
