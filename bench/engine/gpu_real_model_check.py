"""The real SmolLM2-135M-Instruct on the GPU: greedy equality with HF, bf16 agreement, one throughput row.

Issue 14, part 3. With the real weights (the packaged Q4_1 GGUF, dequantized to float32 once):

1. fp32 greedy: our engine (Triton kernels, CUDA graphs, overlap scheduling) against HF
   ``generate`` (``do_sample=False``), both allowed to stop at EOS, on the demo's chat prompts
   plus a few general ones. Target: identical token lists.
2. bf16, teacher-forced: every prompt followed by the fp32 reference continuation is run as
   one prefill, logits at every position. Top-1 agreement with HF's fp32 logits, for our
   Triton backend in bf16 and for HF's own bf16, over the continuation positions and over all
   positions; max and mean absolute logit error against fp32. Target: ours >= HF's. Teacher
   forcing keeps one near-tie flip from changing every later comparison, which is why
   free-running greedy equality is the wrong yardstick in bf16.
3. One end-to-end decode throughput row of the engine on the real weights (bf16, batch 128,
   128-token prompts, 128 new tokens, ``ignore_eos``), as bench/engine/gpu_engine_bench.py measures
   its random-weight rows.

On the GPU machine, after ../shared/tools/gpu_model_parts.sh's runs joined the GGUF:
    PYTHONPATH=/tmp/site:common/src:model_format/src:engine/src:services/worker/src \\
        python3 bench/engine/gpu_real_model_check.py --gguf /tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out $OUT
Writes bench/results/gpu_real_model_h200.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine.gpu_engine_bench import engine_throughput, make_engine  # noqa: E402
from bench.kernels.model_greedy import PAGE_SIZE, _batch  # noqa: E402
from bench.report import markdown_table, write_results  # noqa: E402
from radixfair.tokenization import ChatTurn, PromptEncoder  # noqa: E402
from radixfair_engine.engine_builder import build_backend  # noqa: E402
from radixfair_engine.model.llama import KVCache  # noqa: E402
from radixfair_engine.model.loader import load_model  # noqa: E402
from radixfair_engine.request import Request, SamplingConfig  # noqa: E402
from radixfair_model_format.model_config import ModelConfig  # noqa: E402
from radixfair_model_format.model_store import convert_gguf  # noqa: E402

# The demo's three system prompts and questions (scripts/demo.py), plus general chat turns.
SYSTEMS = (
    "You are the support assistant of Acme Rockets. Answer briefly and politely. Acme sells model "
    "rockets, launch pads and safety gear. Orders ship within two days. Refunds take one week.",
    "You are a patient maths tutor for Globex school. Explain each step in plain words, use small "
    "numbers in examples, and end with one short practice question for the student.",
    "You are an operations assistant at Initech. Reply with a short checklist. Mention the TPS "
    "report deadline when relevant and never promise dates you cannot keep.",
)
QUESTIONS = ("How do I get started?", "What should I do first today?", "Can you give me a quick example?")
GENERAL = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a prefix cache is in one sentence.",
    "List three primary colours.",
    "What is 12 times 7?",
    "Give me a tip for writing clear emails.",
    "Why is the sky blue?",
)


def chat_prompts(encoder: PromptEncoder) -> list[list[int]]:
    turns = [[ChatTurn("system", s), ChatTurn("user", q)] for s in SYSTEMS for q in QUESTIONS]
    turns += [[ChatTurn("user", q)] for q in GENERAL]
    return [encoder.encode_chat(t) for t in turns]


def stop_at_eos(tokens: list[int], eos: frozenset[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def ours_greedy(
    model_dir: Path, prompts: list[list[int]], new_tokens: int, eos: frozenset[int], backend: str, device: str
) -> list[list[int]]:
    graphs = 128 if device == "cuda" else 0
    engine = make_engine(model_dir, backend, "float32", graphs, eos_token_ids=eos, device=device)
    requests = [
        Request(f"g{i}", "check", p, SamplingConfig(max_tokens=new_tokens)) for i, p in enumerate(prompts)
    ]
    for request in requests:
        engine.submit(request)
    while engine.has_work():
        engine.step()
    return [stop_at_eos(list(r.output_ids), eos) for r in requests]


def hf_greedy(model, prompts: list[list[int]], new_tokens: int, eos: frozenset[int]) -> list[list[int]]:
    device = next(model.parameters()).device
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=sorted(eos), pad_token_id=sorted(eos)[0]
    )
    outputs = []
    with torch.no_grad():
        for prompt in prompts:  # one at a time: no padding, nothing to mask
            ids = torch.tensor([prompt], device=device)
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            outputs.append(stop_at_eos(generated[0, len(prompt) :].tolist(), eos))
    return outputs


def ours_logits(
    model_dir: Path, dtype: torch.dtype, sequences: list[list[int]], backend: str, device: str
) -> list[torch.Tensor]:
    """Logits at every position of each sequence, one prefill per sequence, float32 on the host."""
    model = load_model(model_dir, build_backend(backend), dtype, device)
    out = []
    with torch.no_grad():
        for sequence in sequences:
            pages = -(-len(sequence) // PAGE_SIZE)
            cache = KVCache(model.config, pages, PAGE_SIZE, dtype, torch.device(device))
            batch = _batch([sequence], [0], pages, torch.device(device))
            batch = dataclasses.replace(batch, logits_indices=torch.arange(len(sequence), device=device))
            out.append(model(batch, cache).float().cpu())
    return out


def hf_logits(model, sequences: list[list[int]]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(torch.tensor([s], device=device)).logits[0].float().cpu() for s in sequences]


@dataclasses.dataclass(frozen=True)
class LogitComparison:
    name: str
    top1_continuation: float
    top1_all_positions: float
    max_abs_error: float
    mean_abs_error: float


def compare(
    name: str, candidate: list[torch.Tensor], reference: list[torch.Tensor], prompt_lens: list[int]
) -> LogitComparison:
    cont_hits = cont_total = all_hits = all_total = 0
    max_error = 0.0
    error_sum = 0.0
    count = 0
    for logits, ref, start in zip(candidate, reference, prompt_lens):
        same = logits.argmax(-1) == ref.argmax(-1)
        all_hits += int(same.sum())
        all_total += same.numel()
        # Position p predicts token p + 1: the continuation's predictions start at the prompt's last token.
        cont_hits += int(same[start - 1 : -1].sum())
        cont_total += same[start - 1 : -1].numel()
        diff = (logits - ref).abs()
        max_error = max(max_error, float(diff.max()))
        error_sum += float(diff.sum())
        count += diff.numel()
    return LogitComparison(name, cont_hits / cont_total, all_hits / all_total, max_error, error_sum / count)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, help="the joined GGUF; converted once into --model-dir")
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "smollm2-real")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None, help="also copy results here (device $OUT)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="triton", help="'torch' for a quick CPU check of this script")
    parser.add_argument("--prompts", type=int, default=None, help="only the first N prompts (a quick check)")
    args = parser.parse_args()
    if not (args.model_dir / "model.safetensors").exists():
        start = time.perf_counter()
        convert_gguf(args.gguf, args.model_dir)
        print(f"converted in {time.perf_counter() - start:.1f} s", flush=True)
    from transformers import AutoModelForCausalLM

    encoder = PromptEncoder(args.model_dir)
    config = ModelConfig.from_hf_config(args.model_dir / "config.json")
    eos = frozenset(t for t in (config.eos_token_id, encoder.eos_token_id) if t is not None)
    prompts = chat_prompts(encoder)[: args.prompts]

    hf32 = (
        AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.float32).to(args.device).eval()
    )
    hf_tokens = hf_greedy(hf32, prompts, args.new_tokens, eos)
    our_tokens = ours_greedy(args.model_dir, prompts, args.new_tokens, eos, args.backend, args.device)
    identical = sum(a == b for a, b in zip(our_tokens, hf_tokens))
    first_diff = [
        next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        for a, b in zip(our_tokens, hf_tokens)
        if a != b
    ]
    print(f"fp32 greedy identical to HF generate: {identical}/{len(prompts)}", flush=True)
    print("sample:", repr(encoder.decode(our_tokens[-1])), flush=True)

    sequences = [p + t for p, t in zip(prompts, hf_tokens)]
    prompt_lens = [len(p) for p in prompts]
    reference = hf_logits(hf32, sequences)
    rows = [
        compare(
            f"radixfair {args.backend} fp32",
            ours_logits(args.model_dir, torch.float32, sequences, args.backend, args.device),
            reference,
            prompt_lens,
        ),
        compare(
            f"radixfair {args.backend} bf16",
            ours_logits(args.model_dir, torch.bfloat16, sequences, args.backend, args.device),
            reference,
            prompt_lens,
        ),
    ]
    del hf32
    hf16 = (
        AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.bfloat16).to(args.device).eval()
    )
    rows.append(compare("HF transformers bf16", hf_logits(hf16, sequences), reference, prompt_lens))
    del hf16
    throughput = {"tok_per_s": float("nan"), "ms_per_step": float("nan")}
    if args.device == "cuda":
        torch.cuda.empty_cache()
        engine = make_engine(args.model_dir, args.backend, "bfloat16", 128)
        # Warm first, as gpu_engine_bench's batch-128 row is (it follows the batch-1 row on one engine):
        # a cold engine compiles its Triton kernels inside the timed steps.
        engine_throughput(engine, 128, 128, 16)
        throughput = engine_throughput(engine, 128, 128, 128)
    positions = sum(len(s) for s in sequences)
    continuation = sum(len(t) for t in hf_tokens)
    table = [dataclasses.asdict(r) for r in rows]
    columns = list(table[0])
    summary = {
        "prompts": len(prompts),
        "fp32_greedy_identical_to_hf": identical,
        "first_differing_token_index": first_diff,
        "teacher_forced_positions_all": positions,
        "teacher_forced_positions_continuation": continuation,
        "real_weights_bf16_batch128_decode_tok_s": throughput["tok_per_s"],
        "real_weights_bf16_batch128_ms_per_step": throughput["ms_per_step"],
        "comparisons": table,
    }
    notes = (
        "Real SmolLM2-135M-Instruct (packaged Q4_1 GGUF dequantized to float32). "
        f"fp32 greedy, {args.new_tokens} new tokens at most, both stopping at EOS {sorted(eos)}: "
        f"{identical}/{len(prompts)} prompts identical to HF generate. Teacher-forced logits against HF "
        f"fp32 over {continuation} continuation positions ({positions} in all). Engine decode on the real "
        f"weights, bf16, batch 128, 128+128 tokens: {throughput['tok_per_s']:,.0f} tokens/s "
        f"({throughput['ms_per_step']:.2f} ms/step)."
    )
    path = write_results("gpu_real_model_h200", table, columns, summary, notes)
    print(markdown_table(table, columns))
    print(notes)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".json"):
            (args.out / f"gpu_real_model_h200{suffix}").write_text(path.with_suffix(suffix).read_text())


if __name__ == "__main__":
    main()
