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

    python3 bench/kernels_bench.py [--out DIR] [--sweep]

``--sweep`` also times our kernels over their block-size options and prints
the best; the defaults in the kernel modules come from such a sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
import triton.testing

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "services" / "worker" / "src"), str(ROOT)]

from bench.report import environment, markdown_table  # noqa: E402
from radixfair_worker.kernels import decode_attention, extend_attention, rms_norm, rope, swiglu  # noqa: E402
from radixfair_worker.kernels import write_kv as write_kv_module  # noqa: E402
from radixfair_worker.kernels.accuracy import relative_error  # noqa: E402
from radixfair_worker.kernels.paged_fixtures import random_paged_context  # noqa: E402
from radixfair_worker.model.backend import ForwardBatch  # noqa: E402
from radixfair_worker.model.torch_backend import TorchBackend  # noqa: E402

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, PAGE = 576, 1536, 9, 3, 64, 16
EPS = 1e-5
DTYPE = torch.bfloat16
BF16 = 2
DEVICE = "cuda"
TORCH = TorchBackend()


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


def try_liger(name: str) -> object | None:
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


def norm_cases(tokens: int) -> list[Case]:
    weight = torch.randn(HIDDEN, dtype=DTYPE, device=DEVICE)
    x = torch.randn(tokens, HIDDEN, dtype=DTYPE, device=DEVICE)
    residual = torch.randn_like(x)
    size = f"T={tokens}"
    plain = Case("rms_norm", size, 2 * tokens * HIDDEN * BF16)
    plain.impls["ours"] = lambda: rms_norm.rms_norm(x, weight, EPS)
    plain.impls["torch eager"] = lambda: TORCH.rms_norm(x, weight, EPS)
    norm_compiled = compiled(TORCH.rms_norm)
    plain.impls["torch.compile"] = lambda: norm_compiled(x, weight, EPS)
    liger = try_liger("rms_norm")
    if liger is not None:
        plain.impls["liger"] = lambda: liger.apply(x, weight, EPS, 0.0, "llama", False)  # type: ignore[attr-defined]

    fused = Case("add_rms_norm", size, 4 * tokens * HIDDEN * BF16, output=lambda result: result[0])  # type: ignore[index]
    fused.impls["ours"] = lambda: rms_norm.add_rms_norm(x, residual, weight, EPS)
    fused.impls["torch eager"] = lambda: TORCH.add_rms_norm(x, residual, weight, EPS)
    add_compiled = compiled(TORCH.add_rms_norm)
    fused.impls["torch.compile"] = lambda: add_compiled(x, residual, weight, EPS)
    liger_add = try_liger("add_rms_norm")
    if liger_add is not None:
        fused.impls["liger"] = lambda: liger_add.apply(x, residual, weight, EPS, 0.0, "llama", False)  # type: ignore[attr-defined]
    return [plain, fused]


