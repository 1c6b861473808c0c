"""The distiller's results table: teacher, pruned + distilled students, their int8 copies, and the baseline.

Rows (SmolLM2-135M-Instruct teacher by default):
- teacher, and the teacher at int8;
- depth-kd: about half the teacher's parameters by dropping layers, then distilled; and at int8;
- width-kd: the same size by narrowing the MLP and dropping a KV group per layer, distilled; and at int8;
- depth-hard: the depth-pruned student trained on hard labels only (no teacher), same budget.

Every row is a real distiller job (the JobRunner the gRPC service uses) in
``--work-dir``; a run that is interrupted resumes its unfinished job, and
finished artifacts are reused, when run again with the same arguments.

Budgets (``--budget``; single fields can be overridden by flags):
- smoke:    a few steps on a few prompts; checks the path end to end, numbers mean nothing;
- cpu-hour: what fits in about an hour on a 2-core CPU (from measured step times, see BUDGETS);
- gpu:      a larger run for one GPU.

    .venv/bin/python bench/distill/distill_results.py --budget smoke
    .venv/bin/python bench/distill/distill_results.py --budget cpu-hour [--steps 150] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import markdown_table, write_results  # noqa: E402


@dataclass(frozen=True)
class Budget:
    steps: int
    batch_size: int
    seq_len: int
    learning_rate: float
    warmup_steps: int
    checkpoint_every: int
    calibration_sequences: int
    chat_prompts: int  # 0 = the whole shipped set
    text_max_files: int  # 0 = the whole standard library
    response_max_new_tokens: int
    eval_text_sequences: int
    eval_chat_prompts: int
    eval_max_new_tokens: int
    decode_tokens: int
    on_policy_fraction: float


BUDGETS = {
    "smoke": Budget(
        steps=2,
        batch_size=2,
        seq_len=96,
        learning_rate=3e-4,
        warmup_steps=0,
        checkpoint_every=1,
        calibration_sequences=2,
        chat_prompts=24,
        text_max_files=20,
        response_max_new_tokens=12,
        eval_text_sequences=2,
        eval_chat_prompts=3,
        eval_max_new_tokens=8,
        decode_tokens=8,
        on_policy_fraction=0.0,
    ),
    # Measured here (2 shared AMD EPYC cores, 2 threads): a distillation step of 8 x 128 tokens for the
    # ~67M student with the 135M teacher takes ~20 s (teacher forward ~7 s, student backward ~9 s,
    # the three LM-head products ~5 s); hard-label steps ~13 s. Teacher answers for the 215 prompts,
    # 7 evaluations and pruning take ~12 min, which leaves ~40 steps per student in an hour.
    "cpu-hour": Budget(
        steps=40,
        batch_size=8,
        seq_len=128,
        learning_rate=5e-4,
        warmup_steps=4,
        checkpoint_every=10,
        calibration_sequences=16,
        chat_prompts=0,
        text_max_files=0,
        response_max_new_tokens=48,
        eval_text_sequences=16,
        eval_chat_prompts=16,
        eval_max_new_tokens=24,
        decode_tokens=32,
        on_policy_fraction=0.0,
    ),
    "gpu": Budget(
        steps=2000,
        batch_size=16,
        seq_len=256,
        learning_rate=3e-4,
        warmup_steps=100,
        checkpoint_every=200,
        calibration_sequences=64,
        chat_prompts=0,
        text_max_files=0,
        response_max_new_tokens=128,
        eval_text_sequences=64,
        eval_chat_prompts=32,
        eval_max_new_tokens=32,
        decode_tokens=64,
        on_policy_fraction=0.25,
    ),
}


def student_shapes(teacher: dict, fraction: float) -> tuple[int, dict]:
    """(layers kept by depth pruning, width-pruning shape) for ~``fraction`` of the teacher's parameters."""
    hidden, vocab = teacher["hidden_size"], teacher["vocab_size"]
    head_dim = teacher.get("head_dim") or hidden // teacher["num_attention_heads"]
    embedding = vocab * hidden * (1 if teacher.get("tie_word_embeddings") else 2) + hidden

    def layer(heads: int, kv: int, inter: int) -> int:
        return 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim + 3 * hidden * inter + 2 * hidden

    layers = teacher["num_hidden_layers"]
    full = layer(teacher["num_attention_heads"], teacher["num_key_value_heads"], teacher["intermediate_size"])
    target = fraction * (embedding + layers * full)
    keep = max(1, round((target - embedding) / full))
    depth_params = embedding + keep * full
    group = teacher["num_attention_heads"] // teacher["num_key_value_heads"]
    kv = max(1, round(teacher["num_key_value_heads"] * 2 / 3))
    attention_only = layer(kv * group, kv, 0)
    per_layer = (depth_params - embedding) / layers
    inter = max(32, round((per_layer - attention_only) / (3 * hidden) / 32) * 32)
    inter = min(inter, teacher["intermediate_size"])
    return keep, {"intermediate_size": inter, "num_attention_heads": kv * group, "num_key_value_heads": kv}


