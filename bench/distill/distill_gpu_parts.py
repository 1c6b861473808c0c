"""The pieces of bench/distill/gpu_distill.py: teacher set-up, data, timed training runs, evaluation, fits.

Everything here calls the distiller's own modules (pruning, the training loop with the fused loss,
the evaluation metrics, the engine-written teacher answers), so a row of the results is what a
recipe with the same fields and seed gives through `radixfair distill`, bar the wall-time cut.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from radixfair_distiller.data.batches import eval_text_windows
from radixfair_distiller.data.bundle import DataBundle
from radixfair_distiller.data.chat import ChatExample
from radixfair_distiller.evaluation import perplexity
from radixfair_distiller.generation import generate
from radixfair_distiller.losses.divergence import token_divergence
from radixfair_distiller.model_dir import dequantized_state, llama_config_dict, llama_from_state, llama_state
from radixfair_distiller.recipe import DistillSpec
from radixfair_distiller.training import JobCancelledError, StepReport, TrainingHooks, TrainingRun, distill
from radixfair_model_format.quantized_checkpoint import (
    FORMAT_VERSION,
    SCALE_SUFFIX,
    is_quantizable,
    quantize_weight,
    quantized_state,
)


class Deadline:
    """Wall-clock budget of the whole run; phases ask how much is left."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def convert_gguf(gguf: Path, target: Path) -> Path:
    """The teacher's model directory: ``gguf`` converted once by the worker's model store."""
    if not (target / "model.safetensors").exists():
        from radixfair_model_format import model_store

        model_store.convert_gguf(gguf, target)
    return target


def random_smollm2_teacher(target: Path, tokenizer_source: Path) -> Path:
    """Random weights in SmolLM2-135M's shape with its tokenizer: the stand-in when the real one is absent.

    The weights are bench/engine/gpu_engine_bench.py's random model (the GPU benches' shared one); the
    numbers it gives measure the pipeline and the speeds, not distillation quality.
    """
    from bench.engine.gpu_engine_bench import make_random_model
    from radixfair_distiller.model_dir import copy_tokenizer

    if not (target / "model.safetensors").exists():
        make_random_model(target)
        copy_tokenizer(tokenizer_source, target)
    return target


