"""Issue 15 on one GPU, inside a wall-time budget: the real teacher, its own data, bf16 KD, the results page.

Phases (each timed; every phase's results are written as soon as they exist, so a run cut short
still leaves its page):

1. Teacher: the GGUF converted to a model directory (as the worker's model store does), loaded fp32.
2. Data: the shipped prompts plus ``--prompts`` generated ones (data/prompt_templates.py, split by
   subject), answered greedily by the teacher through the worker's engine (Triton kernels, bf16, CUDA
   graphs on a GPU; torch on the CPU), plus the standard library's docstrings.
3. The teacher's own figures, and its self-agreement baseline (see ``self_agreement``): the top-1
   agreement target is 85% of that.
4. The ~50% depth-pruned student (block influence on calibration data, as the distiller does).
5. Throughput: a few bf16 KD steps (chunked fused LM-head loss); tokens/s, and from it the token
   budgets this run can afford and the curve the CPU runs predict for them, written before training.
6. Loss sweep at one small token budget: forward KL, reverse KL, JSD, forward KL with 25% on-policy
   steps, and hard labels only (the no-teacher baseline at the same budget). Scored on the
   calibration split, so choosing the loss never looks at the evaluation split.
7. The rest of the budget on the best KD loss; learning-curve points along the way.
8. Final scores on the evaluation split (and int8 / fp8 copies), a power-law fit of the curve and
   the tokens it predicts the targets need.

    # GPU (lead): PYTHONPATH=/tmp/site:common/src:services/worker/src:services/distiller/src \
    #   python3 bench/gpu_distill.py --gguf /tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf --budget-s 480
    .venv/bin/python bench/gpu_distill.py --smoke          # CPU, tiny random teacher, ~3 minutes
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.distill_gpu_parts import (  # noqa: E402
    Deadline,
    EvalSet,
    convert_gguf,
    eval_set,
    power_law_fit,
    quality,
    quantized_copy,
    self_agreement,
    tiny_teacher,
    tokens_for_gap,
    train,
)
from bench.distill_results import student_shapes  # noqa: E402
from bench.report import write_results  # noqa: E402
from radixfair.tokenization import PromptEncoder  # noqa: E402
from radixfair_distiller.data.batches import calibration_batches  # noqa: E402
from radixfair_distiller.data.bundle import prepare_data  # noqa: E402
from radixfair_distiller.data.engine_answers import AnswerEngineConfig, EngineAnswerer  # noqa: E402
from radixfair_distiller.data.splits import CALIBRATION, EVAL, SPLITS  # noqa: E402
from radixfair_distiller.model_dir import content_hash, load_llama  # noqa: E402
from radixfair_distiller.pruning import prune  # noqa: E402
from radixfair_distiller.recipe import DataSpec, DepthPruning, PruneSpec, parse_recipe  # noqa: E402

# The CPU runs' depth-kd points (bench/results/distill_results.md, _cpu_long.md, _cpu_320.md):
# token positions trained, perplexity / the teacher's. They give the predicted curve before training.
CPU_POINTS = ((40 * 8 * 128, 4.85), (160 * 8 * 128, 2.38), (320 * 8 * 128, 1.92))
SWEEP = (
    ("forward_kl", "forward_kl", 0.0, 0.0),
    ("reverse_kl", "reverse_kl", 0.0, 0.0),
    ("jsd", "jsd", 0.0, 0.0),
    ("forward_kl+on_policy", "forward_kl", 0.0, 0.25),
    ("hard_labels", "forward_kl", 1.0, 0.0),
)


@dataclass(frozen=True)
class Settings:
    seq_len: int
    batch_size: int
    response_tokens: int
    prompts: int
    text_max_files: int
    chunk_tokens: int
    learning_rate: float
    probe_steps: int
    eval_text: int
    eval_chat: int
    select_text: int
    select_chat: int
    exact_match_tokens: int
    calibration_sequences: int
    shipped_prompts: int  # of the hand-written set; 0 = all 215


GPU = Settings(256, 128, 128, 32768, 0, 4096, 6e-4, 8, 64, 256, 16, 128, 32, 64, 0)
SMOKE = Settings(64, 4, 8, 40, 20, 256, 1e-3, 3, 2, 4, 2, 4, 6, 4, 8)


def recipe_text(
    name: str,
    teacher: str,
    seed: int,
    keep: int,
    s: Settings,
    loss: str,
    hard: float,
    on_policy: float,
    tokens: int,
    precision: str,
) -> str:
    """The distiller recipe of a row: ``radixfair distill`` on it trains the same student."""
    return (
        f"name: {name}\nteacher: {teacher}\nseed: {seed}\n"
        f"prune:\n  depth: {{keep_layers: {keep}}}\n  calibration_sequences: {s.calibration_sequences}\n"
        f"distill:\n  tokens: {tokens}\n  warmup_tokens: {tokens // 50}\n  batch_size: {s.batch_size}\n"
        f"  learning_rate: {s.learning_rate}\n  precision: {precision}\n  checkpoint_every: 1000000\n"
        f"  chat_fraction: 0.5\n"
        f"  loss: {{kind: {loss}, hard_label_weight: {hard}, chunk_tokens: {s.chunk_tokens}}}\n"
        f"  on_policy: {{fraction: {on_policy}, max_new_tokens: 32}}\n"
        f"data: {{seq_len: {s.seq_len}, text_max_files: {s.text_max_files}, "
        f"chat_prompts: {s.shipped_prompts}, generated_prompts: {s.prompts}, "
        f"response_max_new_tokens: {s.response_tokens}}}\n"
        f"evaluate: {{text_sequences: {s.eval_text}, chat_prompts: {s.eval_chat}, "
        f"max_new_tokens: {s.exact_match_tokens}}}\n"
    )


class Page:
    """The results being built; ``write`` rewrites both files (called after every phase)."""

    def __init__(self, name: str, out: Path, meta: dict) -> None:
        self.name, self.out, self.meta = name, out, meta
        self.rows: list[dict] = []

    def write(self, notes: str = "") -> None:
        columns = [
            "row",
            "split",
            "loss",
            "tokens",
            "steps",
            "train_s",
            "parameters",
            "perplexity",
            "ppl_x_teacher",
            "top1_agreement",
            "top1_vs_baseline",
            "kl_to_teacher",
            "exact_match",
            "seed",
        ]
        notes = NOTES + "\n" + sections(self.meta, self.rows) if notes else sections(self.meta, self.rows)
        for r in self.rows:
            r.setdefault("seed", self.meta["seed"])
        write_results(self.name, self.rows, columns, self.meta, notes, results_dir=self.out)


def main() -> None:
    args = parse_args()
    deadline = Deadline(args.budget_s)
    s = SMOKE if args.smoke else GPU
    s = Settings(**{**asdict(s), **{k: v for k, v in vars(args).items() if k in asdict(s) and v is not None}})
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    work = Path(args.work_dir)
    page = Page(
        args.name or ("distill_results_gpu_smoke" if args.smoke else "distill_results_gpu"),
        Path(args.out),
        {
            "settings": asdict(s),
            "seed": args.seed,
            "budget_s": args.budget_s,
            "device": str(device),
            "phases": {},
        },
    )
    phases = page.meta["phases"]

    # 1. Teacher.
    started = time.monotonic()
    teacher_dir, teacher_name = teacher_directory(args, work)
    teacher = load_llama(teacher_dir, device)
    encoder = PromptEncoder(teacher_dir)
    phases["teacher_s"] = time.monotonic() - started
    page.meta["teacher"] = {"source": teacher_name, "layers": teacher.config.num_hidden_layers}

    # 2. Data through the engine.
    started = time.monotonic()
    engine_config = (
        AnswerEngineConfig(
            device="cuda",
            dtype="bfloat16",
            backend="triton",
            max_running_requests=256,
            num_pages=16384,
            max_batched_tokens=8192,
            cuda_graph_max_batch=256,
        )
        if device.type == "cuda"
        else AnswerEngineConfig(max_running_requests=16, num_pages=512)
    )
    spec = DataSpec(
        seq_len=s.seq_len,
        text_max_files=s.text_max_files,
        chat_prompts=s.shipped_prompts,
        generated_prompts=s.prompts,
        response_max_new_tokens=s.response_tokens,
    )
    try:
        answerer = EngineAnswerer(teacher_dir, engine_config)
        bundle = teacher_data(spec, encoder, teacher, teacher_dir, work, answerer, engine_config)
    except Exception as error:  # noqa: BLE001 (the Triton engine failing must not cost the whole run)
        if engine_config.backend != "triton":
            raise
        print(f"the Triton engine failed ({error!r}); answering with the torch backend", flush=True)
        page.meta["engine_fallback"] = repr(error)
        engine_config = replace(engine_config, backend="torch")
        answerer = EngineAnswerer(teacher_dir, engine_config)
        bundle = teacher_data(spec, encoder, teacher, teacher_dir, work, answerer, engine_config)
    phases["data_s"] = time.monotonic() - started
    page.meta["data"] = {
        "chat_examples": {split: len(bundle.chat[split]) for split in SPLITS},
        "text_tokens": {split: int(bundle.text[split].numel()) for split in SPLITS},
        "teacher_answer_tokens_generated": answerer.generated_tokens,
        "engine": asdict(engine_config),
        "engine_seconds": answerer.seconds,
        "engine_tokens_per_s": answerer.generated_tokens / answerer.seconds if answerer.seconds else None,
    }
    del answerer
    free(device)
    page.write()
    print(f"[{deadline.elapsed():.0f}s] data: {page.meta['data']}", flush=True)

    evaluation = eval_set(bundle, EVAL, s.eval_text, s.eval_chat, s.seq_len, s.exact_match_tokens)
    selection = eval_set(bundle, CALIBRATION, s.select_text, s.select_chat, s.seq_len, s.exact_match_tokens)

    # 3. Teacher figures and baseline.
    started = time.monotonic()
    teacher_eval = quality(teacher, teacher, evaluation)
    eval_cost = time.monotonic() - started
    baseline = self_agreement(teacher, evaluation)
    page.meta["self_agreement_baseline"] = {
        "value": baseline,
        "how": "teacher-forced on the held-out answers, the share of tokens where the teacher run in bf16 "
        "(the dtype it serves and wrote its data in) picks the fp32 teacher's argmax; against itself in one "
        "dtype it is 1.0 by definition. Target: student top-1 agreement >= 0.85 x this.",
    }
    teacher_row = row("teacher", EVAL, None, None, teacher, teacher_eval, teacher_eval, baseline)
    teacher_row["exact_match_note"] = "fp32 greedy vs its own bf16 engine answers"
    page.rows.append(teacher_row)
    for scheme in ("int8", "fp8"):
        copy_eval = quality(quantized_copy(teacher, scheme), teacher, evaluation, with_exact_match=False)
        page.rows.append(
            row(f"teacher-{scheme}", EVAL, None, None, teacher, copy_eval, teacher_eval, baseline)
        )
    phases["teacher_eval_s"] = time.monotonic() - started
    page.write()

    # 4. Prune.
    started = time.monotonic()
    keep, _ = student_shapes(teacher.config.to_dict(), 0.5)
    batches = calibration_batches(bundle, s.calibration_sequences, s.seq_len)
    initial, report = prune(teacher, PruneSpec(depth=DepthPruning(keep_layers=keep)), batches)
    phases["prune_s"] = time.monotonic() - started
    page.meta["student"] = {"keep_layers": keep, "kept": report.kept_layers, "config": report.config}

    def recipe(name: str, loss: str, hard: float, on_policy: float, tokens: int):
        # bf16 mixed precision on the GPU; fp32 on the CPU, which has no fast bf16 matmul.
        precision = "bfloat16" if device.type == "cuda" else "float32"
        text = recipe_text(name, teacher_name, args.seed, keep, s, loss, hard, on_policy, tokens, precision)
        return text, parse_recipe(text).distill

    # 5. Throughput probe.
    per_step = s.batch_size * s.seq_len
    _, probe_spec = recipe("probe", "forward_kl", 0.0, 0.0, s.probe_steps * per_step)
    probe = train(
        copy.deepcopy(initial),
        teacher,
        bundle,
        probe_spec,
        args.seed,
        s.seq_len,
        device,
        work / "probe",
        stop_at=time.monotonic() + max(deadline.left() * 0.1, 5),
    )
    timed = probe.step_seconds[2:] or probe.step_seconds
    rate = per_step / statistics.median(timed)
    page.meta["throughput"] = {
        "kd_tokens_per_s": rate,
        "precision": probe_spec.precision,
        "step_seconds": probe.step_seconds,
        "tokens_per_step": per_step,
    }
    del probe
    free(device)

    # Plan: the sweep takes sweep_share of what is left after reserving the final evaluations (the
    # student and its two quantized copies, ~2.6 teacher evaluations) and the learning-curve points
    # (4 on half the evaluation split, without exact match); each sweep row is scored too (~0.4).
    reserve = 2.6 * eval_cost + (8.0 if args.smoke else 20.0)
    curve_cost = 1.6 * eval_cost
    left = deadline.left() - reserve - curve_cost
    sweep_train_s = max(args.sweep_share * left - 0.4 * eval_cost * len(SWEEP), 0.0)
    sweep_tokens = max(per_step, int(sweep_train_s / len(SWEEP) * rate) // per_step * per_step)
    long_tokens = max(per_step, int((1 - args.sweep_share) * left * rate * 0.9) // per_step * per_step)
    cpu_fit = power_law_fit([t for t, _ in CPU_POINTS], [r - 1 for _, r in CPU_POINTS])
    page.meta["plan"] = {
        "seconds_left_for_training": left,
        "sweep_tokens_each": sweep_tokens,
        "long_run_tokens": long_tokens,
        "predicted_from_cpu_points": {
            "fit": "perplexity / teacher - 1 = a * tokens^-b over the CPU depth-kd runs",
            "a_b": cpu_fit,
            "ppl_x_teacher_at_sweep": 1 + cpu_fit[0] * sweep_tokens ** -cpu_fit[1] if cpu_fit else None,
            "ppl_x_teacher_at_long_run": 1 + cpu_fit[0] * long_tokens ** -cpu_fit[1] if cpu_fit else None,
            "tokens_for_1.3x": tokens_for_gap(cpu_fit, 0.3),
        },
    }
    page.write()
    print(f"[{deadline.elapsed():.0f}s] throughput {rate:,.0f} tok/s; plan {page.meta['plan']}", flush=True)

    # 6. Sweep (scored on the calibration split).
    # Every variant trains its whole token budget (the comparison is at one budget); only a variant
    # running into the time kept for the long run (half its planned share) is cut, and its row says so.
    sweep_end = deadline.start + deadline.seconds - reserve - 0.5 * (1 - args.sweep_share) * left
    sweep_rows = []
    sweep_rates: dict[str, float] = {}  # tokens/s each variant really trained at (on-policy is slower)
    for name, loss, hard, on_policy in SWEEP:
        text, distill_spec = recipe(f"sweep-{name.replace('+', '-')}", loss, hard, on_policy, sweep_tokens)
        result = train(
            copy.deepcopy(initial),
            teacher if hard < 1.0 else None,
            bundle,
            distill_spec,
            args.seed,
            s.seq_len,
            device,
            work / name,
            stop_at=sweep_end,
        )
        scores = quality(result.student, teacher, selection, with_exact_match=False)
        sweep_row = row(
            f"sweep: {name}",
            CALIBRATION,
            name,
            result,
            result.student,
            scores,
            quality_cache(page, selection, teacher),
            baseline,
            text,
        )
        sweep_rows.append((name, hard, sweep_row))
        sweep_rates[name] = result.tokens_done / result.seconds if result.seconds > 0 else rate
        page.rows.append(sweep_row)
        page.write()
        print(f"[{deadline.elapsed():.0f}s] {name}: {scores}", flush=True)
        del result
        free(device)
    kd = [(n, r) for n, h, r in sweep_rows if h < 1.0]
    best = max(kd, key=lambda item: (item[1]["top1_agreement"], -item[1]["kl_to_teacher"]))[0]
    page.meta["chosen_loss"] = {"loss": best, "by": "highest top-1 agreement on the calibration split"}

    # 7. The long run on the best loss, with learning-curve points.
    name, loss, hard, on_policy = next(v for v in SWEEP if v[0] == best)
    left = deadline.left() - reserve - curve_cost
    long_rate = min(rate, sweep_rates.get(best, rate))
    long_tokens = max(per_step, int(left * long_rate * 0.95) // per_step * per_step)
    text, distill_spec = recipe("depth-kd-gpu", loss, hard, on_policy, long_tokens)
    total_steps = distill_spec.schedule(s.seq_len).total_steps
    marks = sorted({max(1, total_steps // d) for d in (16, 8, 4, 2)} - {total_steps})
    curve_set = EvalSet(
        evaluation.text_windows[: max(1, len(evaluation.text_windows) // 2)],
        evaluation.chat[: max(1, len(evaluation.chat) // 2)],
        evaluation.max_new_tokens,
        evaluation.eos_token_id,
        evaluation.pad_token_id,
    )
    result = train(
        copy.deepcopy(initial),
        teacher,
        bundle,
        distill_spec,
        args.seed,
        s.seq_len,
        device,
        work / "long",
        stop_at=deadline.start + deadline.seconds - reserve,
        evaluate_at=set(marks),
        evaluate=lambda m: quality(m, teacher, curve_set, with_exact_match=False),
    )

    # 8. Final scores, quantized copies, fits.
    final = quality(result.student, teacher, evaluation)
    page.rows.append(
        row(
            f"depth-kd ({best}), ~50%",
            EVAL,
            best,
            result,
            result.student,
            final,
            teacher_eval,
            baseline,
            text,
        )
    )
    for scheme in ("int8", "fp8"):
        scores = quality(quantized_copy(result.student, scheme), teacher, evaluation, with_exact_match=False)
        page.rows.append(
            row(
                f"depth-kd ({best}) {scheme}",
                EVAL,
                best,
                result,
                result.student,
                scores,
                teacher_eval,
                baseline,
            )
        )
    curve = [{"tokens": p.tokens, "train_s": p.seconds, "loss": p.loss, **p.metrics} for p in result.curve]
    curve.append(
        {
            "tokens": result.tokens_done,
            "train_s": result.seconds,
            "loss": result.losses[-1] if result.losses else None,
            **{k: final[k] for k in ("perplexity", "kl_to_teacher", "top1_agreement")},
        }
    )
    ppl_fit = power_law_fit(
        [c["tokens"] for c in curve], [c["perplexity"] / teacher_eval["perplexity"] - 1 for c in curve]
    )
    agree_fit = power_law_fit([c["tokens"] for c in curve], [1 - c["top1_agreement"] for c in curve])
    page.meta["learning_curve"] = curve
    page.meta["curve_note"] = (
        "points before the last are on half the evaluation split, mid-schedule (LR not annealed)"
    )
    page.meta["extrapolation"] = {
        "ppl_fit_a_b": ppl_fit,
        "tokens_for_ppl_1.3x": tokens_for_gap(ppl_fit, 0.3),
        "agreement_fit_a_b": agree_fit,
        "tokens_for_top1_0.85_baseline": tokens_for_gap(agree_fit, 1 - 0.85 * baseline),
        "cut_by_deadline": result.cut_by_deadline,
        "steps": [result.steps_done, result.total_steps],
    }
    page.meta["targets"] = targets(page.rows, baseline)
    phases["total_s"] = deadline.elapsed()
    page.write(notes=NOTES)
    print(f"[{deadline.elapsed():.0f}s] final {final}; targets {page.meta['targets']}", flush=True)


NOTES = """
Rows: `split` says which held-out data scored the row (sweep rows: calibration, so choosing the loss
never sees the evaluation split). `tokens` is token positions trained (batch x seq_len a step,
padding included), `train_s` the GPU seconds of training. Each row's recipe (in the JSON) reproduces
it with `radixfair distill`, bar the wall-time cut noted in `extrapolation.cut_by_deadline`.
Baseline of top-1 agreement: `self_agreement_baseline` in the JSON (how it is computed is stated
there). Exact match: the student's fp32 greedy answer against the teacher's engine-written one,
first `exact_match_tokens` tokens.
"""


def sections(meta: dict, rows: list[dict]) -> str:
    """The page below the table: targets, plan and prediction, learning curve, extrapolation, data."""
    out = []
    if "targets" in meta:
        out += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        out += [
            f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in meta["targets"]
        ]
    if "self_agreement_baseline" in meta:
        base = meta["self_agreement_baseline"]
        out += ["", f"Top-1 agreement baseline: {base['value']:.4f}: {base['how']}"]
    if "throughput" in meta and "plan" in meta:
        plan, rate = meta["plan"], meta["throughput"]["kd_tokens_per_s"]
        pred = plan["predicted_from_cpu_points"]
        out += [
            "",
            "## Before training: throughput and the predicted curve",
            "",
            f"KD training ({meta['throughput']['precision']}, fused chunked loss): {rate:,.0f} tokens/s "
            f"({meta['throughput']['tokens_per_step']} tokens a step). Planned: "
            f"{plan['sweep_tokens_each']:,} tokens per sweep variant, ~{plan['long_run_tokens']:,} for the "
            f"long run. {pred['fit']}: "
            f"a, b = {pred['a_b']}; predicted perplexity x teacher "
            f"{pred['ppl_x_teacher_at_sweep']:.2f} at the sweep budget, "
            f"{pred['ppl_x_teacher_at_long_run']:.2f} at the long run; 1.3x predicted at "
            f"{pred['tokens_for_1.3x']:,.0f} tokens.",
        ]
    if meta.get("learning_curve"):
        out += [
            "",
            "## Learning curve of the long run (evaluation split)",
            "",
            "| tokens | train_s | loss | perplexity | top1_agreement | kl_to_teacher |",
            "|---|---|---|---|---|---|",
        ]
        for c in meta["learning_curve"]:
            out.append(
                f"| {c['tokens']:,} | {c['train_s']:.1f} | {c['loss']:.4f} | {c['perplexity']:.2f} | "
                f"{c['top1_agreement']:.4f} | {c['kl_to_teacher']:.4f} |"
            )
        out += ["", meta.get("curve_note", "")]
    if "extrapolation" in meta:
        e = meta["extrapolation"]
        out += [
            "",
            "## What a larger budget would predict",
            "",
            f"Power law over the curve: perplexity x teacher - 1 = a t^-b with (a, b) = {e['ppl_fit_a_b']}, "
            f"reaching 1.3x at {_tokens(e['tokens_for_ppl_1.3x'])}; 1 - top-1 agreement = a t^-b with "
            f"(a, b) = {e['agreement_fit_a_b']}, reaching 0.85 x baseline at "
            f"{_tokens(e['tokens_for_top1_0.85_baseline'])} (Minitron's reference: pruning + "
            f"distillation needs up to 40x fewer tokens than training from scratch). Steps done / planned "
            f"{e['steps']}, cut by the wall-time budget: {e['cut_by_deadline']}.",
        ]
    if "data" in meta:
        d = meta["data"]
        out += [
            "",
            f"Data: chat examples per split {d['chat_examples']}, docstring tokens per split "
            f"{d['text_tokens']}; the teacher wrote {d['teacher_answer_tokens_generated']:,} answer tokens "
            f"through the worker's engine at {d['engine_tokens_per_s'] or 0:,.0f} tokens/s.",
        ]
    final = next((r for r in rows if r.get("recipe") and not r["row"].startswith("sweep")), None)
    if final:
        out += [
            "",
            f"Recipe of `{final['row']}` (each row's is in the JSON):",
            "",
            "```yaml",
            final["recipe"].strip(),
            "```",
        ]
    return "\n".join(out)


def _tokens(value: float | None) -> str:
    return "no point (no decreasing fit)" if value is None else f"~{value:,.0f} tokens"


def row(name, split, loss, result, model, scores, teacher_scores, baseline, recipe_yaml=None) -> dict:
    out = {
        "row": name,
        "split": split,
        "loss": loss,
        "tokens": result.tokens_done if result else None,
        "steps": f"{result.steps_done}/{result.total_steps}" if result else None,
        "train_s": result.seconds if result else None,
        "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        **scores,
        "ppl_x_teacher": scores["perplexity"] / teacher_scores["perplexity"],
        "top1_vs_baseline": scores["top1_agreement"] / baseline,
    }
    if recipe_yaml:
        out["recipe"] = recipe_yaml
    if result is not None and result.losses:
        out["loss_first_last"] = [result.losses[0], result.losses[-1]]
    return out


def quality_cache(page: Page, selection: EvalSet, teacher) -> dict:
    """The teacher's perplexity on the calibration windows (sweep rows' ratio denominator), once."""
    if "teacher_calibration" not in page.meta:
        page.meta["teacher_calibration"] = quality(teacher, teacher, selection, with_exact_match=False)
    return page.meta["teacher_calibration"]


def targets(rows: list[dict], baseline: float) -> list[dict]:
    by = {r["row"]: r for r in rows}
    final = next(r for r in rows if r["row"].startswith("depth-kd (") and r["row"].endswith("~50%"))
    checks = [
        (
            "depth student perplexity <= 1.3x teacher",
            f"{final['ppl_x_teacher']:.3f}x",
            final["ppl_x_teacher"] <= 1.3,
        ),
        (
            "depth student top-1 >= 0.85 x baseline",
            f"{final['top1_vs_baseline']:.3f}",
            final["top1_vs_baseline"] >= 0.85,
        ),
    ]
    for scheme, limit in (("int8", 0.02), ("fp8", 0.03)):
        for base in ("teacher", final["row"]):
            quant = by.get(f"{base}-{scheme}") or by.get(f"{base.replace(', ~50%', '')} {scheme}")
            if quant:
                change = quant["perplexity"] / by[base]["perplexity"] - 1
                checks.append(
                    (
                        f"{base} {scheme}: perplexity change < {limit:.0%}",
                        f"{change:+.2%}",
                        abs(change) < limit,
                    )
                )
    sweep = {r["row"]: r for r in rows if r["row"].startswith("sweep: ")}
    hard = sweep.get("sweep: hard_labels")
    if hard:
        kd = max(
            (r for k, r in sweep.items() if k != "sweep: hard_labels"), key=lambda r: r["top1_agreement"]
        )
        checks.append(
            (
                "KD beats hard labels at the same budget (top-1, calibration split)",
                f"{kd['top1_agreement']:.3f} vs {hard['top1_agreement']:.3f}",
                kd["top1_agreement"] > hard["top1_agreement"],
            )
        )
    return [{"target": t, "measured": m, "met": bool(ok)} for t, m, ok in checks]


def teacher_directory(args, work: Path) -> tuple[Path, str]:
    if args.smoke:
        from radixfair_worker.model_store import PACKAGED_MODEL, resolve_model_dir

        tokenizer = resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser())
        return tiny_teacher(work / "tiny-teacher", tokenizer), "tiny random 4-layer Llama (--smoke)"
    if args.teacher_dir:
        return Path(args.teacher_dir), args.teacher_dir
    return convert_gguf(Path(args.gguf), work / "teacher"), "smollm2-135m-instruct"


def teacher_data(spec, encoder, teacher, teacher_dir, work, answerer, engine_config):
    return prepare_data(
        spec,
        encoder,
        teacher,
        content_hash(teacher_dir),
        work / "data",
        answer=answerer.answer,
        answer_batch=8192,
        answer_tag=f"-engine-{engine_config.dtype}",
    )


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", help="the teacher's GGUF file (converted once into --work-dir)")
    source.add_argument("--teacher-dir", help="a converted teacher model directory")
    source.add_argument("--smoke", action="store_true", help="CPU check on a tiny random teacher")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-time budget of the whole run")
    parser.add_argument(
        "--sweep-share", type=float, default=0.35, help="share of training time for the sweep"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--work-dir", default="/tmp/gpu_distill")
    parser.add_argument(
        "--name", default=None, help="results file name (default distill_results_gpu[_smoke])"
    )
    for name in ("prompts", "batch_size", "seq_len", "response_tokens", "chunk_tokens"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    args = parser.parse_args()
    if args.budget_s is None:
        args.budget_s = 300.0 if args.smoke else 480.0
    return args


if __name__ == "__main__":
    main()
