"""CPU engine throughput against HF transformers generate, same weights, same machine, one run.

For batch sizes 1, 8 and 32: B requests with 96-token prompts and 32 new
tokens each, submitted at once. "shared" prompts start with one common
64-token system prompt that an earlier request already put in the cache (the
steady state of a tenant with a fixed system prompt); "distinct" prompts
share nothing. HF generate runs the same prompts as one left-padded batch.

    .venv/bin/python bench/engine/engine_cpu_bench.py [--batch-sizes 1 8 32] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import markdown_table, write_results  # noqa: E402
from radixfair.gc_tuning import tune_for_serving  # noqa: E402
from radixfair_engine.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_engine.engine_builder import build_engine  # noqa: E402
from radixfair_engine.request import Request, SamplingConfig  # noqa: E402
from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir  # noqa: E402

PROMPT_TOKENS = 96
SHARED_TOKENS = 64


def make_prompts(batch: int, shared: bool, vocab: int = 40000) -> list[list[int]]:
    generator = torch.Generator().manual_seed(batch * 2 + shared)
    system = torch.randint(1000, vocab, (SHARED_TOKENS,), generator=torch.Generator().manual_seed(7)).tolist()
    prompts = []
    for _ in range(batch):
        if shared:
            tail = torch.randint(1000, vocab, (PROMPT_TOKENS - SHARED_TOKENS,), generator=generator).tolist()
            prompts.append(system + tail)
        else:
            prompts.append(torch.randint(1000, vocab, (PROMPT_TOKENS,), generator=generator).tolist())
    return prompts, system


def run_engine(model_dir: Path, prompts: list[list[int]], system: list[int], shared: bool, new_tokens: int):
    config = EngineConfig(
        num_pages=1024,
        page_size=16,
        max_batched_tokens=1024,
        max_running_requests=64,
        scheduler=SchedulerConfig(policy="dlpm"),
    )
    engine = build_engine(config, model_dir).engine
    # The worker's engine process runs under these collector settings (engine_loop.run_engine_process).
    tune_for_serving()
    # The warm-up request also loads weights into caches; for "distinct" it shares nothing.
    warm_prompt = system + [5, 6] if shared else list(range(500, 500 + SHARED_TOKENS + 2))
    warm = [Request("warm", "bench", warm_prompt, SamplingConfig(max_tokens=2, ignore_eos=True))]
    _drain(engine, warm)
    requests = [
        Request(f"r{i}", "bench", p, SamplingConfig(max_tokens=new_tokens, ignore_eos=True))
        for i, p in enumerate(prompts)
    ]
    start = time.perf_counter()
    _drain(engine, requests)
    elapsed = time.perf_counter() - start
    cached = sum(r.num_cached_tokens for r in requests)
    return elapsed, cached / sum(len(p) for p in prompts), sum(len(r.output_ids) for r in requests)


def _drain(engine, requests):
    for request in requests:
        engine.submit(request)
    while engine.has_work():
        engine.step()


def run_hf(model, prompts: list[list[int]], new_tokens: int) -> float:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=2,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for both sides (0: torch's default); use 1 on a machine others share",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models"))
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    rows = []
    for batch in args.batch_sizes:
        for shared in (False, True):
            prompts, system = make_prompts(batch, shared)
            engine_s, hit_rate, out_tokens = run_engine(model_dir, prompts, system, shared, args.new_tokens)
            hf_s = run_hf(hf, prompts, args.new_tokens)
            row = {
                "batch": batch,
                "prefix": "shared" if shared else "distinct",
                "engine_req_per_s": batch / engine_s,
                "engine_tok_per_s": out_tokens / engine_s,
                "hf_req_per_s": batch / hf_s,
                "hf_tok_per_s": batch * args.new_tokens / hf_s,
                "speedup": hf_s / engine_s,
                "cache_hit_rate": hit_rate,
            }
            rows.append(row)
            print(row, flush=True)
    columns = [
        "batch",
        "prefix",
        "engine_req_per_s",
        "engine_tok_per_s",
        "hf_req_per_s",
        "hf_tok_per_s",
        "speedup",
        "cache_hit_rate",
    ]
    notes = (
        f"Prompts of {PROMPT_TOKENS} tokens ({SHARED_TOKENS}-token shared system prompt when 'shared', "
        f"cached by one earlier request), {args.new_tokens} new tokens each, fp32, torch backend, DLPM "
        "scheduler. tok/s counts output tokens over the wall time of the whole batch. speedup = HF "
        "time / engine time. Both sides use the same torch thread count (torch_threads in the JSON); "
        "other processes may share this machine: see load_average in the JSON."
    )
    meta = {
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": args.new_tokens,
        "torch_threads": torch.get_num_threads(),
    }
    write_results("engine_cpu", rows, columns, meta, notes)
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
