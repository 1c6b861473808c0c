"""How good and how fast a model directory is, compared with its teacher, on held-out data.

- perplexity: exp(mean next-token cross-entropy) on held-out docstring text;
- kl_to_teacher: mean KL(teacher || model) per answer token of held-out chat
  (teacher-forced on the teacher's answers), at temperature 1;
- top1_agreement: share of those tokens where the model's argmax is the teacher's;
- exact_match: share of held-out prompts where the model's greedy answer is
  token for token the teacher's (up to evaluate.max_new_tokens);
- parameters, size_bytes: of the directory's weights;
- decode_tokens_per_second: one request decoding on the engine the worker serves (radixfair_engine)
  (the CPU worker, as served; quantized checkpoints run quantized).

Quantized directories are evaluated through their dequantized weights,
which is what the worker's QuantizedLinear computes with.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from radixfair_distiller.data.batches import eval_text_windows
from radixfair_distiller.data.bundle import DataBundle
from radixfair_distiller.data.splits import EVAL
from radixfair_distiller.generation import generate
from radixfair_distiller.losses.divergence import token_divergence
from radixfair_distiller.model_dir import count_parameters, load_llama, weights_bytes
from radixfair_distiller.recipe import EvalSpec

# Held-out windows scored per forward pass.
_EVAL_BATCH = 4


@dataclass(frozen=True)
class Evaluation:
    perplexity: float
    kl_to_teacher: float
    top1_agreement: float
    exact_match: float
    parameters: int
    size_bytes: int
    decode_tokens_per_second: float

    def as_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def evaluate_model_dir(
    model_dir: Path,
    teacher: LlamaForCausalLM,
    bundle: DataBundle,
    spec: EvalSpec,
    seq_len: int,
    device: torch.device | str = "cpu",
) -> Evaluation:
    model = load_llama(model_dir, device)
    quality = evaluate_quality(model, teacher, bundle, spec, seq_len)
    speed = decode_tokens_per_second(model_dir, spec.decode_tokens) if spec.decode_tokens else 0.0
    return Evaluation(
        **quality,
        parameters=count_parameters(model_dir),
        size_bytes=weights_bytes(model_dir),
        decode_tokens_per_second=speed,
    )


def evaluate_quality(
    model: LlamaForCausalLM, teacher: LlamaForCausalLM, bundle: DataBundle, spec: EvalSpec, seq_len: int
) -> dict[str, float]:
    examples = bundle.chat[EVAL][: spec.chat_prompts]
    if not examples:
        raise ValueError("the evaluation split has no chat prompts; use more data.chat_prompts")
    kl, agreement = chat_agreement(model, teacher, examples)
    return {
        "perplexity": perplexity(model, eval_text_windows(bundle, spec.text_sequences, seq_len)),
        "kl_to_teacher": kl,
        "top1_agreement": agreement,
        "exact_match": exact_match(model, examples, spec.max_new_tokens, bundle),
    }


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, windows: list[torch.Tensor]) -> float:
    total, count = 0.0, 0
    for start in range(0, len(windows), _EVAL_BATCH):
        batch = torch.stack(windows[start : start + _EVAL_BATCH]).to(model.device)
        hidden = model.model(input_ids=batch[:, :-1], use_cache=False).last_hidden_state
        for row in range(batch.shape[0]):
            logits = model.lm_head(hidden[row]).float()
            total += float(F.cross_entropy(logits, batch[row, 1:], reduction="sum"))
            count += batch.shape[1] - 1
    return math.exp(total / count)


@torch.no_grad()
def chat_agreement(model: LlamaForCausalLM, teacher: LlamaForCausalLM, examples) -> tuple[float, float]:
    """Mean KL(teacher || model) and top-1 agreement over the teacher's answer tokens."""
    kl_sum, agree, count = 0.0, 0, 0
    for example in examples:
        tokens = torch.tensor([list(example.prompt_ids) + list(example.response_ids)], device=model.device)
        first = len(example.prompt_ids) - 1  # the position that predicts the first answer token
        student = model(input_ids=tokens, use_cache=False).logits[0, first:-1]
        reference = teacher(input_ids=tokens, use_cache=False).logits[0, first:-1]
        kl_sum += float(token_divergence(student, reference, "forward_kl").sum())
        agree += int((student.argmax(-1) == reference.argmax(-1)).sum())
        count += student.shape[0]
    return kl_sum / max(count, 1), agree / max(count, 1)


def exact_match(model: LlamaForCausalLM, examples, max_new_tokens: int, bundle: DataBundle) -> float:
    answers = generate(
        model,
        [list(e.prompt_ids) for e in examples],
        max_new_tokens,
        bundle.eos_token_id,
        bundle.pad_token_id,
    )
    # The teacher's answer was greedy too, so its first max_new_tokens are its answer at this length.
    hits = sum(answer == list(e.response_ids[:max_new_tokens]) for answer, e in zip(answers, examples))
    return hits / len(examples)


def decode_tokens_per_second(model_dir: Path, tokens: int) -> float:
    """Decode rate of one request on the worker engine (fp32, torch backend, CPU)."""
    from radixfair_engine.config import EngineConfig
    from radixfair_engine.engine_builder import build_engine
    from radixfair_engine.request import Request, SamplingConfig

    stack = build_engine(EngineConfig(num_pages=64, page_size=16, max_batched_tokens=256), model_dir)
    prompt = stack.encoder.encode_text("The standard library documents every public function")
    request = Request("speed", "distiller", prompt, SamplingConfig(max_tokens=tokens + 1, ignore_eos=True))
    stack.engine.submit(request)
    first_token_at = None
    while stack.engine.has_work():
        stack.engine.step()
        if first_token_at is None and request.output_ids:
            first_token_at = time.perf_counter()  # the prefill is not decode
    elapsed = time.perf_counter() - (first_token_at or time.perf_counter())
    return (len(request.output_ids) - 1) / elapsed if elapsed > 0 else 0.0
