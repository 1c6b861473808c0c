"""Split decode attention in one launch against two (issue 14, part 2: fewer kernels per step).

One launch: the last split program of each (sequence, KV head) merges the partials, counted
in on an acq_rel arrival counter it resets (kernels/decode_attention.py). Two launches: the
split kernel, then ``_merge_splits_kernel``. The CPU interpreter runs programs one at a time,
so only here, with programs running at once, can a memory-ordering fault show.

1. check: one launch against two on many random shapes (batch, KV heads, group, head dim,
   lengths 0..4,096, splits 2..64, bf16 and fp32), three consecutive launches on one counter
   buffer each, and against fp64 for the smaller ones; then CUDA graphs of one launch replayed
   200 times each with fresh q and lengths copied into the captured buffers, every replay against
   two launches on the same inputs. Counters must be zero after every case. Any mismatch fails.
2. kernel: one layer's decode attention at SmolLM2-135M shapes (9 query heads, 3 KV heads,
   head dim 64, page 16), bf16, 1,024-token contexts, batch 1 and 128: median replay of a CUDA
   graph of one call on each of 8 layers' caches, over 8, for both paths and several splits
   (the engine's choice under its 2,048-token graph bound, the real length's choice, 1, ...).
3. step: a whole decode step (random SmolLM2-135M weights, bf16, Triton backend, one CUDA graph
   of the model's forward with the engine's 2,048-token bound), one launch against two, batch 1
   and 128 at 1,024-token contexts; and the largest logit difference between the two.
4. greedy: fp32 engine greedy tokens (CUDA graphs) with the one-launch backend against the torch
   backend, prompts decoded alone (8 splits) and 16 at once.

    PYTHONPATH=common/src:model_format/src:engine/src:services/worker/src \\
        python3 bench/kernels/gpu_decode_one_launch_bench.py --out $OUT [--sections check,kernel,step,greedy]
    .venv/bin/python bench/kernels/gpu_decode_one_launch_bench.py --smoke   # CPU interpreter, check only
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if "--smoke" in sys.argv and shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [
    str(ROOT / p) for p in ("model_format/src", "engine/src", "common/src", "services/worker/src")
]
sys.path.insert(0, str(ROOT))

from bench.report import markdown_table, write_results  # noqa: E402
from radixfair_engine.kernels.accuracy import TOLERANCE, relative_error  # noqa: E402
from radixfair_engine.kernels.decode_attention import (  # noqa: E402
    DEFAULT_BLOCK_N,
    choose_num_splits,
    new_split_counters,
    paged_decode_attention,
)
from radixfair_engine.kernels.interpreter_compat import index_scalars_with_item  # noqa: E402
from radixfair_engine.kernels.paged_fixtures import PagedContext, random_paged_context  # noqa: E402
from radixfair_engine.kernels.reference import paged_attention_reference  # noqa: E402
from radixfair_engine.model.backend import ForwardBatch  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, PAGE = 9, 3, 64, 16  # SmolLM2-135M
GRAPH_BOUND = 2048  # the engine's decode graphs' max_seq_len in the benches
CONTEXT = 1024
Row = dict[str, object]


# ---- 1. check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What a Triton compile is specialised on; cases under one config vary only at run time."""

    kv_heads: int
    group: int
    head_dim: int
    splits: int
    block_n: int
    dtype: torch.dtype


# A few compiles (each is seconds on a fresh machine), many runtime shapes under each.
CONFIGS = [
    Config(3, 3, 64, 8, 128, torch.bfloat16),  # SmolLM2-135M at batch 1 in the engine
    Config(3, 3, 64, 64, 128, torch.bfloat16),
    Config(3, 3, 64, 2, 128, torch.float32),
    Config(3, 3, 64, 16, 128, torch.float32),
    Config(1, 8, 128, 16, 64, torch.bfloat16),
    Config(8, 1, 128, 4, 128, torch.float32),
    Config(2, 4, 64, 32, 64, torch.float32),
    Config(4, 2, 64, 8, 128, torch.bfloat16),
]
SMOKE_CONFIGS = [Config(2, 3, 16, 4, 16, torch.float32), Config(1, 2, 16, 8, 16, torch.bfloat16)]


