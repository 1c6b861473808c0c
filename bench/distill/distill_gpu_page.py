"""The results page of bench/distill/gpu_distill.py: rows, the sections below the table, and the targets.

The page is rewritten after every phase (``Page.write``), so a run cut short or failing late still
leaves every figure it measured; a phase that failed is named under "Errors" with its last lines.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.report import write_results

COLUMNS = [
    "row",
    "split",
    "loss",
    "tokens",
    "steps",
    "train_s",
    "parameters",
    "size_mb",
    "perplexity",
    "ppl_x_teacher",
    "top1_agreement",
    "top1_vs_baseline",
    "kl_to_teacher",
    "exact_match",
    "decode_b1_tok_s",
    "decode_b128_tok_s",
    "seed",
]

NOTES = """
Rows: `split` says which held-out data scored the row (sweep rows: calibration, so choosing the loss
never sees the evaluation split). `tokens` is token positions trained (batch x seq_len a step,
padding included), `train_s` the GPU seconds of training. Each row's recipe (in the JSON) reproduces
it with `radixfair distill`, bar a wall-time cut (`steps` done/planned shows one) and the data cap
(the teacher answered the first `data.prompts_answered` prompts of the recipe's set, in the order
they were offered; a recipe run answers them all). int8 / fp8 rows:
the same weights round-tripped through the worker's per-channel format (what QuantizedLinear
computes with); rows from calls after the format's version 2 have the embedding (the tied LM head)
in int8 in fp8 checkpoints too, and `fp8 (format v1)` is the same student with an e4m3 embedding.
`size_mb`: the checkpoint as the distiller writes it (fp32 for full precision; int8 /
fp8 values plus fp32 scales). Decode columns: the worker's engine (build_engine: Triton, bf16, CUDA
graphs; quantized checkpoints run quantized), 128-token random prompts, 128 greedy tokens a request,
decode steps only; speed depends on shape and format only, so students are timed right after
pruning. Exact match: the model's fp32 greedy answer against the teacher's engine-written one,
first `exact_match_tokens` tokens.
"""

# The row-name suffix of a student trained on hard labels only (gpu_distill --loss hard_labels): the
# same student and budget as the KD row it is judged against.
HARD_LABELS_SUFFIX = " (hard labels)"


class Page:
    """The results being built; ``write`` rewrites both files (called after every phase).

    With ``merge_into`` (an earlier call's page JSON), every write also writes that page with this
    call's rows and sections added (bench/distill/distill_gpu_merge.py), under the earlier page's name.
    """

    def __init__(self, name: str, out: Path, meta: dict, merge_into: Path | None = None) -> None:
        self.name, self.out, self.meta = name, out, meta
        self.rows: list[dict] = []
        self.merge_into = merge_into
        self.base_meta: dict | None = None
        if merge_into is not None:
            if merge_into.stem == name:
                raise ValueError(f"the call's own page {name!r} would overwrite the page it merges into")
            if merge_into.exists():
                self.base_meta = json.loads(merge_into.read_text())
            else:
                print(f"!! {merge_into} not found: this call's page is written alone", flush=True)

    def write(self) -> None:
        for r in self.rows:
            r.setdefault("seed", self.meta["seed"])
        try:
            notes = NOTES + "\n" + sections(self.meta, self.rows)
        except Exception as error:  # noqa: BLE001 (a rendering slip must not end the run; the JSON has it all)
            notes = NOTES + f"\n(the sections below the table failed to render: {error!r})"
        write_results(self.name, self.rows, COLUMNS, self.meta, notes, results_dir=self.out)
        if self.base_meta is not None and self.merge_into is not None:
            from bench.distill.distill_gpu_merge import call_name, write_merged

            try:
                part = json.loads((self.out / f"{self.name}.json").read_text())
                base_name = self.merge_into.stem
                write_merged(self.base_meta, part, call_name(self.name, base_name), base_name, self.out)
            except Exception as error:  # noqa: BLE001 (the call's own page is written; merge again here)
                print(f"!! merging into {self.merge_into} failed: {error!r}", flush=True)

    @contextmanager
    def phase(self, name: str, critical: bool = False) -> Iterator[None]:
        """Times a phase into ``meta["phases"]``; the page is written after it, whatever happens.

        A failing phase is recorded under ``meta["errors"]``; only a ``critical`` one (nothing after it
        can run without it) re-raises.
        """
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            yield
        except Exception as error:  # noqa: BLE001 (recorded; the later phases still run)
            self.meta.setdefault("errors", {})[name] = traceback.format_exc(limit=6)[-3000:]
            print(f"!! phase {name} failed: {error!r}", flush=True)
            if critical:
                raise
        finally:
            self.meta["phases"][name + "_s"] = round(time.monotonic() - started, 2)
            self.write()


def row(name, split, loss, result, parameters: int, scores, teacher_scores, baseline, recipe=None) -> dict:
    out = {
        "row": name,
        "split": split,
        "loss": loss,
        "tokens": result.tokens_done if result else None,
        "steps": f"{result.steps_done}/{result.total_steps}" if result else None,
        "train_s": result.seconds if result else None,
        "parameters": parameters,
        **scores,
        "ppl_x_teacher": _ratio(scores["perplexity"], teacher_scores["perplexity"]),
        "top1_vs_baseline": _ratio(scores["top1_agreement"], baseline),
    }
    if recipe:
        out["recipe"] = recipe
    if result is not None and result.losses:
        out["loss_first_last"] = [result.losses[0], result.losses[-1]]
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def sections(meta: dict, rows: list[dict]) -> str:
    """Below the table: targets, baseline, plan and prediction, curves, extrapolation, data, errors."""
    out = []
    if meta.get("teacher", {}).get("random"):
        out += ["", "**The teacher has RANDOM weights in this run: the quality figures mean nothing.**"]
    if "targets" in meta:
        out += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        out += [
            f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in meta["targets"]
        ]
    if "self_agreement_baseline" in meta:
        base = meta["self_agreement_baseline"]
        out += ["", f"Top-1 agreement baseline: {base['value']:.4f}: {base['how']}"]
    if "phases" in meta:
        budget = meta.get("budget", {})
        out += [
            "",
            "## Wall time per phase (s)",
            "",
            ", ".join(f"{k}: {v}" for k, v in meta["phases"].items())
            + f" (budget: {budget.get('total_s')} s in all; caps: {budget})",
        ]
    if meta.get("torchrun"):
        from bench.distill.distill_gpu_merge import torchrun_section

        out += ["", "## torchrun against one process"] + torchrun_section(meta["torchrun"])
    if meta.get("decode"):
        out += _decode(meta)
    if "throughput" in meta and "plan" in meta:
        out += _plan(meta)
    for kind, curve in meta.get("learning_curves", {}).items():
        out += [
            "",
            f"## Learning curve: {kind} student (evaluation split)",
            "",
            "| tokens | train_s | loss | perplexity | top1_agreement | kl_to_teacher |",
            "|---|---|---|---|---|---|",
        ]
        for c in curve:
            out.append(
                f"| {c['tokens']:,} | {c['train_s']:.1f} | {c['loss']:.4f} | {c['perplexity']:.3f} | "
                f"{c['top1_agreement']:.4f} | {c['kl_to_teacher']:.4f} |"
            )
        out += ["", "Points before the last: half the evaluation split, mid-schedule (LR not annealed)."]
    for kind, e in meta.get("extrapolation", {}).items():
        out += [
            "",
            f"## What a larger budget would predict: {kind} student",
            "",
            f"Power law over the curve: perplexity x teacher - 1 = a t^-b with (a, b) = {e['ppl_fit_a_b']}, "
            f"reaching 1.3x at {_tokens(e['tokens_for_ppl_1.3x'])}; 1 - top-1 agreement = a t^-b with "
            f"(a, b) = {e['agreement_fit_a_b']}, reaching 0.85 x baseline at "
            f"{_tokens(e['tokens_for_top1_0.85_baseline'])}; at this run's rate "
            f"({e['kd_tokens_per_s']:,.0f} tokens/s) that is {_hours(e)} of one H200 (Minitron's reference: "
            f"pruning + distillation needs up to 40x fewer tokens than training from scratch). Steps done / "
            f"planned {e['steps']}, cut by the wall-time cap: {e['cut_by_deadline']}.",
        ]
    if "data" in meta:
        d = meta["data"]
        out += [
            "",
            f"Data: chat examples per split {d['chat_examples']}, docstring tokens per split "
            f"{d['text_tokens']}; the teacher wrote {d['teacher_answer_tokens_generated']:,} answer tokens "
            f"to {d['prompts_answered']:,} of {d['prompts_offered']:,} prompts through the worker's engine "
            f"at "
            f"{d['engine_tokens_per_s'] or 0:,.0f} tokens/s (budget spent: {d['budget_spent']}).",
        ]
    final = next((r for r in rows if r.get("recipe") and not r["row"].startswith("sweep")), None)
    if final:
        out += ["", f"Recipe of `{final['row']}` (each row's is in the JSON):", "", "```yaml"]
        out += [final["recipe"].strip(), "```"]
    if meta.get("terminated"):
        out += [
            "",
            f"**The run was stopped from outside ({meta['terminated']}); the rows are what finished.**",
        ]
    if meta.get("errors"):
        out += ["", "## Errors (the phase named failed; the rows above are what ran)", ""]
        for name, text in meta["errors"].items():
            out += [f"- `{name}`: `{text.strip().splitlines()[-1][:300]}`"]
    return "\n".join(out)


def _decode(meta: dict) -> list[str]:
    config = meta.get("decode_config", {})
    batches = config.get("batches", [])
    out = [
        "",
        "## Decode speed through the worker's engine",
        "",
        f"{config.get('prompt_len')}-token prompts, {config.get('new_tokens')} new tokens a request, decode "
        "steps only. `(triton kernel)`: the int8 checkpoint with its projections run by "
        "kernels/int8_matmul.py, patched in for this measurement only (the worker does not wire it yet).",
        "",
        "| model | " + " | ".join(f"batch {b} tok/s | ms/step" for b in batches) + " |",
        "|---|" + "---|---|" * len(batches),
    ]
    for name, figures in meta["decode"].items():
        cells = [
            f"{figures.get(f'b{b}_tok_s', 0):,.0f} | {figures.get(f'b{b}_ms_step', 0):.2f}" for b in batches
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    if meta.get("decode_skipped"):
        out += ["", f"Not timed (the decode phase's cap): {', '.join(meta['decode_skipped'])}."]
    return out


def _plan(meta: dict) -> list[str]:
    plan, rate = meta["plan"], meta["throughput"]["kd_tokens_per_s"]
    pred = plan["predicted_from_cpu_points"]
    at = pred.get("ppl_x_teacher_at", {})
    return [
        "",
        "## Before training: throughput and the predicted curve",
        "",
        f"KD training ({meta['throughput']['precision']}, fused chunked loss): {rate:,.0f} tokens/s "
        f"({meta['throughput']['tokens_per_step']:,} tokens a step). Planned: {plan['sweep_tokens_each']:,} "
        f"tokens per sweep variant (cap {plan['sweep_cap_s_each']:.0f} s each), "
        f"{plan['depth_tokens']:,} for the depth student, {plan['width_tokens']:,} for the width student. "
        f"{pred['fit']}: a, b = {pred['a_b']}; predicted perplexity x teacher: "
        + ", ".join(f"{v:.2f} at {k}" for k, v in at.items())
        + f"; 1.3x predicted at {_tokens(pred['tokens_for_1.3x'])}.",
    ]


def _tokens(value: float | None) -> str:
    return "no point (no decreasing fit)" if value is None else f"~{value:,.0f} tokens"


def _hours(e: dict) -> str:
    needed = [t for t in (e["tokens_for_ppl_1.3x"], e["tokens_for_top1_0.85_baseline"]) if t is not None]
    if not needed or not e["kd_tokens_per_s"]:
        return "unknown"
    return f"~{max(needed) / e['kd_tokens_per_s'] / 3600:.2f} h"


def targets(rows: list[dict], baseline: float, decode: dict | None = None) -> list[dict]:
    """Each target of issue 15 the rows (and the decode figures) can answer, measured and met or not."""
    by = {r["row"]: r for r in rows}
    checks = []
    for name, figures in (decode or {}).items():
        base = name.removesuffix(" int8 (triton kernel)")
        if base == name or base not in (decode or {}):
            continue
        for batch, rule in ((1, "faster than bf16"), (128, "no slower than bf16")):
            new, old = figures.get(f"b{batch}_tok_s"), decode[base].get(f"b{batch}_tok_s")
            if new and old:
                ok = new > old if batch == 1 else new >= 0.97 * old
                checks.append((f"{name}: {rule} at batch {batch}", f"{new / old:.2f}x", ok))
    for kind in ("depth", "width"):
        final = by.get(f"{kind} student")
        if final is None:
            continue
        checks.append(
            (
                f"{kind} student perplexity <= 1.3x teacher",
                f"{final['ppl_x_teacher']:.3f}x",
                final["ppl_x_teacher"] <= 1.3,
            )
        )
        checks.append(
            (
                f"{kind} student top-1 >= 0.85 x baseline",
                f"{final['top1_vs_baseline']:.3f}",
                final["top1_vs_baseline"] >= 0.85,
            )
        )
    for scheme, limit in (("int8", 0.02), ("fp8", 0.03)):
        for base in ("teacher", "depth student", "width student"):
            quant = by.get(f"{base} {scheme}")
            if quant and base in by:
                change = quant["perplexity"] / by[base]["perplexity"] - 1
                checks.append(
                    (
                        f"{base} {scheme}: perplexity change < {limit:.0%}",
                        f"{change:+.2%}",
                        abs(change) < limit,
                    )
                )
                b1, base_b1 = quant.get("decode_b1_tok_s"), by[base].get("decode_b1_tok_s")
                b128, base_b128 = quant.get("decode_b128_tok_s"), by[base].get("decode_b128_tok_s")
                if b1 and base_b1:
                    checks.append(
                        (
                            f"{base} {scheme}: faster than bf16 at batch 1",
                            f"{b1 / base_b1:.2f}x",
                            b1 > base_b1,
                        )
                    )
                if b128 and base_b128:
                    checks.append(
                        (
                            f"{base} {scheme}: no slower at batch 128",
                            f"{b128 / base_b128:.2f}x",
                            b128 >= 0.97 * base_b128,
                        )
                    )
    teacher, depth = by.get("teacher"), by.get("depth student")
    if teacher and depth and teacher.get("decode_b1_tok_s") and depth.get("decode_b1_tok_s"):
        layers = depth.get("layers_kept_share")
        speedup = depth["decode_b1_tok_s"] / teacher["decode_b1_tok_s"]
        if layers:
            checks.append(
                (
                    "depth student decodes faster in proportion to its layers (batch 1)",
                    f"{speedup:.2f}x vs {1 / layers:.2f}x layers",
                    speedup >= 0.8 / layers,
                )
            )
    for kind in ("depth", "width"):
        kd, hard = by.get(f"{kind} student"), by.get(f"{kind} student{HARD_LABELS_SUFFIX}")
        if kd and hard:
            checks.append(
                (
                    f"{kind} student: KD beats hard labels at the same budget (perplexity, top-1)",
                    f"{kd['perplexity']:.1f} vs {hard['perplexity']:.1f}, "
                    f"{kd['top1_agreement']:.3f} vs {hard['top1_agreement']:.3f}",
                    kd["perplexity"] < hard["perplexity"] and kd["top1_agreement"] > hard["top1_agreement"],
                )
            )
    sweep = {r["row"]: r for r in rows if r["row"].startswith("sweep: ")}
    hard = sweep.get("sweep: hard_labels")
    kd_rows = [r for k, r in sweep.items() if k != "sweep: hard_labels"]
    if hard and kd_rows:
        kd = max(kd_rows, key=lambda r: r["top1_agreement"])
        checks.append(
            (
                "KD beats hard labels at the same budget (top-1, calibration split)",
                f"{kd['top1_agreement']:.3f} vs {hard['top1_agreement']:.3f}",
                kd["top1_agreement"] > hard["top1_agreement"],
            )
        )
    return [{"target": t, "measured": m, "met": bool(ok)} for t, m, ok in checks]
