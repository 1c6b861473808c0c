"""GPU correctness of every kernel at SmolLM2-135M shapes, in bf16 and fp32.

Each case draws fresh random inputs, poisons the outputs with NaN, runs the kernel
and compares with a torch reference computed in fp64 on the same inputs
(``kernels.accuracy``: ||out - ref|| / ||ref||, fp32 < 1e-5, bf16 < 1e-2). Then the
whole model runs a greedy prefill + decode loop on the GPU with TritonBackend and
with TorchBackend, same random weights: fp32 must agree token for token.

    python3 bench/gpu_kernel_check.py [--out DIR]

Prints one row per case and exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "services" / "worker" / "src"), str(ROOT / "common" / "src"), str(ROOT)]

from radixfair_worker.kernels import (  # noqa: E402
    cascade_decode_attention,
    decode_attention,
    extend_attention,
    rms_norm,
    rope,
    swiglu,
)
from radixfair_worker.kernels import write_kv as write_kv_module  # noqa: E402
from radixfair_worker.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_worker.kernels.interpreter_compat import index_scalars_with_item  # noqa: E402
from radixfair_worker.kernels.paged_fixtures import (  # noqa: E402
    random_paged_context,
    random_shared_prefix_context,
)
from radixfair_worker.kernels.prefix_groups import PrefixSharingConfig, find_prefix_groups  # noqa: E402

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, PAGE = 576, 1536, 9, 3, 64, 16
EPS = 1e-5
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROWS: list[dict[str, object]] = []


@dataclass(frozen=True)
class Sizes:
    """Token counts and context lengths; ``--small`` shrinks them for a CPU interpreter smoke run."""

    tokens: tuple[int, ...] = (1, 4097, 65536)
    rope_tokens: int = 4097
    max_context: int = 2048
    long_context: int = 4096
    model_layers: int = 30
    model_steps: int = 16


SMALL = Sizes(tokens=(1, 37), rope_tokens=37, max_context=80, long_context=130, model_layers=2, model_steps=3)


def record(kernel: str, dtype: torch.dtype, case: str, error: float, tolerance: float | None = None) -> None:
    tolerance = TOLERANCE[dtype] if tolerance is None else tolerance
    ROWS.append(
        {
            "kernel": kernel,
            "dtype": str(dtype).removeprefix("torch."),
            "case": case,
            "rel_error": error,
            "tolerance": tolerance,
            "ok": error < tolerance,
        }
    )


def check_norms(dtype: torch.dtype, sizes: Sizes) -> None:
    for tokens in sizes.tokens:
        x = torch.randn(tokens, HIDDEN, dtype=dtype, device=DEVICE) * 2
        residual = torch.randn_like(x)
        weight = torch.randn(HIDDEN, dtype=dtype, device=DEVICE)
        out = poisoned_like(x)
        rms_norm.rms_norm(x, weight, EPS, out=out)
        record(
            "rms_norm",
            dtype,
            f"T={tokens}",
            relative_error(out, rms_norm.rms_norm_reference(x.double(), weight.double(), EPS)),
        )
        out, summed = poisoned_like(x), poisoned_like(x)
        rms_norm.add_rms_norm(x, residual, weight, EPS, out=out, summed_out=summed)
        ref_out, ref_sum = rms_norm.add_rms_norm_reference(
            x.double(), residual.double(), weight.double(), EPS
        )
        error = max(relative_error(out, ref_out), relative_error(summed, ref_sum))
        record("add_rms_norm", dtype, f"T={tokens}", error)


def fused_qkv(tokens: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=dtype, device=DEVICE)
    q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    return (
        q.view(tokens, HEADS, HEAD_DIM),
        k.view(tokens, KV_HEADS, HEAD_DIM),
        v.view(tokens, KV_HEADS, HEAD_DIM),
    )


def rope_table(positions: int = 8192) -> torch.Tensor:
    inv_freq = 1.0 / 100000.0 ** (torch.arange(0, HEAD_DIM, 2, device=DEVICE).float() / HEAD_DIM)
    freqs = torch.outer(torch.arange(positions, device=DEVICE).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def check_rope(dtype: torch.dtype, sizes: Sizes) -> None:
    table = rope_table()
    tokens = sizes.rope_tokens
    q, k, v = fused_qkv(tokens, dtype)
    positions = torch.randint(0, table.shape[0], (tokens,), device=DEVICE)
    ref_q = rope.rope_reference(q.double(), positions, table.double())
    ref_k = rope.rope_reference(k.double(), positions, table.double())
    rope.apply_rope(q, k, positions, table)
    record("rope", dtype, f"T={tokens} in place", max(relative_error(q, ref_q), relative_error(k, ref_k)))

    q, k, v = fused_qkv(tokens, dtype)
    num_slots = (tokens // PAGE + 8) * PAGE
    slots = torch.randperm(num_slots, device=DEVICE)[:tokens]
    k_cache = torch.full(
        (num_slots // PAGE, PAGE, KV_HEADS, HEAD_DIM), float("nan"), dtype=dtype, device=DEVICE
    )
    v_cache = torch.full_like(k_cache, float("nan"))
    ref_q = rope.rope_reference(q.double(), positions, table.double())
    ref_k = rope.rope_reference(k.double(), positions, table.double())
    k_before = k.clone()
    rope.rope_and_write_kv(q, k, v, positions, table, k_cache, v_cache, slots)
    k_slots, v_slots = k_cache.view(-1, KV_HEADS, HEAD_DIM), v_cache.view(-1, KV_HEADS, HEAD_DIM)
    untouched = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    exact = (
        torch.equal(v_slots[slots], v)
        and torch.equal(k, k_before)
        and bool(k_slots[untouched].isnan().all())
        and bool(v_slots[untouched].isnan().all())
    )
    error = max(relative_error(q, ref_q), relative_error(k_slots[slots], ref_k)) if exact else float("inf")
    record("rope+write_kv", dtype, f"T={tokens}, v exact, others untouched", error)

    q, k, v = fused_qkv(tokens, dtype)
    k_cache.fill_(float("nan"))
    v_cache.fill_(float("nan"))
    write_kv_module.write_kv(k, v, k_cache, v_cache, slots)
    exact = (
        torch.equal(k_slots[slots], k)
        and torch.equal(v_slots[slots], v)
        and bool(k_slots[untouched].isnan().all())
    )
    record("write_kv", dtype, f"T={tokens}, exact", 0.0 if exact else float("inf"))


def check_swiglu(dtype: torch.dtype, sizes: Sizes) -> None:
    for tokens in sizes.tokens:
        gate_up = torch.randn(tokens, 2 * INTER, dtype=dtype, device=DEVICE) * 3
        out = poisoned_like(gate_up[:, :INTER].contiguous())
        swiglu.silu_and_mul(gate_up, out=out)
        record(
            "swiglu",
            dtype,
            f"T={tokens}",
            relative_error(out, swiglu.silu_and_mul_reference(gate_up.double())),
        )


def attention_reference(q: torch.Tensor, ctx, query_start: list[int], seq_lens: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return decode_attention.paged_attention_reference(
        q.double(),
        ctx.k_cache.double(),
        ctx.v_cache.double(),
        query_start,
        seq_lens,
        ctx.page_table,
        HEAD_DIM**-0.5,
    )


def check_decode(dtype: torch.dtype, sizes: Sizes) -> None:
    top, long = sizes.max_context, sizes.long_context
    lengths = [1, 16, 17, top // 2, top] + [random.randint(1, top) for _ in range(123)]
    cases = [(f"B=128 ragged 1..{top}", lengths, (1, 2, 4, 8))]
    cases.append((f"B=1 ctx {long}", [long], (1, 16)))
    cases.append(("B=8 with 3 zero-length pads", [top // 7, 0, 77, 1, 0, top - 5, 0, 64], (1, 4)))
    for name, seq_lens, split_options in cases:
        ctx = random_paged_context(
            seq_lens, [min(1, s) for s in seq_lens], KV_HEADS, HEAD_DIM, PAGE, dtype, DEVICE
        )
        q = torch.randn(len(seq_lens), HEADS, HEAD_DIM, dtype=dtype, device=DEVICE)
        ref = attention_reference(q, ctx, list(range(len(seq_lens) + 1)), seq_lens)
        for splits in split_options:
            out = poisoned_like(q)
            decode_attention.paged_decode_attention(
                q,
                ctx.k_cache,
                ctx.v_cache,
                ctx.page_table,
                ctx.seq_lens,
                HEAD_DIM**-0.5,
                out=out,
                num_splits=splits,
            )
            error = relative_error(out, ref)
            if 0 in seq_lens and not bool((out[[i for i, s in enumerate(seq_lens) if s == 0]] == 0).all()):
                error = float("inf")
            record("decode_attention", dtype, f"{name}, splits={splits}", error)


def check_cascade_decode(dtype: torch.dtype, sizes: Sizes) -> None:
    """Cascade decode against fp64 plain attention: ragged groups (two items), a prefix ending
    mid-page, a group of one, sequences in no group, padding rows; with and without own splits."""
    top = sizes.max_context
    big, small = top // 2 + 5, top // 4 + 3  # shared tokens: neither ends on a page boundary
    seq_lens = [big + random.randint(1, top // 2) for _ in range(40)]  # group 0: 40 sequences
    seq_lens += [small + random.randint(1, top // 4) for _ in range(5)]  # group 1
    seq_lens += [big + 9, random.randint(1, top), random.randint(1, top), 0, 0]  # group of one, none, pads
    group_of = [0] * 40 + [1] * 5 + [2, -1, -1, -1, -1]
    ctx = random_shared_prefix_context(
        seq_lens, group_of, [big, small, big], KV_HEADS, HEAD_DIM, PAGE, dtype, DEVICE
    )
    q = torch.randn(len(seq_lens), HEADS, HEAD_DIM, dtype=dtype, device=DEVICE)
    ref = attention_reference(q, ctx, list(range(len(seq_lens) + 1)), seq_lens)
    for block_m in (32, 64, 128):
        sharing = PrefixSharingConfig(min_saved_tokens=1, block_m=block_m)
        host = find_prefix_groups(
            ctx.page_table.cpu().numpy(), torch.tensor(seq_lens).numpy(), PAGE, HEADS // KV_HEADS, sharing
        )
        if host is None:
            record("cascade_decode", dtype, f"block_m={block_m}: no group found", float("inf"))
            continue
        groups = host.to_device(lambda t: t.to(DEVICE), capacity=len(seq_lens))
        for splits, prefix_splits in ((1, 1), (1, 8), (4, 2)):
            out = poisoned_like(q)
            cascade_decode_attention.cascade_decode_attention(
                q,
                ctx.k_cache,
                ctx.v_cache,
                ctx.page_table,
                ctx.seq_lens,
                groups,
                HEAD_DIM**-0.5,
                out=out,
                num_splits=splits,
                prefix_splits=prefix_splits,
                prefix_num_warps=8 if block_m == 128 else 4,
            )
            error = relative_error(out, ref)
            if not bool((out[-2:] == 0).all()):
                error = float("inf")
            grouped = int((host.seq_prefix_len > 0).sum())
            case = f"B={len(seq_lens)}, {grouped} grouped, block_m={block_m}, splits={splits}/{prefix_splits}"
            record("cascade_decode", dtype, case, error)


def check_extend(dtype: torch.dtype, sizes: Sizes) -> None:
    top = sizes.max_context
    # (context after the step, new tokens): fresh prompts, chunks resuming from cached
    # prefixes (mid-page and on page boundaries), decode rows and a one-token prompt.
    batch = [(37, 37), (top // 4, top // 4), (top - 1, top - 1), (1, 1), (top // 2, top // 3), (32, 16)]
    batch += [(top, top // 2 + 1), (top, 1)]
    batch += [(random.randint(2, top), 1) for _ in range(8)]
    seq_lens, query_lens = [s for s, _ in batch], [q for _, q in batch]
    ctx = random_paged_context(seq_lens, query_lens, KV_HEADS, HEAD_DIM, PAGE, dtype, DEVICE)
    q = torch.randn(sum(query_lens), HEADS, HEAD_DIM, dtype=dtype, device=DEVICE)
    out = poisoned_like(q)
    extend_attention.extend_attention(
        q,
        ctx.k_cache,
        ctx.v_cache,
        ctx.query_start_loc,
        ctx.seq_lens,
        ctx.page_table,
        max(query_lens),
        HEAD_DIM**-0.5,
        out=out,
    )
    ref = attention_reference(q, ctx, ctx.query_start_host, seq_lens)
    record("extend_attention", dtype, f"mixed batch, T={q.shape[0]}", relative_error(out, ref))


def check_model(dtype: torch.dtype, sizes: Sizes) -> None:
    """Teacher-forced decode of a random-weight SmolLM2-135M against the fp32 torch backend.

    Triton fp32 must choose every token the fp32 torch backend chose; in bf16 the yardstick is
    the torch backend's own bf16, and Triton bf16 may trail it by at most 2 points.
    """
    if dtype != torch.bfloat16:
        return  # one pass covers both dtypes
    try:
        from bench.model_greedy import argmax_agreement
    except ImportError as error:  # the model's own imports need the worker's dependencies
        ROWS.append({"kernel": "model argmax", "dtype": "", "case": f"skipped: {error}", "ok": True})
        return
    rows = argmax_agreement(sizes.model_steps, sizes.model_layers)
    yardstick = next(r.agreement for r in rows if r.backend == "torch")
    for row in rows:
        needed = 1.0 if row.dtype == "float32" else yardstick - 0.02
        case = f"{row.backend} {row.dtype}: argmax agreement {row.agreement:.3f} with torch fp32"
        case += f", prefill logits err {row.prefill_logits_error:.2e}"
        if row.backend == "torch":
            case += " (yardstick)"
        ROWS.append(
            {
                "kernel": "model argmax vs torch fp32",
                "dtype": row.dtype,
                "case": case,
                "rel_error": 1.0 - row.agreement,
                "tolerance": 1.0 - needed,
                "ok": row.agreement >= needed or row.backend == "torch",
            }
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write gpu_kernel_check.json here")
    parser.add_argument("--small", action="store_true", help="tiny shapes, for TRITON_INTERPRET=1 on a CPU")
    args = parser.parse_args()
    sizes = SMALL if args.small else Sizes()
    if args.small:
        index_scalars_with_item()
    torch.manual_seed(0)
    random.seed(0)
    checks: list[Callable[[torch.dtype, Sizes], None]] = [
        check_norms,
        check_rope,
        check_swiglu,
        check_decode,
        check_cascade_decode,
        check_extend,
    ]
    checks.append(check_model)
    for dtype in (torch.bfloat16, torch.float32):
        for check in checks:
            try:
                check(dtype, sizes)
            except Exception as error:  # report and go on: one broken kernel must not hide the others
                ROWS.append(
                    {
                        "kernel": check.__name__,
                        "dtype": str(dtype),
                        "case": f"raised {error!r}"[:300],
                        "ok": False,
                    }
                )
    print(f"{'kernel':32s} {'dtype':9s} {'rel.error':>10s} {'tol':>7s}  ok  case")
    for row in ROWS:
        error = row.get("rel_error")
        error_text = f"{error:10.2e}" if isinstance(error, float) else f"{'':10s}"
        tol = row.get("tolerance")
        tol_text = f"{tol:7.0e}" if isinstance(tol, float) else f"{'':7s}"
        verdict = "ok" if row["ok"] else "XX"
        print(f"{row['kernel']:32s} {row['dtype']:9s} {error_text} {tol_text}  {verdict}  {row['case']}")
    failed = [row for row in ROWS if not row["ok"]]
    print(f"{len(ROWS) - len(failed)}/{len(ROWS)} cases pass")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_kernel_check.json").write_text(json.dumps(ROWS, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
