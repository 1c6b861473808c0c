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
- ``triton``: a quantized checkpoint as the worker runs it now: products of up to
  ``EngineConfig.quantized_triton_max_rows`` (128) rows through kernels/int8_matmul.py, those of up
  to ``quantized_gemv_max_rows`` (4) rows in its GEMV form, the rest in its tile form with row tiles
  of up to ``quantized_tile_max_block_m`` (32) rows;
- ``triton_prev``: the same kernels as the worker ran them before (``quantized_gemv_max_rows=0``,
  ``quantized_tile_max_block_m=64``): at batch 1 the rows differ only by the GEMV form, at batch
  128 only by the row tiles;
- ``dequantize`` (``--with-dequantize``): ``quantized_triton_max_rows=0``, QuantizedLinear's
  convert-the-whole-weight-per-call path.
Every engine is built first and the runs are interleaved (one run of each engine per round), so a
slow phase of the host lands on every row alike: earlier calls ran each engine's repeats back to
back and the bf16 row at batch 128 read 72.7k and 43.8k tok/s in two calls.
``graph_ms``: device time of one decode step alone, the median over replays of the engine's own
captured CUDA graph for that batch (CUDA events; the inputs the last decode run staged, ~255-token
contexts). It is the number the weight bytes can move; ``ms_step`` adds the host's share.
``agree_vs_prev``: share of greedy tokens (8 prompts x 32 tokens on CUDA) where the triton row's engine
picks the same token as the triton_prev row's, the same checkpoint: a check of the new launches in
place. ``agree_vs_bf16``: the same against the bf16 engine (the 8-bit rounding, not a defect).

On CUDA a second table times one product per SmolLM2 projection and row count with the weights in
DRAM, as in a decode step: each timed CUDA graph runs the product over enough distinct copies of the
weight (>= 120 MB of 8-bit codes, over twice the H200's 50 MB L2) and the time is per product. Columns:
bf16 cuBLAS, and the int8 / fp8 kernel's tile and GEMV forms. (The earlier table timed replays of one
weight, which then sits in the L2: there the tile form beat cuBLAS by 0.2-0.9 us a product, a gain the
whole step did not show.) A third table (skip with ``--no-tile-sweep``) times the int8 tile form over
eight launch shapes at 32 and 128 rows the same way, to place ``quantized_tile_max_block_m`` and the
tile widths on DRAM-resident measurements.

The lead's device call (one; estimated 5-8 minutes, not yet run there; the engine rows are written
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
COLD_ROW_COUNTS = (1, 2, 4, 8, 16, 128)
SWEEP_ROW_COUNTS = (32, 128)
# (block_m, block_n, block_k, num_warps, num_stages).
SWEEP_TILES = [
    dict(zip(("block_m", "block_n", "block_k", "num_warps", "num_stages"), shape))
    for shape in [
        (64, 16, 128, 4, 4),  # the tiles before, N <= 1,024
        (64, 64, 128, 4, 4),  # the tiles before, gate/up
        (32, 16, 128, 4, 4),  # the default now, N <= 1,024
        (32, 32, 128, 4, 4),  # the default now, gate/up
        (16, 16, 128, 4, 4),
        (16, 32, 128, 4, 4),
        (32, 32, 64, 4, 3),
        (64, 32, 64, 4, 4),
    ]
]
COLD_CODE_BYTES = 120_000_000  # 8-bit weight bytes a timed graph cycles through: over 2x the H200's 50 MB L2
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


def make_engine(model_dir: Path, args: argparse.Namespace, kernels: tuple[int, int, int]) -> Engine:
    """``kernels``: quantized_triton_max_rows, quantized_gemv_max_rows, quantized_tile_max_block_m."""
    max_rows, gemv_rows, max_block_m = kernels
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
        quantized_gemv_max_rows=gemv_rows,
        quantized_tile_max_block_m=max_block_m,
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