def recipes(prefix: str, teacher: str, teacher_config: dict, budget: Budget, seed: int) -> dict[str, str]:
    keep, width = student_shapes(teacher_config, 0.5)
    data = (
        f"data: {{seq_len: {budget.seq_len}, text_max_files: {budget.text_max_files}, "
        f"chat_prompts: {budget.chat_prompts}, response_max_new_tokens: {budget.response_max_new_tokens}}}\n"
        f"evaluate: {{text_sequences: {budget.eval_text_sequences}, "
        f"chat_prompts: {budget.eval_chat_prompts}, max_new_tokens: {budget.eval_max_new_tokens}, "
        f"decode_tokens: {budget.decode_tokens}}}\n"
    )

    # Recipes name the budget in tokens; the budget table keeps steps, the unit its timings were taken in.
    per_step = budget.batch_size * budget.seq_len

    def distill(hard_label_weight: float, on_policy: float) -> str:
        return (
            f"distill:\n  tokens: {budget.steps * per_step}\n  batch_size: {budget.batch_size}\n"
            f"  learning_rate: {budget.learning_rate}\n  warmup_tokens: {budget.warmup_steps * per_step}\n"
            f"  checkpoint_every: {budget.checkpoint_every}\n  chat_fraction: 0.5\n"
            f"  loss: {{kind: forward_kl, temperature: 1.0, hard_label_weight: {hard_label_weight}}}\n"
            f"  on_policy: {{fraction: {on_policy}, max_new_tokens: 32}}\n"
        )

    head = f"teacher: {teacher}\nseed: {seed}\n"
    depth = (
        f"prune:\n  depth: {{keep_layers: {keep}}}\n  calibration_sequences: {budget.calibration_sequences}\n"
    )
    width_block = (
        f"prune:\n  width: {{intermediate_size: {width['intermediate_size']}, "
        f"num_attention_heads: {width['num_attention_heads']}, "
        f"num_key_value_heads: {width['num_key_value_heads']}}}\n"
        f"  calibration_sequences: {budget.calibration_sequences}\n"
    )
    return {
        "teacher": f"name: {prefix}-teacher\n{head}quantize: [int8]\n{data}",
        "depth-kd": f"name: {prefix}-depth-kd\n{head}{depth}{distill(0.0, budget.on_policy_fraction)}"
        f"quantize: [int8]\n{data}",
        "width-kd": f"name: {prefix}-width-kd\n{head}{width_block}{distill(0.0, budget.on_policy_fraction)}"
        f"quantize: [int8]\n{data}",
        "depth-hard": f"name: {prefix}-depth-hard\n{head}{depth}{distill(1.0, 0.0)}{data}",
    }