def tiny_teacher(target: Path, tokenizer_source: Path) -> Path:
    """A random 2-layer Llama with the real tokenizer: the --smoke teacher (numbers mean nothing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from radixfair_distiller.model_dir import save_llama

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0)  # peaked logits: greedy answers are not near-ties
    return save_llama(model, target, tokenizer_source)


@dataclass
class CurvePoint:
    tokens: int
    seconds: float
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    student: torch.nn.Module
    steps_done: int
    total_steps: int
    tokens_done: int
    seconds: float
    losses: list[float]
    step_seconds: list[float]
    curve: list[CurvePoint]
    cut_by_deadline: bool


def train(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    bundle: DataBundle,
    spec: DistillSpec,
    seed: int,
    seq_len: int,
    device: torch.device,
    work_dir: Path,
    stop_at: float,
    evaluate_at: set[int] = frozenset(),  # type: ignore[assignment]
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Runs the distiller's training loop; stops cleanly at ``stop_at`` (time.monotonic) if not done.

    ``evaluate`` runs at the steps in ``evaluate_at`` (the learning curve); its time is not counted
    as training time.
    """
    shutil.rmtree(work_dir, ignore_errors=True)
    schedule = spec.schedule(seq_len)
    losses: list[float] = []
    step_seconds: list[float] = []
    curve: list[CurvePoint] = []
    eval_seconds = [0.0]
    started = time.monotonic()
    holder: dict[str, torch.nn.Module] = {"student": student}

    def on_step(report: StepReport) -> None:
        losses.append(report.loss)
        step_seconds.append(report.seconds)
        if report.step % max(1, schedule.total_steps // 10) == 0:
            print(
                f"  step {report.step}/{schedule.total_steps} loss {report.loss:.4f} "
                f"{schedule.tokens_per_step / max(report.seconds, 1e-9):,.0f} tok/s",
                flush=True,
            )
        if evaluate is not None and report.step in evaluate_at:
            before = time.monotonic()
            model = holder["student"]
            model.eval()
            metrics = evaluate(model)
            model.train()
            eval_seconds[0] += time.monotonic() - before
            curve.append(
                CurvePoint(report.step * schedule.tokens_per_step, sum(step_seconds), report.loss, metrics)
            )

    hooks = TrainingHooks(
        on_step=on_step,
        on_checkpoint=lambda step: None,
        on_resume=lambda step: None,
        should_stop=lambda: time.monotonic() >= stop_at,
    )
    run = TrainingRun(spec, seed, seq_len, work_dir / "checkpoint", work_dir, device)
    cut = False
    try:
        student, _ = distill(student, teacher, bundle, run, hooks)
    except JobCancelledError:
        cut = True  # the student trained in place; it holds the weights after the last full step
        student.eval()
    shutil.rmtree(work_dir, ignore_errors=True)
    return TrainResult(
        student=student,
        steps_done=len(losses),
        total_steps=schedule.total_steps,
        tokens_done=len(losses) * schedule.tokens_per_step,
        seconds=time.monotonic() - started - eval_seconds[0],
        losses=losses,
        step_seconds=step_seconds,
        curve=curve,
        cut_by_deadline=cut,
    )


@dataclass(frozen=True)
class EvalSet:
    """Held-out data the rows are scored on (or, for choosing a loss, the calibration split)."""

    text_windows: list[torch.Tensor]
    chat: list[ChatExample]
    max_new_tokens: int
    eos_token_id: int | None
    pad_token_id: int


def eval_set(bundle: DataBundle, split: str, text_sequences: int, chat_prompts: int, seq_len: int, new: int):
    from radixfair_distiller.data.batches import _windows

    if split == "eval":
        windows = eval_text_windows(bundle, text_sequences, seq_len)
    else:
        windows = _windows(bundle.text[split], seq_len + 1, text_sequences)
    return EvalSet(windows, bundle.chat[split][:chat_prompts], new, bundle.eos_token_id, bundle.pad_token_id)


@torch.no_grad()
def quality(model, teacher, data: EvalSet, with_exact_match: bool = True) -> dict[str, float]:
    """Perplexity, KL(teacher || model), top-1 agreement with the fp32 teacher, greedy exact match.

    The metrics of radixfair_distiller.evaluation, with the chat examples scored ``_CHAT_BATCH`` at a
    time (right-padded: a causal model's real positions never see the padding) instead of one by
    one, and the exact-match answers generated 64 prompts at a time.
    """
    # A split too small for a window or without chat scores NaN there instead of failing the run.
    kl, agreement = batched_chat_agreement(model, teacher, data.chat) if data.chat else (math.nan, math.nan)
    out = {
        "perplexity": perplexity(model, data.text_windows) if data.text_windows else math.nan,
        "kl_to_teacher": kl,
        "top1_agreement": agreement,
    }
    if with_exact_match and data.chat:
        answers = generate(
            model,
            [list(e.prompt_ids) for e in data.chat],
            data.max_new_tokens,
            data.eos_token_id,
            data.pad_token_id,
            batch_size=64,
        )
        hits = sum(a == list(e.response_ids[: data.max_new_tokens]) for a, e in zip(answers, data.chat))
        out["exact_match"] = hits / len(data.chat)
    return out


_CHAT_BATCH = 32


@torch.no_grad()
def batched_chat_agreement(model, teacher, examples: list[ChatExample]) -> tuple[float, float]:
    """Mean KL(teacher || model) and top-1 agreement over the teacher's answer tokens (see evaluation)."""
    kl_sum, agree, count = 0.0, 0, 0
    for start in range(0, len(examples), _CHAT_BATCH):
        chunk = examples[start : start + _CHAT_BATCH]
        rows = [list(e.prompt_ids) + list(e.response_ids) for e in chunk]
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=model.device)
        student = model(input_ids=tokens, use_cache=False).logits
        reference = teacher(input_ids=tokens, use_cache=False).logits
        for i, e in enumerate(chunk):
            first, last = len(e.prompt_ids) - 1, len(rows[i]) - 1  # positions predicting the answer
            s, r = student[i, first:last].float(), reference[i, first:last].float()
            kl_sum += float(token_divergence(s, r, "forward_kl").sum())
            agree += int((s.argmax(-1) == r.argmax(-1)).sum())
            count += s.shape[0]
        del student, reference
    return kl_sum / max(count, 1), agree / max(count, 1)


@torch.no_grad()
def self_agreement(teacher, data: EvalSet) -> float:
    """The teacher's top-1 agreement with itself run in bf16 (the dtype it serves and wrote its data in).

    Teacher-forced on the held-out answers, the share of tokens where the bf16 teacher's argmax is
    the fp32 teacher's. Against itself in one dtype it would be 1.0 by definition; this is how much
    agreement rounding alone costs, so a student cannot be asked for more.
    """
    import copy

    if not data.chat:
        return math.nan
    half = copy.deepcopy(teacher).to(torch.bfloat16)
    _, agreement = batched_chat_agreement(half, teacher, data.chat)
    del half
    return agreement


def quantized_copy(model, scheme: str, format_version: int = FORMAT_VERSION):
    """The model round-tripped through the distiller's writer in ``scheme`` (the numbers the worker serves).

    ``format_version=1`` is the format's first layout (the embedding in ``scheme`` too), kept to show
    on one student what version 2's int8 embedding changes.
    """
    state = llama_state(model)
    if format_version == 1:
        for name, tensor in list(state.items()):
            if is_quantizable(name, tensor):
                state[name], state[name + SCALE_SUFFIX] = quantize_weight(tensor, scheme)
    else:
        state = quantized_state(state, scheme)
    return llama_from_state(dequantized_state(state), llama_config_dict(model.config), model.device)


def power_law_fit(tokens: list[float], gaps: list[float]) -> tuple[float, float] | None:
    """(a, b) of gap ~= a * tokens^-b by least squares in log-log; None below two usable points."""
    points = [(math.log(t), math.log(g)) for t, g in zip(tokens, gaps) if t > 0 and g > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return math.exp(my - slope * mx), -slope


def tokens_for_gap(fit: tuple[float, float] | None, gap: float) -> float | None:
    """Tokens at which the fitted gap reaches ``gap`` (None without a decreasing fit)."""
    if fit is None or fit[1] <= 0:
        return None
    a, b = fit
    return (a / gap) ** (1.0 / b)