def variants(args: argparse.Namespace) -> list[tuple[str, str, tuple[int, int, int]]]:
    """(checkpoint, path, make_engine's ``kernels``) of each engine."""
    default = EngineConfig()
    now = (default.quantized_triton_max_rows, default.quantized_gemv_max_rows)
    rows = [("bf16", "bf16", (0, 0, 64))]
    for scheme in ("int8", "fp8"):
        rows.append((scheme, "triton", (*now, default.quantized_tile_max_block_m)))
        rows.append((scheme, "triton_prev", (default.quantized_triton_max_rows, 0, 64)))
        if args.with_dequantize:
            rows.append((scheme, "dequantize", (0, 0, 64)))
    return rows


def graph_step_ms(engine: Engine, batch: int, replays: int = 200) -> float | None:
    """Median device time of one replay of the engine's captured decode graph for ``batch`` rows."""
    graphs = getattr(engine.runner, "decode_graphs", None)
    if graphs is None or batch not in graphs._graphs:
        return None
    graph = graphs._graphs[batch].graph
    for _ in range(10):
        graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def engine_rows(dirs: dict[str, Path], args: argparse.Namespace, vocab: int) -> list[dict[str, object]]:
    engines: dict[tuple[str, str], Engine] = {}
    build_s: dict[tuple[str, str], float] = {}
    tokens: dict[tuple[str, str], list[list[int]]] = {}
    for checkpoint, path, kernels in variants(args):
        built = time.perf_counter()
        engine = make_engine(dirs[checkpoint], args, kernels)
        build_s[checkpoint, path] = time.perf_counter() - built
        tokens[checkpoint, path] = greedy(engine, vocab, *args.greedy)
        decode_run(engine, args, 1, vocab)  # warm-up: allocator, first replays
        engines[checkpoint, path] = engine
    runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    graph_ms: dict[tuple[str, str, int], float | None] = {}
    # Rounds: one run of every engine at every batch, so the host's phases land on all alike.
    for _ in range(args.repeats):
        for (checkpoint, path), engine in engines.items():
            for batch in args.batches:
                run = decode_run(engine, args, batch, vocab)
                runs.setdefault((checkpoint, path, batch), []).append(run)
                if args.device.startswith("cuda") and (checkpoint, path, batch) not in graph_ms:
                    graph_ms[checkpoint, path, batch] = graph_step_ms(engine, batch)
                print(checkpoint, path, batch, run, flush=True)
    rows: list[dict[str, object]] = []
    for (checkpoint, path, batch), measured in runs.items():
        ordered = sorted(measured, key=lambda r: r["tok_s"])
        median = ordered[len(ordered) // 2]
        rows.append(
            {
                "checkpoint": checkpoint,
                "path": path,
                "batch": batch,
                "tok_s": median["tok_s"],
                "ms_step": median["ms_step"],
                "graph_ms": graph_ms.get((checkpoint, path, batch)),
                "min_max_tok_s": f"{ordered[0]['tok_s']:,.0f}-{ordered[-1]['tok_s']:,.0f}",
                "weights_MB": (dirs[checkpoint] / "model.safetensors").stat().st_size / 1e6,
                "build_s": build_s[checkpoint, path],
            }
        )
    for row in rows:
        bf16 = next(r for r in rows if r["checkpoint"] == "bf16" and r["batch"] == row["batch"])
        row["vs_bf16"] = float(row["tok_s"]) / float(bf16["tok_s"])
        if row["graph_ms"] is not None and bf16["graph_ms"] is not None:
            row["graph_vs_bf16"] = float(bf16["graph_ms"]) / float(row["graph_ms"])
        if row["checkpoint"] != "bf16":
            key = (str(row["checkpoint"]), str(row["path"]))
            row["agree_vs_bf16"] = agreement(tokens[key], tokens["bf16", "bf16"])
        if row["path"] == "triton":
            key = (str(row["checkpoint"]), "triton_prev")
            row["agree_vs_prev"] = agreement(tokens[key[0], "triton"], tokens[key])
    return rows


def projection_shapes(config: dict) -> list[tuple[str, int, int]]:
    """(name, N, K) of each of a layer's products in the model ``config`` describes."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_out = config["num_attention_heads"] * config["head_dim"]
    qkv_out = q_out + 2 * config["num_key_value_heads"] * config["head_dim"]
    return [("qkv_proj", qkv_out, hidden), ("o_proj", hidden, q_out),
            ("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)]  # fmt: skip


def kernel_rows(config: dict) -> list[dict[str, object]]:
    """One product per projection and row count, the weights in DRAM: bf16 cuBLAS, each kernel form."""
    rows: list[dict[str, object]] = []
    for name, n, k in projection_shapes(config):
        torch.manual_seed(0)
        # Distinct copies, so a graph that runs one product per copy reads each from DRAM.
        copies = max(30, -(-COLD_CODE_BYTES // (n * k)))
        weights = [torch.randn(n, k, device="cuda") * LAYER_STD for _ in range(copies)]
        w16 = [w.to(torch.bfloat16) for w in weights]
        codes = {scheme: [quantize_weight(w, scheme) for w in weights] for scheme in ("int8", "fp8")}
        codes["fp8"] = [(q.view(torch.uint8), s) for q, s in codes["fp8"]]
        del weights
        for m in COLD_ROW_COUNTS:
            row: dict[str, object] = {"projection": name, "M": m, "N": n, "K": k, "copies": copies}
            row.update(cold_product_times(m, w16, codes))
            rows.append(row)
            print(row, flush=True)
        del w16, codes
        torch.cuda.empty_cache()
    return rows


def cold_product_times(
    m: int, w16: list[torch.Tensor], codes: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]
) -> dict[str, float]:
    import triton.testing

    from radixfair_engine.kernels.int8_matmul import fp8_weight_matmul, int8_weight_matmul

    n, k = w16[0].shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    matmuls = {"int8": int8_weight_matmul, "fp8": fp8_weight_matmul}

    def quantized(scheme: str, gemv_rows: int):  # type: ignore[no-untyped-def]
        def run() -> None:
            for q, scale in codes[scheme]:
                matmuls[scheme](x, q, scale, out=out, gemv_max_rows=gemv_rows)

        return run

    def bf16() -> None:
        for w in w16:
            torch.mm(x, w.t(), out=out)

    products = {"bf16_us": bf16}
    for scheme in ("int8", "fp8"):
        products[f"{scheme}_tile_us"] = quantized(scheme, 0)
        products[f"{scheme}_gemv_us"] = quantized(scheme, m)
    times = {}
    for column, fn in products.items():
        fn()  # compiles outside the capture
        torch.cuda.synchronize()
        times[column] = 1e3 * triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median") / len(w16)
    return times


def tile_sweep_rows(config: dict) -> list[dict[str, object]]:
    """The int8 tile form at the batch-128 and batch-32 row counts over a few launch shapes, weights in
    DRAM: where it loses to cuBLAS (the earlier table's 1.2-1.6x at 128 rows), which tile would not."""
    rows: list[dict[str, object]] = []
    for name, n, k in projection_shapes(config):
        torch.manual_seed(0)
        copies = max(30, -(-COLD_CODE_BYTES // (n * k)))
        codes = [quantize_weight(torch.randn(n, k, device="cuda") * LAYER_STD, "int8") for _ in range(copies)]
        for m in SWEEP_ROW_COUNTS:
            for tile in SWEEP_TILES:
                us = cold_tile_us(codes, m, tile)
                if us is not None:
                    rows.append({"projection": name, "M": m, **tile, "int8_tile_us": us})
                    print(rows[-1], flush=True)
        del codes
        torch.cuda.empty_cache()
    return rows


def cold_tile_us(
    codes: list[tuple[torch.Tensor, torch.Tensor]], m: int, tile: dict[str, int]
) -> float | None:
    import triton.testing

    from radixfair_engine.kernels.int8_matmul import int8_weight_matmul

    n, k = codes[0][0].shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)

    def run() -> None:
        for q, scale in codes:
            int8_weight_matmul(x, q, scale, out=out, **tile)

    try:
        run()  # compiles outside the capture
        torch.cuda.synchronize()
        return 1e3 * triton.testing.do_bench_cudagraph(run, rep=30, return_mode="median") / len(codes)
    except Exception as error:  # noqa: BLE001 (a tile that does not fit in shared memory)
        print(f"M={m} {tile}: {error}", flush=True)
        return None


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
    parser.add_argument("--with-dequantize", action="store_true", help="add the dequantize-per-call rows")
    parser.add_argument("--no-tile-sweep", action="store_true", help="skip the int8 tile-shape sweep")
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
    columns += ["graph_ms", "graph_vs_bf16", "agree_vs_prev", "agree_vs_bf16", "weights_MB", "build_s"]
    shape = "SmolLM2-135M" if args.device == "cuda" else f"tiny {TINY_SHAPE}"
    notes = (
        f"Random weights, {shape} shape; engine: Triton backend, {args.dtype}, device {args.device}, "
        f"CUDA-graph decode up to {max(args.batches)} rows (cuda), overlap scheduling (cuda); "
        f"{args.prompt_len}-token prompts, {args.new_tokens} new tokens, decode phase only; each row the "
        f"median of {args.repeats} runs, the engines' runs interleaved round by round (min_max_tok_s: "
        "slowest and fastest). path: bf16 = unquantized checkpoint; triton = quantized products of up to "
        "128 rows through kernels/int8_matmul.py, up to 4 rows in its GEMV form, row tiles of up to 32 "
        "above; "
        "triton_prev = tile form at every row count, row tiles up to 64 (the worker before); "
        "dequantize = quantized_triton_max_rows 0. vs_bf16: tokens/s over the "
        "bf16 row's at the same batch. graph_ms: device time of one decode step (median replay of the "
        "engine's captured graph); graph_vs_bf16: bf16's graph_ms over this row's (above 1 = faster). "
        f"agree_vs_prev / agree_vs_bf16: greedy tokens equal to the triton_prev / bf16 engine's "
        f"({args.greedy[0]} prompts x {args.greedy[1]}; against bf16 a measure of the 8-bit rounding)."
    )
    if args.device == "cpu":
        notes += " CPU --quick: an end-to-end check of the bench and the wiring, not a speed measurement."
    # The engine rows are written first, so a run cut short during the kernel table keeps them.
    write_results(args.name, rows, columns, {"kernel_rows": []}, notes, results_dir=args.out)
    print(markdown_table(rows, columns), flush=True)
    if args.device == "cpu" or args.no_kernels:
        return
    kernels = kernel_rows(config)
    notes += (
        "\n\nOne product per projection with its weight in DRAM (us per product: the median CUDA-graph "
        "replay of one product over each of `copies` distinct weights, divided by copies; bf16 "
        "activations). tile / gemv: kernels/int8_matmul.py's two forms, each at every row count.\n\n"
    )
    notes += markdown_table(kernels, list(kernels[0]))
    write_results(args.name, rows, columns, {"kernel_rows": kernels}, notes, results_dir=args.out)
    if args.no_tile_sweep:
        return
    sweep = tile_sweep_rows(config)
    notes += (
        "\n\nThe int8 tile form over launch shapes at 32 and 128 rows, weights in DRAM (us per product; "
        "block_m 32 with block_n 16 (N <= 1,024) or 32 is the default now, 64 with 16 or 64 the one "
        "before):\n\n"
    )
    notes += markdown_table(sweep, list(sweep[0]))
    extra = {"kernel_rows": kernels, "tile_sweep_rows": sweep}
    write_results(args.name, rows, columns, extra, notes, results_dir=args.out)


if __name__ == "__main__":
    main()