async def run_recipe(runner, text: str) -> tuple[list, float]:
    """Runs (or resumes, or reuses) one recipe; returns its artifacts and the job's wall seconds."""
    from radixfair_distiller.recipe import parse_recipe

    name = parse_recipe(text).name
    existing = runner.artifacts.get(name)
    if existing is not None:
        if existing.manifest.recipe_yaml != text:
            raise SystemExit(f"{name} exists in the work dir with another recipe; use a fresh --work-dir")
        job = runner.store.load(existing.manifest.job_id)
        names = [
            a.manifest.name for a in runner.artifacts.all() if a.manifest.job_id == existing.manifest.job_id
        ]
        return [runner.artifacts.get(n) for n in names], _job_seconds(runner, job.job_id if job else "")
    unfinished = [r for r in runner.store.all() if r.name == name and not r.state.is_terminal]
    job_id = unfinished[0].job_id if unfinished else (await asyncio.to_thread(runner.submit, text)).job_id
    last = None
    async for event in runner.events(job_id).follow():
        if event.stage != "distill" or event.step % 10 == 0 or event.message:
            print(
                f"  [{name}] {event.state.value} {event.stage} {event.step}/{event.total_steps} "
                f"loss {event.loss:.4f} {event.message}",
                flush=True,
            )
        last = event
    if last is None or last.state.value != "succeeded":
        raise SystemExit(
            f"{name}: job {job_id} ended {last.state.value if last else '?'}: {last.message if last else ''}"
        )
    return [runner.artifacts.get(n) for n in last.artifacts], _job_seconds(runner, job_id)


def _job_seconds(runner, job_id: str) -> float:
    if not job_id:
        return 0.0
    events = runner.events(job_id).since(0)
    # Sum of running spans: a job resumed after an interruption does not count the downtime.
    total, start = 0.0, None
    for event in events:
        if event.message in ("started", "resumed after a restart"):
            start = event.time
        elif start is not None and (event.state.is_terminal or event.message.startswith("interrupted")):
            total += event.time - start
            start = None
    return total


def check_targets(rows: dict[str, dict]) -> list[dict]:
    teacher = rows["teacher"]
    checks = []

    def add(target: str, value: str, ok: bool) -> None:
        checks.append({"target": target, "measured": value, "met": "yes" if ok else "NO"})

    if "depth-kd" not in rows:
        return checks
    kd = rows["depth-kd"]
    ratio = kd["top1_agreement"] / teacher["top1_agreement"]
    add(
        "depth-kd top-1 agreement >= 85% of the teacher's (1.0 against itself)", f"{ratio:.1%}", ratio >= 0.85
    )
    ppl = kd["perplexity"] / teacher["perplexity"]
    add("depth-kd perplexity <= 1.3x the teacher's", f"{ppl:.2f}x", ppl <= 1.3)
    for name in [n for n in ("teacher", "depth-kd", "width-kd") if n in rows]:
        change = rows[f"{name}-int8"]["perplexity"] / rows[name]["perplexity"] - 1
        add(f"{name}: int8 changes perplexity by < 2%", f"{change:+.2%}", abs(change) < 0.02)
    if "depth-hard" not in rows:
        return checks
    hard = rows["depth-hard"]
    beats = kd["top1_agreement"] > hard["top1_agreement"] and kd["kl_to_teacher"] < hard["kl_to_teacher"]
    add(
        "depth-kd beats depth-hard (same budget): higher agreement, lower KL",
        f"agreement {kd['top1_agreement']:.3f} vs {hard['top1_agreement']:.3f}, "
        f"KL {kd['kl_to_teacher']:.3f} vs {hard['kl_to_teacher']:.3f}",
        beats,
    )
    return checks