def rope_table(positions: int = 8192) -> torch.Tensor:
    inv_freq = 1.0 / 100000.0 ** (torch.arange(0, HEAD_DIM, 2, device=DEVICE).float() / HEAD_DIM)
    freqs = torch.outer(torch.arange(positions, device=DEVICE).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def qkv_views(tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=DTYPE, device=DEVICE)
    q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    return (
        q.view(tokens, HEADS, HEAD_DIM),
        k.view(tokens, KV_HEADS, HEAD_DIM),
        v.view(tokens, KV_HEADS, HEAD_DIM),
    )


def rope_cases(tokens: int) -> list[Case]:
    table = rope_table()
    positions = torch.randint(0, table.shape[0], (tokens,), device=DEVICE)
    return [rope_in_place_case(tokens, table, positions), rope_write_kv_case(tokens, table, positions)]


def rope_in_place_case(tokens: int, table: torch.Tensor, positions: torch.Tensor) -> Case:
    qk_bytes = tokens * (HEADS + KV_HEADS) * HEAD_DIM * BF16 * 2
    table_bytes = tokens * HEAD_DIM * 4
    case = Case(
        "rope (q, k in place)", f"T={tokens}", qk_bytes + table_bytes, output=lambda result: result[0]
    )  # type: ignore[index]
    q, k, _ = qkv_views(tokens)
    # Each implementation rotates its own copy: in-place kernels change their inputs.
    q_ours, k_ours = q.clone(), k.clone()
    case.impls["ours"] = lambda: rope.apply_rope(q_ours, k_ours, positions, table)
    case.impls["torch eager"] = lambda: TORCH.apply_rope(q, k, positions, table)
    rope_compiled = compiled(TORCH.apply_rope)
    case.impls["torch.compile"] = lambda: rope_compiled(q, k, positions, table)
    liger = try_liger("rope")
    if liger is not None:
        # Liger takes Hugging Face's layout: [1, H, T, D] views of [1, T, H, D] storage, and
        # per-token cos/sin [1, T, D] in the activations' dtype, gathered beforehand.
        q_hf = q.clone().unsqueeze(0).transpose(1, 2)
        k_hf = k.clone().unsqueeze(0).transpose(1, 2)
        half = table[positions]
        cos = torch.cat([half[:, : HEAD_DIM // 2]] * 2, dim=-1).to(DTYPE).unsqueeze(0)
        sin = torch.cat([half[:, HEAD_DIM // 2 :]] * 2, dim=-1).to(DTYPE).unsqueeze(0)

        def liger_rope() -> tuple[torch.Tensor, torch.Tensor]:
            q_out, k_out = liger.apply(q_hf, k_hf, cos, sin)  # type: ignore[attr-defined]
            return q_out.transpose(1, 2)[0], k_out.transpose(1, 2)[0]

        case.impls["liger"] = liger_rope
    return case


def rope_write_kv_case(tokens: int, table: torch.Tensor, positions: torch.Tensor) -> Case:
    kv_bytes = tokens * KV_HEADS * HEAD_DIM * BF16 * 4  # read k, v; write both to the cache
    total = tokens * HEADS * HEAD_DIM * BF16 * 2 + kv_bytes + tokens * HEAD_DIM * 4 + tokens * 16
    case = Case("rope + K/V page write", f"T={tokens}", total, output=lambda result: result)
    q, k, v = qkv_views(tokens)
    num_pages = tokens // PAGE + 1
    slots = torch.randperm(num_pages * PAGE, device=DEVICE)[:tokens]
    caches = {
        name: torch.randn(2, num_pages, PAGE, KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
        for name in "abc"
    }
    q_fused = q.clone()
    case.impls["ours"] = lambda: rope.rope_and_write_kv(
        q_fused, k, v, positions, table, caches["a"][0], caches["a"][1], slots
    )

    def eager_rope_kv(cache: torch.Tensor) -> torch.Tensor:
        q_rot, k_rot = TORCH.apply_rope(q, k, positions, table)
        TORCH.write_kv(k_rot, v, cache[0], cache[1], slots)
        return q_rot

    case.impls["torch eager"] = lambda: eager_rope_kv(caches["b"])
    eager_compiled = compiled(eager_rope_kv)
    case.impls["torch.compile"] = lambda: eager_compiled(caches["c"])
    q_two, k_two = q.clone(), k.clone()

    def ours_unfused() -> torch.Tensor:
        rope.apply_rope(q_two, k_two, positions, table)
        write_kv_module.write_kv(k_two, v, caches["a"][0], caches["a"][1], slots)
        return q_two

    case.impls["ours unfused (2 launches)"] = ours_unfused
    return case


def write_kv_case(tokens: int) -> Case:
    _, k, v = qkv_views(tokens)
    num_pages = tokens // PAGE + 1
    slots = torch.randperm(num_pages * PAGE, device=DEVICE)[:tokens]
    caches = [
        torch.randn(2, num_pages, PAGE, KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE) for _ in range(3)
    ]
    case = Case("write_kv", f"T={tokens}", tokens * KV_HEADS * HEAD_DIM * BF16 * 4 + tokens * 8)
    # Each implementation fills its own cache and returns it; the written K rows are compared.
    case.output = lambda cache: cache[0].view(-1, KV_HEADS, HEAD_DIM)[slots]  # type: ignore[index]
    write_compiled = compiled(TORCH.write_kv)
    for (name, write), cache in zip(
        [
            ("ours", write_kv_module.write_kv),
            ("torch eager", TORCH.write_kv),
            ("torch.compile", write_compiled),
        ],
        caches,
    ):
        case.impls[name] = lambda write=write, cache=cache: (write(k, v, cache[0], cache[1], slots), cache)[1]
    return case


def swiglu_case(tokens: int) -> Case:
    gate_up = torch.randn(tokens, 2 * INTER, dtype=DTYPE, device=DEVICE)
    case = Case("swiglu (fused gate_up)", f"T={tokens}", tokens * INTER * BF16 * 3)
    case.impls["ours"] = lambda: swiglu.silu_and_mul(gate_up)
    case.impls["torch eager"] = lambda: TORCH.silu_and_mul(gate_up)
    silu_compiled = compiled(TORCH.silu_and_mul)
    case.impls["torch.compile"] = lambda: silu_compiled(gate_up)
    liger = try_liger("swiglu")
    if liger is not None:
        case.impls["liger"] = lambda: liger.apply(gate_up)  # type: ignore[attr-defined]
    return case


def decode_case(batch: int = 128, context: int = 1024, rotate: int = 4) -> Case:
    """``rotate`` independent contexts, used in turn, so that even CUDA-graph replays (which do
    not flush the L2) read their K/V from DRAM: 4 x 101 MB against a 50 MB L2."""
    contexts = [
        random_paged_context([context] * batch, [1] * batch, KV_HEADS, HEAD_DIM, PAGE, DTYPE, DEVICE)
        for _ in range(rotate)
    ]
    queries = [torch.randn(batch, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE) for _ in range(rotate)]
    scale = HEAD_DIM**-0.5
    kv_bytes = batch * context * KV_HEADS * HEAD_DIM * BF16 * 2
    total = kv_bytes + batch * HEADS * HEAD_DIM * BF16 * 2 + contexts[0].page_table.numel() * 4
    flops = 4.0 * batch * HEADS * context * HEAD_DIM
    case = Case("decode attention", f"B={batch} ctx={context}", total, flops)
    sms = torch.cuda.get_device_properties().multi_processor_count
    auto = decode_attention.choose_num_splits(batch, KV_HEADS, context, sms)
    pages = context // PAGE

    def rotating(step: Callable[[int], torch.Tensor]) -> Callable[[], torch.Tensor]:
        calls = [0]  # each implementation starts at context 0, so first outputs compare

        def run() -> torch.Tensor:
            calls[0] += 1
            return step((calls[0] - 1) % rotate)

        return run

    def ours(i: int, splits: int = auto) -> torch.Tensor:
        ctx = contexts[i]
        return decode_attention.paged_decode_attention(
            queries[i], ctx.k_cache, ctx.v_cache, ctx.page_table, ctx.seq_lens, scale, num_splits=splits
        )

    def gather_sdpa(i: int) -> torch.Tensor:
        # The careful plain-torch way: gather each sequence's pages, then one batched SDPA.
        ctx = contexts[i]
        table = ctx.page_table[:, :pages].long()
        keys = ctx.k_cache[table].view(batch, context, KV_HEADS, HEAD_DIM).transpose(1, 2)
        values = ctx.v_cache[table].view(batch, context, KV_HEADS, HEAD_DIM).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(
            queries[i].unsqueeze(2), keys, values, scale=scale, enable_gqa=True
        )
        return out.squeeze(2)

    batches = [forward_batch(ctx, [1] * batch, [context] * batch) for ctx in contexts]
    case.impls[f"ours (splits={auto}, auto)"] = rotating(ours)
    other = 2 if auto == 1 else 1
    case.impls[f"ours (splits={other})"] = rotating(lambda i: ours(i, other))
    case.impls["torch eager (gather + SDPA)"] = rotating(gather_sdpa)
    gather_compiled = compiled(gather_sdpa)
    case.impls["torch.compile (gather + SDPA)"] = rotating(lambda i: gather_compiled(i))
    case.impls["torch backend (per-sequence loop)"] = rotating(
        lambda i: TORCH.attention(queries[i], contexts[i].k_cache, contexts[i].v_cache, batches[i], scale)
    )
    return case


def forward_batch(ctx, query_lens: list[int], seq_lens: list[int]) -> ForwardBatch:  # type: ignore[no-untyped-def]
    return ForwardBatch(
        input_ids=torch.zeros(sum(query_lens), dtype=torch.int64, device=DEVICE),
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


def extend_case(seqs: int, prefix: int, new: int) -> Case:
    seq_lens, query_lens = [prefix + new] * seqs, [new] * seqs
    ctx = random_paged_context(seq_lens, query_lens, KV_HEADS, HEAD_DIM, PAGE, DTYPE, DEVICE)
    q = torch.randn(seqs * new, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    scale = HEAD_DIM**-0.5
    visible = seqs * (new * prefix + new * (new + 1) / 2)  # (query, key) pairs under the causal mask
    flops = 4.0 * HEADS * HEAD_DIM * visible
    total = (q.numel() * 2 + seqs * (prefix + new) * KV_HEADS * HEAD_DIM * 2) * BF16
    case = Case("extend attention", f"{seqs}x({prefix} cached + {new} new)", total, flops)
    case.impls["ours"] = lambda: extend_attention.extend_attention(
        q, ctx.k_cache, ctx.v_cache, ctx.query_start_loc, ctx.seq_lens, ctx.page_table, new, scale
    )
    fb = forward_batch(ctx, query_lens, seq_lens)
    case.impls["torch backend (per-sequence SDPA)"] = lambda: TORCH.attention(
        q, ctx.k_cache, ctx.v_cache, fb, scale
    )
    return case


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, bytes read plus written, in TB/s."""
    src = torch.randn(512 * 2**20, dtype=DTYPE, device=DEVICE)
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


def run_case(case: Case, copy_tbs: float) -> list[dict[str, object]]:
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
        row: dict[str, object] = {
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


def sweep(copy_tbs: float, tokens: int = 65536) -> list[dict[str, object]]:
    """Block-size options for the kernels whose first sweep (run 1, notes/kernels.md) left
    a question: swiglu's row-streaming version at 64k tokens, decode attention timed as the
    engine runs it (CUDA-graph replay, K/V rotated so it comes from DRAM), extend attention."""
    rows: list[dict[str, object]] = []

    def record(kernel: str, config: str, fn: Callable[[], object], nbytes: int, flops: float = 0.0) -> None:
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
        row: dict[str, object] = {
            "kernel": kernel,
            "config": config,
            "us": us,
            "% copy": 100 * tbs / copy_tbs,
        }
        if flops:
            row["TFLOP/s"] = flops / (us * 1e-6) / 1e12
        rows.append(row)
        print(f"  sweep {kernel:28s} {config:48s} {us:8.1f} us {row['% copy']:5.1f}%")

    gate_up = torch.randn(tokens, 2 * INTER, dtype=DTYPE, device=DEVICE)
    for block_m in (1, 2, 4, 8):
        for block_n in (256, 512):
            for warps in (2, 4, 8):
                record(
                    "swiglu",
                    f"block_m={block_m} block_n={block_n} warps={warps}",
                    lambda b=block_m, n=block_n, w=warps: swiglu.silu_and_mul(
                        gate_up, block_m=b, block_n=n, num_warps=w
                    ),
                    tokens * INTER * BF16 * 3,
                )
    batch, context, rotate = 128, 1024, 4
    contexts = [
        random_paged_context([context] * batch, [1] * batch, KV_HEADS, HEAD_DIM, PAGE, DTYPE, DEVICE)
        for _ in range(rotate)
    ]
    q_dec = torch.randn(batch, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    kv_bytes = batch * context * KV_HEADS * HEAD_DIM * BF16 * 2
    for splits in (1, 2, 4):
        for block_n in (64, 128):
            for warps in (4, 8):
                for stages in (2, 3):
                    calls = [0]

                    def launch(
                        s: int = splits,
                        n: int = block_n,
                        w: int = warps,
                        st: int = stages,
                        c: list[int] = calls,
                    ) -> torch.Tensor:
                        c[0] += 1
                        ctx = contexts[c[0] % rotate]
                        return decode_attention.paged_decode_attention(
                            q_dec, ctx.k_cache, ctx.v_cache, ctx.page_table, ctx.seq_lens, 0.125,
                            num_splits=s, block_n=n, num_warps=w, num_stages=st,
                        )  # fmt: skip

                    config = f"splits={splits} block_n={block_n} warps={warps} stages={stages}"
                    record(f"decode B={batch} ctx={context} (graph)", config, launch, kv_bytes)
    seqs, new = 64, 1024
    ctx = random_paged_context([new] * seqs, [new] * seqs, KV_HEADS, HEAD_DIM, PAGE, DTYPE, DEVICE)
    q = torch.randn(seqs * new, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    flops = 4.0 * HEADS * HEAD_DIM * seqs * new * (new + 1) / 2
    for block_m, block_n in ((64, 64), (128, 64), (64, 128), (128, 128)):
        for warps in (4, 8):
            for stages in (2, 3):

                def extend(
                    m: int = block_m, n: int = block_n, w: int = warps, st: int = stages
                ) -> torch.Tensor:
                    return extend_attention.extend_attention(
                        q, ctx.k_cache, ctx.v_cache, ctx.query_start_loc, ctx.seq_lens, ctx.page_table, new,
                        0.125, block_m=m, block_n=n, num_warps=w, num_stages=st,
                    )  # fmt: skip

                config = f"block_m={block_m} block_n={block_n} warps={warps} stages={stages}"
                record(f"extend {seqs}x{new} new", config, extend, q.numel() * 2 * BF16, flops)
    return rows


def norm_ab(copy_tbs: float, tokens: int = 65536, rounds: int = 3) -> list[dict[str, object]]:
    """add_rms_norm at 64k tokens, GPU time only (graph replays), ours in several block sizes
    against Liger and torch.compile, interleaved over ``rounds`` rounds: is the ~1% gap to
    Liger in run 2 larger than the spread between rounds?"""
    x = torch.randn(tokens, HIDDEN, dtype=DTYPE, device=DEVICE)
    residual = torch.randn_like(x)
    weight = torch.randn(HIDDEN, dtype=DTYPE, device=DEVICE)
    impls: dict[str, Callable[[], object]] = {}
    for block_m, warps in ((1, 2), (2, 2), (4, 4), (8, 4), (16, 4)):
        impls[f"ours block_m={block_m} warps={warps}"] = lambda b=block_m, w=warps: rms_norm.add_rms_norm(
            x, residual, weight, EPS, block_m=b, num_warps=w
        )
    impls["ours, sum written over the residual"] = lambda: rms_norm.add_rms_norm(
        x, residual, weight, EPS, summed_out=residual
    )
    liger = try_liger("add_rms_norm")
    if liger is not None:
        impls["liger"] = lambda: liger.apply(x, residual, weight, EPS, 0.0, "llama", False)  # type: ignore[attr-defined]
    add_compiled = compiled(TORCH.add_rms_norm)
    impls["torch.compile"] = lambda: add_compiled(x, residual, weight, EPS)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            fn()
            times[name].append(triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median") * 1e3)
    rows = []
    for name, values in times.items():
        best = min(values)
        rows.append(
            {
                "impl": name,
                "graph_us per round": ", ".join(f"{v:.1f}" for v in values),
                "best us": best,
                "% copy": 100 * 4 * x.numel() * BF16 / (best * 1e-6) / 1e12 / copy_tbs,
            }
        )
        print(f"  norm a/b {name:32s} {rows[-1]['graph_us per round']}")
    return rows


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
    rows: list[dict[str, object]] = []
    sweep_rows: list[dict[str, object]] = []
    with torch.inference_mode():
        if not args.skip_main:
            builders: list[Callable[[], list[Case]]] = []
            for tokens in (4096, 65536):
                builders += [
                    lambda t=tokens: norm_cases(t),
                    lambda t=tokens: rope_cases(t),
                    lambda t=tokens: [write_kv_case(t)],
                    lambda t=tokens: [swiglu_case(t)],
                ]
            builders += [
                lambda: [decode_case()],
                lambda: [extend_case(8, 512, 512)],
                lambda: [extend_case(64, 0, 1024)],
            ]
            for build in builders:
                for case in build():
                    rows += run_case(case, copy_tbs)
                torch.cuda.empty_cache()
            write(
                args.out, rows, sweep_rows, copy_tbs, props, commit=args.commit
            )  # kept even if the sweep runs out of time
        if args.sweep:
            sweep_rows = sweep(copy_tbs)
            write(args.out, rows, sweep_rows, copy_tbs, props, commit=args.commit)
        if args.norm_ab:
            ab_rows = norm_ab(copy_tbs)
            write(args.out, rows, sweep_rows, copy_tbs, props, ab_rows, commit=args.commit)


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