def _random_case(
    config: Config, rng: random.Random, device: str, smoke: bool
) -> tuple[dict[str, object], torch.Tensor, PagedContext]:
    batch = rng.randint(1, 3 if smoke else 24)
    longest = 40 if smoke else 4096
    # Mixed: padding rows, length 1, shorter than a split, and long ones.
    lens = [rng.choice([0, 1, rng.randint(2, 200), rng.randint(1, longest)]) for _ in range(batch)]
    spec: dict[str, object] = {
        **dataclasses.asdict(config),
        "dtype": str(config.dtype).removeprefix("torch."),
        "batch": batch,
        "max_len": max(lens),
    }
    ctx = random_paged_context(
        lens,
        [min(1, s) for s in lens],
        config.kv_heads,
        config.head_dim,
        4 if smoke else PAGE,
        config.dtype,
        device,
    )
    q = torch.randn(batch, config.kv_heads * config.group, config.head_dim, dtype=config.dtype, device=device)
    return spec, q, ctx


def _launch(
    q: torch.Tensor,
    ctx: PagedContext,
    splits: int,
    block_n: int,
    counters: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode attention into ``out`` (default: a fresh NaN-filled tensor, so unwritten rows show)."""
    return paged_decode_attention(
        q,
        ctx.k_cache,
        ctx.v_cache,
        ctx.page_table,
        ctx.seq_lens,
        q.shape[-1] ** -0.5,
        out=torch.full_like(q, float("nan")) if out is None else out,
        num_splits=splits,
        block_n=block_n,
        split_counters=counters,
    )


def _fp64(q: torch.Tensor, ctx: PagedContext) -> torch.Tensor:
    return paged_attention_reference(
        q.double(),
        ctx.k_cache.double(),
        ctx.v_cache.double(),
        list(range(q.shape[0] + 1)),
        ctx.seq_lens_host,
        ctx.page_table,
        q.shape[-1] ** -0.5,
    )


def check_random_shapes(cases_per_config: int, reference_every: int, device: str, smoke: bool) -> Row:
    rng = random.Random(0)
    torch.manual_seed(0)
    worst = {"float32": 0.0, "bfloat16": 0.0}
    worst_ref = {"float32": 0.0, "bfloat16": 0.0}
    mismatches: list[dict[str, object]] = []
    bitwise = launches = counters_left = 0
    configs = SMOKE_CONFIGS if smoke else CONFIGS
    cases = [config for config in configs for _ in range(cases_per_config)]
    for index, config in enumerate(cases):
        spec, q, ctx = _random_case(config, rng, device, smoke)
        splits, block_n, dtype = config.splits, config.block_n, config.dtype
        two = _launch(q, ctx, splits, block_n, None)
        counters = new_split_counters(q.shape[0], ctx.k_cache.shape[2], device)
        for _ in range(3):  # consecutive launches on one counter buffer
            one = _launch(q, ctx, splits, block_n, counters)
            error = relative_error(one, two)
            launches += 1
            bitwise += int(torch.equal(one, two))
            name = str(spec["dtype"])
            worst[name] = max(worst[name], error)
            if error > TOLERANCE[dtype] / 10:
                mismatches.append({**spec, "rel_err_vs_two": error})
        counters_left += int(counters.count_nonzero())
        if index % reference_every == 0:
            ref_error = relative_error(one, _fp64(q, ctx))
            worst_ref[str(spec["dtype"])] = max(worst_ref[str(spec["dtype"])], ref_error)
            if ref_error > TOLERANCE[dtype]:
                mismatches.append({**spec, "rel_err_vs_fp64": ref_error})
    return {
        "section": "check: random shapes",
        "cases": len(cases),
        "launches": launches,
        "bitwise_equal_share": bitwise / launches,
        "max_rel_err_vs_two_fp32": worst["float32"],
        "max_rel_err_vs_two_bf16": worst["bfloat16"],
        "max_rel_err_vs_fp64_fp32": worst_ref["float32"],
        "max_rel_err_vs_fp64_bf16": worst_ref["bfloat16"],
        "counters_left_nonzero": counters_left,
        "mismatches": len(mismatches),
        "first_mismatches": json.dumps(mismatches[:3]),
        "ok": not mismatches and counters_left == 0,
    }


def check_graph_replays(batch: int, splits: int, replays: int, max_len: int) -> Row:
    """One launch captured once, replayed with fresh q and lengths; each replay against two launches."""
    torch.manual_seed(batch * 100 + splits)
    ctx = random_paged_context(
        [max_len] * batch, [1] * batch, KV_HEADS, HEAD_DIM, PAGE, torch.bfloat16, "cuda"
    )
    q = torch.randn(batch, HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    counters = new_split_counters(batch, KV_HEADS, "cuda")
    out = torch.empty_like(q)

    def one_launch() -> None:
        _launch(q, ctx, splits, DEFAULT_BLOCK_N, counters, out)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        one_launch()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one_launch()
    worst, bad = 0.0, 0
    for _ in range(replays):
        q.copy_(torch.randn_like(q))
        # Lengths 0..max_len: many splits find no keys, and short ones finish (arrive) together.
        ctx.seq_lens.copy_(torch.randint(0, max_len + 1, (batch,), dtype=torch.int32, device="cuda"))
        graph.replay()
        two = _launch(q, ctx, splits, 128, None)
        error = relative_error(out, two)
        worst = max(worst, error)
        bad += int(error > TOLERANCE[torch.bfloat16] / 10)
    return {
        "section": "check: graph replays",
        "batch": batch,
        "splits": splits,
        "replays": replays,
        "max_rel_err_vs_two_bf16": worst,
        "mismatches": bad,
        "counters_left_nonzero": int(counters.count_nonzero()),
        "ok": bad == 0 and int(counters.count_nonzero()) == 0,
    }


def check_rows(device: str, smoke: bool) -> list[Row]:
    if smoke:
        return [check_random_shapes(cases_per_config=2, reference_every=1, device=device, smoke=True)]
    rows = [check_random_shapes(cases_per_config=30, reference_every=4, device=device, smoke=False)]
    for batch, splits, max_len in [(1, 8, 1024), (1, 64, 4096), (4, 16, 2048), (16, 4, 600), (32, 64, 200)]:
        rows.append(check_graph_replays(batch, splits, replays=200, max_len=max_len))
    for row in rows:
        print(row, flush=True)
    return rows


# ---- 2. kernel timing --------------------------------------------------------------------------


def _graph_us_per_call(calls: list[Callable[[], object]]) -> float:
    import triton.testing

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    ms = triton.testing.do_bench(graph.replay, warmup=50, rep=300, return_mode="median")
    return 1e3 * float(ms) / len(calls)


def copy_tbs() -> float:
    import triton.testing

    src = torch.empty(256 * 2**20, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 2 / (float(ms) * 1e-3) / 1e12


def kernel_rows(num_sms: int) -> list[Row]:
    copy = copy_tbs()
    rows: list[Row] = []
    layers = 8
    for batch, split_options in [(1, (None, "real", 1, 2)), (128, (None, 2, 4))]:
        lens = [CONTEXT] * batch
        ctxs = [
            random_paged_context(lens, [1] * batch, KV_HEADS, HEAD_DIM, PAGE, torch.bfloat16, "cuda")
            for _ in range(layers)
        ]
        qs = [torch.randn(batch, HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
        outs = [torch.empty_like(q) for q in qs]
        counters = new_split_counters(batch, KV_HEADS, "cuda")
        kv_bytes = 2 * batch * CONTEXT * KV_HEADS * HEAD_DIM * 2
        for option in split_options:
            if option is None:
                splits, label = (
                    choose_num_splits(batch, KV_HEADS, GRAPH_BOUND, num_sms),
                    "engine (2,048 bound)",
                )
            elif option == "real":
                splits, label = choose_num_splits(batch, KV_HEADS, CONTEXT, num_sms), "real length"
            else:
                splits, label = int(option), "fixed"
            timed: dict[str, float] = {}
            for path, held in (("two_launch", None), ("one_launch", counters)):
                calls = [
                    functools.partial(_launch, q, ctx, splits, DEFAULT_BLOCK_N, held, out)
                    for q, ctx, out in zip(qs, ctxs, outs)
                ]
                timed[path] = _graph_us_per_call(calls)
            row: Row = {
                "section": "kernel",
                "batch": batch,
                "context": CONTEXT,
                "splits": splits,
                "splits_from": label,
                "two_launch_us": timed["two_launch"],
                "one_launch_us": timed["one_launch"],
                "saved_us": timed["two_launch"] - timed["one_launch"],
                "one_launch_pct_of_copy_bw": 100 * kv_bytes / (timed["one_launch"] * 1e-6) / 1e12 / copy,
            }
            rows.append(row)
            print(row, flush=True)
    for row in rows:
        row["copy_tbs"] = copy
    return rows


# ---- 3. step -----------------------------------------------------------------------------------


def _decode_batch(batch: int, num_pages: int, vocab: int) -> ForwardBatch:
    """Decode rows at CONTEXT tokens on shuffled pages, with the engine's graph bound as max_seq_len."""
    pages_per_seq = GRAPH_BOUND // PAGE
    order = torch.randperm(num_pages)[: batch * pages_per_seq].view(batch, pages_per_seq)
    page_table = order.to(torch.int32).cuda()
    last = CONTEXT - 1
    slots = (order[:, last // PAGE] * PAGE + last % PAGE).cuda()
    return ForwardBatch(
        input_ids=torch.randint(100, vocab, (batch,), device="cuda"),
        positions=torch.full((batch,), last, dtype=torch.int64, device="cuda"),
        query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device="cuda"),
        seq_lens=torch.full((batch,), CONTEXT, dtype=torch.int32, device="cuda"),
        page_table=page_table,
        slot_mapping=slots,
        logits_indices=torch.arange(batch, device="cuda"),
        max_query_len=1,
        max_seq_len=GRAPH_BOUND,
        query_lens_host=[1] * batch,
        seq_lens_host=[GRAPH_BOUND] * batch,  # as the graph runner's captured batches
    )


def step_rows(model_dir: Path) -> list[Row]:
    import triton.testing

    from radixfair_engine.model.llama import KVCache
    from radixfair_engine.model.loader import load_model
    from radixfair_engine.model.triton_backend import TritonBackend

    rows: list[Row] = []
    models = {
        flag: load_model(model_dir, TritonBackend(one_launch_decode=flag), torch.bfloat16, "cuda")
        for flag in (False, True)
    }
    config = models[True].config
    for batch in (1, 128):
        num_pages = batch * GRAPH_BOUND // PAGE + 1
        kv = KVCache(config, num_pages, PAGE, torch.bfloat16, torch.device("cuda"))
        kv.k.normal_()
        kv.v.normal_()
        forward = _decode_batch(batch, num_pages, config.vocab_size)
        timed: dict[bool, float] = {}
        logits: dict[bool, torch.Tensor] = {}
        for flag, model in models.items():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    model(forward, kv)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = model(forward, kv)
            graph.replay()
            logits[flag] = out.float().clone()
            timed[flag] = 1e3 * float(
                triton.testing.do_bench(graph.replay, warmup=50, rep=300, return_mode="median")
            )
        row: Row = {
            "section": "step (model graph)",
            "batch": batch,
            "context": CONTEXT,
            "splits": choose_num_splits(
                batch, config.num_key_value_heads, GRAPH_BOUND, TritonBackend().num_sms
            ),
            "two_launch_us": timed[False],
            "one_launch_us": timed[True],
            "saved_us": timed[False] - timed[True],
            "max_logit_diff": float((logits[True] - logits[False]).abs().max()),
            "same_argmax": bool(torch.equal(logits[True].argmax(-1), logits[False].argmax(-1))),
        }
        rows.append(row)
        print(row, flush=True)
    return rows


# ---- 4. greedy ---------------------------------------------------------------------------------


def greedy_row(model_dir: Path) -> Row:
    from bench.engine.gpu_engine_bench import greedy_outputs, make_engine, prompts
    from radixfair_engine.model.triton_backend import TritonBackend

    alone = prompts(8, 60, seed=3)
    together = prompts(16, 90, seed=4)

    def run(backend: str, graphs: int, kernel_backend: object) -> list[list[int]]:
        engine = make_engine(
            model_dir,
            backend,
            "float32",
            graphs,
            max_running=16,
            kernel_backend=kernel_backend,  # type: ignore[arg-type]
        )
        out = []
        for prompt in alone:  # batch 1: the engine's heuristic splits 8 ways
            out += greedy_outputs(engine, [prompt], 32)
        return out + greedy_outputs(engine, together, 32)

    ours = run("triton", 16, TritonBackend(one_launch_decode=True))
    reference = run("torch", 0, None)
    same = sum(a == b for a, b in zip(ours, reference))
    return {
        "section": "greedy fp32",
        "prompts": len(ours),
        "identical_to_torch": same,
        "ok": same == len(ours),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter: a few tiny check cases only")
    parser.add_argument("--sections", default="check,kernel,step,greedy")
    parser.add_argument("--out", type=Path, default=None, help="also copy results here (device $OUT)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        index_scalars_with_item()
        args.sections = "check"
    sections = set(args.sections.split(","))
    num_sms = torch.cuda.get_device_properties().multi_processor_count if device == "cuda" else 1
    name = (
        "gpu_decode_one_launch_h200" if device == "cuda" and not args.smoke else "gpu_decode_one_launch_smoke"
    )
    results_dir = None if device == "cuda" and not args.smoke else ROOT / "bench" / "results" / "raw"
    rows: list[Row] = []
    failures: dict[str, str] = {}
    model_dir: Path | None = None

    def section(label: str, run: Callable[[], list[Row]]) -> None:
        # One failing section must not lose the others' numbers; the page is rewritten after each.
        if label not in sections:
            return
        try:
            rows.extend(run())
        except Exception as error:
            traceback.print_exc()
            failures[label] = repr(error)[:500]
        write(label)

    def write(last: str) -> None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        notes = (
            "check: one launch (last split program merges) against two (merge kernel); mismatch = relative "
            "error above a tenth of the dtype's tolerance against two launches, or above it against fp64; "
            "every case also checks the arrival counters are zero afterwards. kernel: us per layer, median "
            "replay of a CUDA graph of one call on each of 8 layers' caches; pct_of_copy_bw = K/V bytes over "
            "time against a device copy. step: us per replay of the model's decode forward as one CUDA graph "
            "(max_seq_len 2,048 as the engine's graphs), one-launch backend against two-launch. "
            f"Failed sections: {json.dumps(failures) if failures else 'none'} (last written after {last})."
        )
        path = write_results(name, rows, columns, {"failures": failures}, notes, results_dir=results_dir)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for suffix in (".md", ".json"):
                (args.out / f"{name}{suffix}").write_text(path.with_suffix(suffix).read_text())

    def model() -> Path:
        nonlocal model_dir
        if model_dir is None:
            from bench.engine.gpu_engine_bench import make_random_model

            model_dir = make_random_model(Path(tempfile.mkdtemp()) / "smollm2-135m-random")
        return model_dir

    section("check", lambda: check_rows(device, args.smoke))
    section("kernel", lambda: kernel_rows(num_sms))
    section("step", lambda: step_rows(model()))
    section("greedy", lambda: [greedy_row(model())])
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print(markdown_table(rows, columns))
    print("failures", failures or "none")


if __name__ == "__main__":
    main()