async def main_async(args) -> None:
    import torch

    from radixfair_distiller.config import DistillerConfig
    from radixfair_distiller.runner import JobRunner
    from radixfair_model_format.model_store import resolve_model_dir

    torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    overrides = {k: v for k, v in vars(args).items() if k in Budget.__dataclass_fields__ and v is not None}
    budget = replace(budget, **overrides)
    config = DistillerConfig(work_dir=args.work_dir, device=args.device, model_cache_dir=args.model_cache_dir)
    teacher_dir = resolve_model_dir(args.teacher, args.model_cache_dir.expanduser())
    teacher_config = json.loads((teacher_dir / "config.json").read_text())
    texts = recipes(args.prefix or args.budget, args.teacher, teacher_config, budget, args.seed)
    if args.only:
        # The teacher row stays: every target is relative to it.
        texts = {key: text for key, text in texts.items() if key == "teacher" or key in args.only}
    if args.print_recipes:
        for key, text in texts.items():
            print(f"# ---- {key}\n{text}")
        return
    runner = JobRunner(config)
    runner.start()
    metrics: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    try:
        for key, text in texts.items():
            print(f"== {key}", flush=True)
            artifacts, seconds[key] = await run_recipe(runner, text)
            for artifact in artifacts:
                suffix = artifact.manifest.quantization
                row = key if suffix == "none" else f"{key}-{suffix}"
                metrics[row] = dict(artifact.manifest.evaluation)
            if key == "teacher":
                # The base artifact of this recipe is a plain copy; the teacher row is the teacher itself.
                metrics["teacher"] = dict(artifacts[0].manifest.teacher_evaluation)
    finally:
        await asyncio.to_thread(runner.stop)
    order = [
        "teacher",
        "teacher-int8",
        "depth-kd",
        "depth-kd-int8",
        "width-kd",
        "width-kd-int8",
        "depth-hard",
    ]
    rows = [{"model": name, **metrics[name]} for name in order if name in metrics]
    for row in rows:
        row["job_minutes"] = round(seconds.get(row["model"].removesuffix("-int8"), 0.0) / 60, 1)
    checks = check_targets(metrics)
    write(args, budget, texts, rows, checks)


def write(args, budget: Budget, texts: dict, rows: list[dict], checks: list[dict]) -> None:
    from radixfair.distill_client import evaluation_table

    name = ("distill_results" if args.budget != "smoke" else "distill_results_smoke") + args.name
    table = evaluation_table([(r["model"], r) for r in rows])
    minutes = sum({r["model"].removesuffix("-int8"): r["job_minutes"] for r in rows}.values())
    notes = "\n".join(
        [
            "## Evaluation table",
            "",
            table,
            "",
            "## Targets (issue 5)",
            "",
            markdown_table(checks, ["target", "measured", "met"]),
            "",
            f"Budget `{args.budget}`: {json.dumps(asdict(budget))}; torch threads {args.threads}; "
            f"device {args.device}; teacher {args.teacher}; jobs took {minutes:.1f} min in all "
            "(job_minutes: wall time of the job that made the row, shared by a model and its int8 copy).",
            "",
            "perplexity: held-out standard-library docstrings (this Python's). KL to teacher and top-1 "
            "agreement: teacher-forced on the teacher's greedy answers to held-out prompts of the shipped "
            "set (the teacher scores 0 and 1.0 against itself, its self-agreement baseline). exact match: "
            "greedy answer equal to the teacher's, token for token. decode tok/s: one request on the worker "
            "engine (fp32 torch backend, CPU), quantized rows running QuantizedLinear.",
            "",
            "Smoke budgets check the path end to end; their quality numbers mean nothing."
            if args.budget == "smoke"
            else "",
        ]
    )
    columns = [
        "model",
        "parameters",
        "size_bytes",
        "perplexity",
        "kl_to_teacher",
        "top1_agreement",
        "exact_match",
        "decode_tokens_per_second",
        "job_minutes",
    ]
    path = write_results(
        name,
        rows,
        columns,
        {"budget": args.budget, "budget_fields": asdict(budget), "recipes": texts, "targets": checks},
        notes,
    )
    print(table)
    print(markdown_table(checks, ["target", "measured", "met"]))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: bench/scratch/distill-<budget>")
    parser.add_argument("--model-cache-dir", type=Path, default=Path("~/.cache/radixfair/models"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="", help="artifact name prefix (default: the budget name)")
    parser.add_argument("--print-recipes", action="store_true", help="print the recipes and exit")
    parser.add_argument(
        "--only", nargs="*", default=[], choices=["depth-kd", "width-kd", "depth-hard"], help="rows to run"
    )
    parser.add_argument("--name", default="", help="suffix of the results file name")
    for field in Budget.__dataclass_fields__.values():
        kind = float if field.type in ("float", float) else int
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=kind, default=None)
    args = parser.parse_args()
    if args.work_dir is None:
        args.work_dir = Path(__file__).resolve().parents[1] / "scratch" / f"distill-{args.budget}"
    started = time.monotonic()
    asyncio.run(main_async(args))
    if not args.print_recipes:
        print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
