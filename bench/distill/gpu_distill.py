"""Issue 15 on one GPU inside one wall-time budget: the teacher's own data, bf16 KD, the results page.

Every phase has a cap taken from the command line, and the page (bench/distill/distill_gpu_page.py) is
rewritten after each phase, so a run cut short or failing late keeps what it measured:

1. teacher: --teacher-dir (a converted model directory, e.g. /tmp/smollm2-real), else --gguf
   (converted by the worker's model store), else random weights in SmolLM2-135M's shape with the
   tokenizer of --tokenizer-dir (the page then says the quality figures mean nothing).
2. data (cap --data-s seconds or --data-tokens answer tokens, whichever first): the hand-written
   prompts, then the generated ones, answered greedily by the teacher through the worker's engine
   (Triton, bf16, CUDA graphs on a GPU), plus standard-library docstrings. Answering stops taking
   prompts when the cap is reached; the answers are the first prompts' (data/engine_answers.py).
3. teacher: its scores, its int8 / fp8 copies, and the self-agreement baseline (85% of which is the
   top-1 target; how it is computed is on the page).
4. pruning: the ~50% depth student (block influence) and, with --width-share > 0, the ~50% width
   student, both from the pruning's importance scores on calibration data.
5. probe: a few bf16 KD steps; tokens/s.
6. decode (cap --decode-s): each model's decode tokens/s at batch 1 and 128 through the worker's
   engine (teacher, students, their int8 / fp8 checkpoints).
7. plan: the token budgets the time left affords and the curve the CPU runs predict, printed and
   written before any of it is spent.
8. sweep: forward KL, reverse KL, JSD, forward KL with 25% on-policy steps, and hard labels only, at
   one token budget (each capped in time); scored on the calibration split.
9. depth student, then width student: the best KD loss, a token budget sized to finish inside its
   time cap (the cap is a backstop), learning-curve points, final scores and int8 / fp8 copies.
10. fits: a power law over each curve, the tokens it predicts the targets need, the targets.

    # GPU (lead), see bench/distill/gpu_distill_session.sh for the device calls:
    python3 bench/distill/gpu_distill.py --teacher-dir /tmp/smollm2-real --time-budget-s 540
    # A later call for one student, added to the committed page (session phase "width"):
    python3 bench/distill/gpu_distill.py --teacher-dir /tmp/smollm2-real --students width --sweep "" \
        --no-teacher-quantized --text-max-files 0 --code-fraction 0.5 --name distill_results_gpu_width \
        --merge-into bench/results/distill_results_gpu.json --time-budget-s 400
    .venv/bin/python bench/distill/gpu_distill.py --smoke --time-budget-s 120   # CPU, tiny random teacher
"""

from __future__ import annotations

import argparse
import copy
import gc
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.distill.distill_decode_speed import DecodeSpeedConfig, decode_speed  # noqa: E402
from bench.distill.distill_gpu_page import HARD_LABELS_SUFFIX, Page, row, targets  # noqa: E402
from bench.distill.distill_gpu_parts import (  # noqa: E402
    Deadline,
    EvalSet,
    convert_gguf,
    eval_set,
    power_law_fit,
    quality,
    quantized_copy,
    random_smollm2_teacher,
    self_agreement,
    tiny_teacher,
    tokens_for_gap,
    train,
)
from bench.distill.distill_results import student_shapes  # noqa: E402
from radixfair.tokenization import PromptEncoder  # noqa: E402
from radixfair_distiller.data.batches import calibration_batches  # noqa: E402
from radixfair_distiller.data.bundle import prepare_data  # noqa: E402
from radixfair_distiller.data.chat import shipped_prompts  # noqa: E402
from radixfair_distiller.data.engine_answers import (  # noqa: E402
    AnswerBudget,
    AnswerEngineConfig,
    EngineAnswerer,
)
from radixfair_distiller.data.splits import CALIBRATION, EVAL, SPLITS, TRAIN  # noqa: E402
from radixfair_distiller.model_dir import content_hash, is_model_dir, load_llama, save_llama, weights_bytes  # noqa: E402
from radixfair_distiller.pruning import prune  # noqa: E402
from radixfair_distiller.quantize import quantize_model_dir  # noqa: E402
from radixfair_distiller.recipe import DataSpec, DepthPruning, PruneSpec, WidthPruning, parse_recipe  # noqa: E402

# The CPU runs' depth-kd points (bench/results/distill_results.md, _cpu_long.md, _cpu_320.md):
# token positions trained, perplexity / the teacher's. They give the predicted curve before training.
CPU_POINTS = ((40 * 8 * 128, 4.85), (160 * 8 * 128, 2.38), (320 * 8 * 128, 1.92))
# name -> (loss kind, hard-label weight, on-policy fraction)
VARIANTS = {
    "forward_kl": ("forward_kl", 0.0, 0.0),
    "reverse_kl": ("reverse_kl", 0.0, 0.0),
    "jsd": ("jsd", 0.0, 0.0),
    "hard_labels": ("forward_kl", 1.0, 0.0),
    "forward_kl+on_policy": ("forward_kl", 0.0, 0.25),
}


@dataclass(frozen=True)
class Settings:
    """Sizes of the data, batches and evaluation sets (GPU and --smoke defaults below)."""

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
    code_fraction: float  # of the text rows, drawn from the stdlib's code (0: docstrings only)


GPU = Settings(256, 128, 128, 32768, 400, 4096, 6e-4, 6, 48, 128, 16, 64, 32, 64, 0, 0.0)
SMOKE = Settings(64, 4, 8, 40, 20, 256, 1e-3, 3, 2, 4, 2, 4, 6, 4, 8, 0.0)


@dataclass(frozen=True)
class Budget:
    """Wall-time caps (seconds) and token caps of the phases, from the command line."""

    total_s: float
    data_s: float
    data_tokens: int
    decode_s: float
    sweep_share: float
    sweep_tokens: int | None
    depth_tokens: int | None
    width_tokens: int | None
    width_share: float
    variants: tuple[str, ...]
    students: tuple[str, ...]  # which students this call prunes and trains ("depth", "width")


def recipe_text(
    name: str,
    teacher: str,
    seed: int,
    prune_yaml: str,
    s: Settings,
    variant: str,
    tokens: int,
    precision: str,
    prompts: int,
) -> str:
    """The distiller recipe of a row: ``radixfair distill`` on it trains the same student."""
    loss, hard, on_policy = VARIANTS[variant]
    # Only a run that draws code names it, so the earlier rows' recipes read as they did.
    code_share = f"  code_fraction: {s.code_fraction}\n" if s.code_fraction else ""
    code_data = ", code_text: true" if s.code_fraction else ""
    return (
        f"name: {name}\nteacher: {teacher}\nseed: {seed}\n"
        f"prune:\n  {prune_yaml}\n  calibration_sequences: {s.calibration_sequences}\n"
        f"distill:\n  tokens: {tokens}\n  warmup_tokens: {tokens // 50}\n  batch_size: {s.batch_size}\n"
        f"  learning_rate: {s.learning_rate}\n  precision: {precision}\n  checkpoint_every: 1000000\n"
        f"  chat_fraction: 0.5\n{code_share}"
        f"  loss: {{kind: {loss}, hard_label_weight: {hard}, chunk_tokens: {s.chunk_tokens}}}\n"
        f"  on_policy: {{fraction: {on_policy}, max_new_tokens: 32}}\n"
        f"data: {{seq_len: {s.seq_len}, text_max_files: {s.text_max_files}, "
        f"chat_prompts: {s.shipped_prompts}, generated_prompts: {prompts}, "
        f"response_max_new_tokens: {s.response_tokens}, teacher_answers: engine{code_data}}}\n"
        f"evaluate: {{text_sequences: {s.eval_text}, chat_prompts: {s.eval_chat}, "
        f"max_new_tokens: {s.exact_match_tokens}}}\n"
    )


class Run:
    """The state the phases share: teacher, data, students, measured rates and the page."""

    def __init__(self, args: argparse.Namespace, s: Settings, budget: Budget) -> None:
        self.args, self.s, self.budget = args, s, budget
        self.deadline = Deadline(budget.total_s)
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.work = Path(args.work_dir)
        self.page = Page(
            args.name or ("distill_results_gpu_smoke" if args.smoke else "distill_results_gpu"),
            Path(args.out),
            {
                "settings": asdict(s),
                "seed": args.seed,
                "budget": asdict(budget),
                "device": str(self.device),
                "phases": {},
            },
            merge_into=Path(args.merge_into) if args.merge_into else None,
        )
        self.meta = self.page.meta
        # kind ("depth", "width") -> (student, its prune recipe line, what pruning kept)
        self.students: dict[str, tuple[torch.nn.Module, str, dict]] = {}
        self.decode: dict[str, dict[str, float]] = {}
        self.sizes: dict[str, int] = {}
        self.prompts_answered = 0
        self.chosen = args.loss
        self.rates: dict[str, float] = {}
        self.fp32_training = False

    def log(self, text: str) -> None:
        print(f"[{self.deadline.elapsed():6.1f}s] {text}", flush=True)

    @property
    def precision(self) -> str:
        # bf16 mixed precision on the GPU; fp32 on the CPU, which has no fast bf16 matmul (and on the
        # GPU too if bf16 training failed in the probe: slower, but the run still has its rows).
        if self.fp32_training:
            return "float32"
        return "bfloat16" if self.device.type == "cuda" else "float32"

    @property
    def per_step(self) -> int:
        return self.s.batch_size * self.s.seq_len

    def whole_steps(self, tokens: float) -> int:
        return max(self.per_step, int(tokens) // self.per_step * self.per_step)

    # -- 1. teacher ---------------------------------------------------------------------------
    def load_teacher(self) -> None:
        args = self.args
        random_weights = False
        if args.smoke:
            from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir

            tokenizer = resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser())
            teacher_dir, name = (
                tiny_teacher(self.work / "tiny-teacher", tokenizer),
                "tiny random 4-layer Llama (--smoke)",
            )
        elif args.teacher_dir and is_model_dir(Path(args.teacher_dir)):
            teacher_dir, name = Path(args.teacher_dir), "smollm2-135m-instruct"
        elif args.gguf and Path(args.gguf).exists():
            teacher_dir, name = convert_gguf(Path(args.gguf), self.work / "teacher"), "smollm2-135m-instruct"
        else:
            self.log(f"no teacher at --teacher-dir {args.teacher_dir} / --gguf {args.gguf}: RANDOM weights")
            teacher_dir = random_smollm2_teacher(self.work / "random-teacher", Path(args.tokenizer_dir))
            name, random_weights = "random weights in SmolLM2-135M's shape", True
        self.teacher_dir, self.teacher_name = teacher_dir, name
        self.teacher = load_llama(teacher_dir, self.device)
        self.encoder = PromptEncoder(teacher_dir)
        self.meta["teacher"] = {
            "source": name,
            "dir": str(teacher_dir),
            "random": random_weights,
            "layers": self.teacher.config.num_hidden_layers,
        }

    # -- 2. data ------------------------------------------------------------------------------
    def make_data(self) -> None:
        s, b = self.s, self.budget
        cuda = self.device.type == "cuda"
        config = (
            AnswerEngineConfig(
                device="cuda",
                dtype="bfloat16",
                backend="triton",
                max_running_requests=256,
                num_pages=16384,
                max_batched_tokens=8192,
                cuda_graph_max_batch=256,
                refill_at=self.args.refill_at,
            )
            if cuda
            else AnswerEngineConfig(max_running_requests=16, num_pages=512)
        )
        spec = DataSpec(
            seq_len=s.seq_len,
            text_max_files=s.text_max_files,
            chat_prompts=s.shipped_prompts,
            generated_prompts=s.prompts,
            response_max_new_tokens=s.response_tokens,
            teacher_answers="engine",
            code_text=s.code_fraction > 0,
        )
        stop_at = time.monotonic() + b.data_s
        # The hand-written prompts (the held-out chat of every split) are answered whatever the cap.
        budget = AnswerBudget(b.data_tokens, stop_at, min_prompts=len(shipped_prompts(s.shipped_prompts)))

        def progress(answered: int, tokens: int, seconds: float) -> None:
            self.log(
                f"  data: {answered:,} answers, {tokens:,} tokens, {tokens / max(seconds, 1e-9):,.0f} tok/s"
            )

        def answer_all(engine_config: AnswerEngineConfig):
            answerer = EngineAnswerer(self.teacher_dir, engine_config, budget, progress, 5.0 if cuda else 2.0)
            self.log(f"  engine built ({engine_config.backend}, {engine_config.dtype})")
            bundle = prepare_data(
                spec,
                self.encoder,
                self.teacher,
                content_hash(self.teacher_dir),
                self.work / "data",
                answer=answerer.answer,
                answer_batch=16384,
                answer_tag=f"-engine-{engine_config.dtype}",
            )
            return answerer, bundle

        try:
            answerer, self.bundle = answer_all(config)
        except Exception as error:  # noqa: BLE001 (the Triton engine failing must not cost the whole run)
            if config.backend != "triton":
                raise
            self.log(f"the Triton engine failed ({error!r}); answering with the torch backend")
            self.meta["engine_fallback"] = repr(error)
            config = replace(config, backend="torch", cuda_graph_max_batch=0)
            answerer, self.bundle = answer_all(config)
        self.prompts_answered = sum(len(self.bundle.chat[split]) for split in SPLITS)
        self.meta["data"] = {
            "chat_examples": {split: len(self.bundle.chat[split]) for split in SPLITS},
            "text_tokens": {split: int(self.bundle.text[split].numel()) for split in SPLITS},
            "code_tokens": int(self.bundle.code.numel()) if self.bundle.code is not None else 0,
            "prompts_offered": len(shipped_prompts(s.shipped_prompts)) + s.prompts,
            "prompts_answered": self.prompts_answered,
            "budget_spent": answerer.budget_spent,
            "teacher_answer_tokens_generated": answerer.generated_tokens,
            "engine": asdict(config),
            "engine_seconds": answerer.seconds,
            "engine_tokens_per_s": answerer.generated_tokens / answerer.seconds if answerer.seconds else None,
            "admission_rounds": answerer.refills,
        }
        del answerer
        free(self.device)
        self.evaluation = eval_set(
            self.bundle, EVAL, s.eval_text, s.eval_chat, s.seq_len, s.exact_match_tokens
        )
        self.selection = eval_set(
            self.bundle, CALIBRATION, s.select_text, s.select_chat, s.seq_len, s.exact_match_tokens
        )
        half = lambda items: items[: max(1, len(items) // 2)]  # noqa: E731
        e = self.evaluation
        self.curve_set = EvalSet(
            half(e.text_windows), half(e.chat), e.max_new_tokens, e.eos_token_id, e.pad_token_id
        )
        self.log(f"data: {self.meta['data']}")

    # -- 3. teacher scores --------------------------------------------------------------------
    def score_teacher(self) -> None:
        started = time.monotonic()
        self.teacher_eval = quality(self.teacher, self.teacher, self.evaluation)
        self.eval_cost = time.monotonic() - started
        self.baseline = self_agreement(self.teacher, self.evaluation)
        self.meta["teacher_eval"] = self.teacher_eval
        self.meta["self_agreement_baseline"] = {
            "value": self.baseline,
            "how": "teacher-forced on the held-out answers the teacher wrote, the share of answer tokens "
            "where "
            "the teacher run in bf16 (the dtype it serves and wrote its data in) picks the fp32 teacher's "
            "argmax. Against itself in one dtype it is 1.0 by definition; this is what rounding alone "
            "costs. Target: student top-1 agreement (against the fp32 teacher) >= 0.85 x this.",
        }
        self.meta["eval_seconds"] = self.eval_cost
        params = count(self.teacher)
        teacher_row = row(
            "teacher", EVAL, None, None, params, self.teacher_eval, self.teacher_eval, self.baseline
        )
        teacher_row["exact_match_note"] = "fp32 greedy vs its own bf16 engine answers"
        self.page.rows.append(teacher_row)
        warm = []
        for scheme in ("int8", "fp8") if self.args.teacher_quantized else ():
            copy_of = quantized_copy(self.teacher, scheme)
            started = time.monotonic()
            scores = quality(copy_of, self.teacher, self.evaluation, with_exact_match=False)
            warm.append(time.monotonic() - started)
            self.page.rows.append(
                row(f"teacher {scheme}", EVAL, None, None, params, scores, self.teacher_eval, self.baseline)
            )
        # The first evaluation pays one-time warm-up (kernels, allocator); the planning cost is a
        # warm one, with the exact-match generation counted as 60% on top of the scores.
        if not warm:  # no quantized copies scored: time a second, warm evaluation of the teacher
            started = time.monotonic()
            quality(self.teacher, self.teacher, self.evaluation, with_exact_match=False)
            warm.append(time.monotonic() - started)
        self.eval_cost = min(self.eval_cost, 1.6 * min(warm))
        self.meta["eval_seconds"] = self.eval_cost
        self.log(f"teacher {self.teacher_eval}, baseline {self.baseline:.4f}, eval {self.eval_cost:.1f}s")

    # -- 4. pruning ---------------------------------------------------------------------------
    def prune_students(self, kinds: tuple[str, ...]) -> None:
        config = self.teacher.config.to_dict()
        keep, width = student_shapes(config, 0.5)
        batches = calibration_batches(self.bundle, self.s.calibration_sequences, self.s.seq_len)
        for kind in kinds:
            if kind == "depth":
                spec, text = (
                    PruneSpec(depth=DepthPruning(keep_layers=keep)),
                    f"depth: {{keep_layers: {keep}}}",
                )
            else:
                spec = PruneSpec(width=WidthPruning(**width))
                text = "width: {" + ", ".join(f"{k}: {v}" for k, v in width.items()) + "}"
            with self.page.phase(f"prune_{kind}", critical=kind == kinds[0]):
                student, report = prune(self.teacher, spec, batches)
                self.students[kind] = (
                    student,
                    text,
                    {"kept_layers": report.kept_layers, "config": report.config},
                )
                self.meta.setdefault("students", {})[kind] = {
                    "parameters": count(student),
                    "kept_layers": report.kept_layers,
                    "config": report.config,
                    "layer_importance": report.layer_importance,
                }
                self.log(f"{kind} student: {count(student):,} parameters, {report.config}")

    # -- 5. probe -----------------------------------------------------------------------------
    @property
    def first_student(self) -> tuple[torch.nn.Module, str, dict]:
        """The student the probe and the sweep train: depth when this call has it, else width."""
        return next(iter(self.students.values()))

    def probe(self) -> None:
        student, prune_yaml, _ = self.first_student
        spec = self.spec("probe", prune_yaml, "forward_kl", self.s.probe_steps * self.per_step)
        result = train(
            copy.deepcopy(student),
            self.teacher,
            self.bundle,
            spec,
            self.args.seed,
            self.s.seq_len,
            self.device,
            self.work / "probe",
            stop_at=time.monotonic() + max(0.08 * self.deadline.left(), 5.0),
        )
        timed = result.step_seconds[2:] or result.step_seconds
        self.rate = self.per_step / statistics.median(timed)
        self.meta["throughput"] = {
            "kd_tokens_per_s": self.rate,
            "precision": spec.precision,
            "step_seconds": result.step_seconds,
            "tokens_per_step": self.per_step,
            "student": next(iter(self.students)),
            "note": "forward KL; the first two steps (warm-up) are left out of the median",
        }
        self.log(f"KD training: {self.rate:,.0f} tokens/s")
        del result
        free(self.device)

    # -- 6. decode speed ----------------------------------------------------------------------
    def decode_speeds(self) -> None:
        cuda = self.device.type == "cuda"
        config = DecodeSpeedConfig(
            batches=(1, 128) if cuda else (1, 8),
            prompt_len=128 if cuda else 16,
            new_tokens=128 if cuda else 8,
            device=str(self.device),
        )
        self.meta["decode_config"] = asdict(config)
        models = self.work / "models"
        dirs = {"teacher": self.teacher_dir}
        for kind, (student, _, _) in self.students.items():
            dirs[f"{kind} student"] = save_llama(student, models / kind, self.teacher_dir)
        # Most telling first: the cap may leave the last ones out. "(triton kernel)": GPU only.
        patched = [" int8 (triton kernel)"] if self.device.type == "cuda" else []
        order = [
            f"{base}{suffix}" for base in ("teacher", "depth student") for suffix in ["", " int8", *patched]
        ]
        order += ["teacher fp8", "depth student fp8"]
        width = [f"width student{suffix}" for suffix in ("", " int8", *patched, " fp8")]
        # A call without the depth student (the width call) times its own student first, then the
        # teacher in bf16 as this machine's reference; the earlier call's page has the rest.
        order = [*width, "teacher"] if "depth" not in self.students else order + width
        stop_at = time.monotonic() + self.budget.decode_s
        last = 0.0  # seconds the previous model took: the next one is assumed to take as long
        for name in order:
            kernel = name.endswith(" (triton kernel)")
            plain = name.removesuffix(" (triton kernel)")
            scheme = "int8" if plain.endswith("int8") else "fp8" if plain.endswith("fp8") else ""
            base = plain.removesuffix(" int8").removesuffix(" fp8")
            if base not in dirs:
                continue
            if time.monotonic() + last > stop_at:
                self.meta.setdefault("decode_skipped", []).append(name)
                continue
            started = time.monotonic()
            try:
                path = dirs[base]
                if scheme:
                    path = models / plain.replace(" ", "-")
                    if not is_model_dir(path):
                        path = quantize_model_dir(dirs[base], path, scheme)
                self.sizes[name] = weights_bytes(path)
                self.decode[name] = decode_speed(path, config, int8_kernel=kernel)
                self.log(f"decode {name}: {self.decode[name]}")
            except Exception as error:  # noqa: BLE001 (one model failing must not cost the others)
                self.meta.setdefault("errors", {})[f"decode {name}"] = repr(error)[-2000:]
                self.log(f"decode {name} failed: {error!r}")
            last = time.monotonic() - started
            self.meta["decode"] = self.decode
            self.merge_decode()
            self.page.write()

    def merge_decode(self) -> None:
        """Copies decode speed and size into the rows of the same model (rows may come later)."""
        big = max(DecodeSpeedConfig().batches) if self.device.type == "cuda" else 8
        for r in self.page.rows:
            name = r["row"]
            if name in self.decode:
                r["decode_b1_tok_s"] = self.decode[name].get("b1_tok_s")
                r["decode_b128_tok_s"] = self.decode[name].get(f"b{big}_tok_s")
            if name in self.sizes:
                r["size_mb"] = self.sizes[name] / 1e6

    # -- 7. plan ------------------------------------------------------------------------------
    def student_reserve(self) -> float:
        """Seconds a student needs after training: final and train-data scores, 3 quantized copies, curve."""
        return (4.6 + 4 * 0.35) * self.eval_cost + (2.0 if self.args.smoke else 6.0)

    def plan(self) -> None:
        b = self.budget
        kinds = [k for k in ("depth", "width") if k in self.students]
        reserve = len(kinds) * self.student_reserve() + (2.0 if self.args.smoke else 8.0)
        left = self.deadline.left() - reserve
        variants = b.variants
        sweep_s = b.sweep_share * left
        cap_each = max(sweep_s / max(len(variants), 1) - 0.3 * self.eval_cost, 1.0)
        sweep_tokens = self.whole_steps(self.rate * cap_each * 0.85)
        if b.sweep_tokens:
            sweep_tokens = min(sweep_tokens, self.whole_steps(b.sweep_tokens))
        if not variants:
            sweep_s = 0.0
        long_s = left - sweep_s
        share = b.width_share if "depth" in kinds else 1.0
        width_s = long_s * share if "width" in kinds else 0.0
        depth_tokens = self.whole_steps(self.rate * (long_s - width_s) * 0.9) if "depth" in kinds else 0
        if b.depth_tokens:
            depth_tokens = min(depth_tokens, self.whole_steps(b.depth_tokens))
        width_tokens = self.whole_steps(self.rate * width_s * 0.9) if width_s else 0
        if b.width_tokens and width_tokens:
            width_tokens = min(width_tokens, self.whole_steps(b.width_tokens))
        self.sweep_tokens, self.sweep_cap_each = sweep_tokens, cap_each
        self.sweep_end = time.monotonic() + sweep_s
        cpu_fit = power_law_fit([t for t, _ in CPU_POINTS], [r - 1 for _, r in CPU_POINTS])
        budgets = [("sweep", sweep_tokens if variants else 0), ("depth", depth_tokens)]
        budgets += [("width", width_tokens), ("10x depth", 10 * depth_tokens)]
        budgets = [(label, tokens) for label, tokens in budgets if tokens]
        at = {}
        if cpu_fit:
            for label, tokens in budgets:
                at[f"{label} ({tokens:,} tokens)"] = 1 + cpu_fit[0] * tokens ** -cpu_fit[1]
        self.meta["plan"] = {
            "seconds_left_for_training": left,
            "reserved_after_training_s": reserve,
            "sweep_tokens_each": sweep_tokens,
            "sweep_cap_s_each": cap_each,
            "depth_tokens": depth_tokens,
            "width_tokens": width_tokens,
            "predicted_seconds": {
                "sweep": len(variants) * sweep_tokens / self.rate,
                "depth": depth_tokens / self.rate,
                "width": width_tokens / self.rate,
            },
            "predicted_from_cpu_points": {
                "fit": "perplexity / teacher - 1 = a * tokens^-b over the CPU depth-kd runs",
                "a_b": cpu_fit,
                "ppl_x_teacher_at": at,
                "tokens_for_1.3x": tokens_for_gap(cpu_fit, 0.3),
            },
        }
        earlier = self.page.base_meta.get("extrapolation", {}).get("depth") if self.page.base_meta else None
        if earlier and width_tokens:
            # The earlier call's depth curve on the H200 is the better prior for this call's width run.
            ppl, agree = earlier["ppl_fit_a_b"], earlier["agreement_fit_a_b"]
            self.meta["plan"]["predicted_from_depth_gpu_curve"] = {
                "fit": "the earlier call's depth-student power laws, at this call's width budget",
                "tokens": width_tokens,
                "ppl_x_teacher": 1 + ppl[0] * width_tokens ** -ppl[1] if ppl else None,
                "top1_agreement": 1 - agree[0] * width_tokens ** -agree[1] if agree else None,
            }
        self.log(f"plan: {self.meta['plan']}")

    def spec(self, name: str, prune_yaml: str, variant: str, tokens: int):
        return parse_recipe(self.recipe(name, prune_yaml, variant, tokens)).distill

    def recipe(self, name: str, prune_yaml: str, variant: str, tokens: int) -> str:
        return recipe_text(
            name,
            self.teacher_name,
            self.args.seed,
            prune_yaml,
            self.s,
            variant,
            tokens,
            self.precision,
            self.s.prompts,
        )

    # -- 8. sweep -----------------------------------------------------------------------------
    def sweep(self) -> None:
        if not self.budget.variants:
            self.meta["chosen_loss"] = {"loss": self.chosen, "by": "--loss (no sweep in this call)"}
            return
        student, prune_yaml, _ = self.first_student
        teacher_calibration = quality(self.teacher, self.teacher, self.selection, with_exact_match=False)
        self.meta["teacher_calibration"] = teacher_calibration
        scored = {}
        # A variant starts only if its predicted time (training at the probe's rate, then scoring)
        # ends inside the sweep's share; the ones left out are named on the page.
        predicted = self.sweep_tokens / self.rate + 0.3 * self.eval_cost
        for variant in self.budget.variants:
            if time.monotonic() + predicted > self.sweep_end + 0.25 * predicted:
                self.meta.setdefault("sweep_skipped", []).append(variant)
                self.log(f"sweep {variant}: skipped (the sweep's time is spent)")
                continue
            with self.page.phase(f"sweep_{variant}"):
                text = self.recipe(
                    f"sweep-{variant.replace('+', '-')}", prune_yaml, variant, self.sweep_tokens
                )
                result = train(
                    copy.deepcopy(student),
                    self.teacher if VARIANTS[variant][1] < 1.0 else None,
                    self.bundle,
                    parse_recipe(text).distill,
                    self.args.seed,
                    self.s.seq_len,
                    self.device,
                    self.work / "sweep",
                    stop_at=min(
                        time.monotonic() + 1.5 * self.sweep_cap_each, self.sweep_end + self.sweep_cap_each
                    ),
                )
                scores = quality(result.student, self.teacher, self.selection, with_exact_match=False)
                self.page.rows.append(
                    row(
                        f"sweep: {variant}",
                        CALIBRATION,
                        variant,
                        result,
                        count(result.student),
                        scores,
                        teacher_calibration,
                        self.baseline,
                        text,
                    )
                )
                self.rates[variant] = result.tokens_done / result.seconds if result.seconds > 0 else self.rate
                scored[variant] = scores
                self.log(f"sweep {variant}: {scores} ({result.steps_done}/{result.total_steps} steps)")
                del result
                free(self.device)
        kd = {v: sc for v, sc in scored.items() if VARIANTS[v][1] < 1.0}
        if kd:
            self.chosen = max(kd, key=lambda v: (kd[v]["top1_agreement"], -kd[v]["kl_to_teacher"]))
        self.meta["chosen_loss"] = {
            "loss": self.chosen,
            "by": "highest top-1 agreement on the calibration split (forward_kl when no KD variant finished)",
        }

    # -- 9. the long runs ---------------------------------------------------------------------
    def long_run(self, kind: str) -> None:
        student, prune_yaml, info = self.students[kind]
        if kind == "width" and self.deadline.left() < self.student_reserve() + 4 * self.per_step / self.rate:
            self.meta["width_skipped"] = "no time left for four training steps and the evaluations"
            self.log("width: skipped (no time left)")
            return
        kinds_after = [
            k for k in ("width",) if k in self.students and kind == "depth" and self.budget.width_share > 0
        ]
        reserve = self.student_reserve() * (1 + len(kinds_after)) + (2.0 if self.args.smoke else 8.0)
        left = self.deadline.left() - reserve
        share = 1.0 - self.budget.width_share if kinds_after else 1.0
        seconds = max(left * share, 0.0)
        if kinds_after:
            # The width student's share is fixed now: time the depth run leaves unused is not its.
            self.width_cap_s = max(left, 0.0) * self.budget.width_share
        elif kind == "width":
            seconds = min(seconds, 1.2 * getattr(self, "width_cap_s", seconds))
        rate = min(self.rate, self.rates.get(self.chosen, self.rate))
        tokens = self.whole_steps(rate * seconds * 0.92)
        cap = {"depth": self.budget.depth_tokens, "width": self.budget.width_tokens}[kind]
        if cap:
            tokens = min(tokens, self.whole_steps(cap))
        text = self.recipe(f"{kind}-kd-gpu", prune_yaml, self.chosen, tokens)
        spec = parse_recipe(text).distill
        total_steps = spec.schedule(self.s.seq_len).total_steps
        marks = sorted({max(1, total_steps // d) for d in (16, 8, 4, 2)} - {total_steps})
        self.log(
            f"{kind}: {tokens:,} tokens ({total_steps} steps, ~{tokens / rate:.0f}s predicted, "
            f"cap {seconds:.0f}s)"
        )
        result = train(
            copy.deepcopy(student),
            self.teacher,
            self.bundle,
            spec,
            self.args.seed,
            self.s.seq_len,
            self.device,
            self.work / kind,
            # The curve points' evaluations are reserved in student_reserve, not in ``seconds``.
            stop_at=time.monotonic() + seconds + 4 * 0.35 * self.eval_cost,
            evaluate_at=set(marks),
            evaluate=lambda m: quality(m, self.teacher, self.curve_set, with_exact_match=False),
        )
        # Hard labels name their own rows: the same student at the same budget, beside the KD one.
        name = f"{kind} student" + (HARD_LABELS_SUFFIX if self.chosen == "hard_labels" else "")
        final = quality(result.student, self.teacher, self.evaluation)
        params = count(result.student)
        final_row = row(
            name, EVAL, self.chosen, result, params, final, self.teacher_eval, self.baseline, text
        )
        if kind == "depth" and info["kept_layers"]:
            final_row["layers_kept_share"] = len(info["kept_layers"]) / self.teacher.config.num_hidden_layers
        self.page.rows.append(final_row)
        # The same scores on training data (first windows and chat examples of the train split): a wide
        # gap to the evaluation split says more distinct data is the lever, a narrow one more tokens.
        seen = eval_set(self.bundle, TRAIN, self.s.eval_text, self.s.eval_chat, self.s.seq_len, 0)
        teacher_seen = quality(self.teacher, self.teacher, seen, with_exact_match=False)
        seen_scores = quality(result.student, self.teacher, seen, with_exact_match=False)
        self.page.rows.append(
            row(
                f"{name} on train data",
                TRAIN,
                self.chosen,
                result,
                params,
                seen_scores,
                teacher_seen,
                self.baseline,
            )
        )
        self.merge_decode()
        self.page.write()
        curve = [
            {"tokens": p.tokens, "train_s": p.seconds, "loss": p.loss, **p.metrics} for p in result.curve
        ]
        curve.append(
            {
                "tokens": result.tokens_done,
                "train_s": result.seconds,
                "loss": result.losses[-1] if result.losses else float("nan"),
                **{k: final[k] for k in ("perplexity", "kl_to_teacher", "top1_agreement")},
            }
        )
        self.meta.setdefault("learning_curves", {})[kind] = curve
        t0 = self.teacher_eval["perplexity"]
        ppl_fit = power_law_fit([c["tokens"] for c in curve], [c["perplexity"] / t0 - 1 for c in curve])
        agree_fit = power_law_fit([c["tokens"] for c in curve], [1 - c["top1_agreement"] for c in curve])
        self.meta.setdefault("extrapolation", {})[kind] = {
            "ppl_fit_a_b": ppl_fit,
            "tokens_for_ppl_1.3x": tokens_for_gap(ppl_fit, 0.3),
            "agreement_fit_a_b": agree_fit,
            "tokens_for_top1_0.85_baseline": tokens_for_gap(agree_fit, 1 - 0.85 * self.baseline),
            "kd_tokens_per_s": result.tokens_done / result.seconds if result.seconds > 0 else rate,
            "cut_by_deadline": result.cut_by_deadline,
            "steps": [result.steps_done, result.total_steps],
        }
        self.page.write()
        # Format version 2 (the writer's); the fp8 copy in version 1's layout (an e4m3 embedding) too,
        # so the page shows what the int8 embedding changes on this student.
        for scheme, version, label in (("int8", 2, "int8"), ("fp8", 2, "fp8"), ("fp8", 1, "fp8 (format v1)")):
            scores = quality(
                quantized_copy(result.student, scheme, version),
                self.teacher,
                self.evaluation,
                with_exact_match=False,
            )
            self.page.rows.append(
                row(
                    f"{name} {label}",
                    EVAL,
                    self.chosen,
                    result,
                    params,
                    scores,
                    self.teacher_eval,
                    self.baseline,
                )
            )
            self.merge_decode()
        self.log(f"{kind} final {final}")
        del result
        free(self.device)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    args = parse_args()
    s = SMOKE if args.smoke else GPU
    s = Settings(**{**asdict(s), **{k: v for k, v in vars(args).items() if k in asdict(s) and v is not None}})
    budget = budget_from(args)
    torch.manual_seed(args.seed)
    run = Run(args, s, budget)
    page = run.page

    def terminated(signum: int, frame: object) -> None:
        # The backstop timeout's SIGTERM: leave through the phases' ``finally`` so the page is written.
        run.meta["terminated"] = f"signal {signum} at {run.deadline.elapsed():.0f}s"
        raise SystemExit(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    with page.phase("teacher", critical=True):
        run.load_teacher()
    with page.phase("data", critical=True):
        run.make_data()
    with page.phase("teacher_eval", critical=True):
        run.score_teacher()
    run.prune_students(budget.students)
    with page.phase("probe"):
        run.probe()
    if "throughput" not in run.meta and run.precision == "bfloat16":
        run.fp32_training = True  # the error is on the page; try once more in fp32
        with page.phase("probe_fp32", critical=True):
            run.probe()
    if "throughput" not in run.meta:
        raise SystemExit("the training probe failed (see the page's errors)")
    with page.phase("decode"):
        run.decode_speeds()
    with page.phase("plan", critical=True):
        run.plan()
    with page.phase("sweep"):
        run.sweep()
    for kind in budget.students:
        if kind in run.students:
            with page.phase(f"train_{kind}"):
                run.long_run(kind)
    with page.phase("targets"):
        run.merge_decode()
        run.meta["targets"] = targets(page.rows, run.baseline, run.decode)
        run.meta["phases"]["total_s"] = round(run.deadline.elapsed(), 2)
    run.log(f"done; targets {run.meta.get('targets')}")


def budget_from(args: argparse.Namespace) -> Budget:
    total = args.time_budget_s if args.time_budget_s is not None else (120.0 if args.smoke else 540.0)
    variants = tuple(v.strip() for v in args.sweep.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--sweep: unknown variants {unknown}; choose from {list(VARIANTS)}")
    students = tuple(k.strip() for k in args.students.split(",") if k.strip())
    if not students or set(students) - {"depth", "width"} or len(set(students)) != len(students):
        raise SystemExit(f"--students: a comma-separated subset of depth,width, not {args.students!r}")
    if args.width_share <= 0:
        students = tuple(k for k in students if k != "width") or students
    if args.loss not in VARIANTS:
        # hard_labels too: the same student at the same budget on plain labels, issue 15's comparison row.
        raise SystemExit(f"--loss: one of {list(VARIANTS)}")
    return Budget(
        total_s=total,
        data_s=args.data_s if args.data_s is not None else (0.12 if args.smoke else 0.17) * total,
        data_tokens=args.data_tokens if args.data_tokens is not None else (300 if args.smoke else 8_000_000),
        decode_s=args.decode_s if args.decode_s is not None else (0.1 if args.smoke else 0.13) * total,
        sweep_share=args.sweep_share,
        sweep_tokens=args.sweep_tokens,
        depth_tokens=args.depth_tokens,
        width_tokens=args.width_tokens,
        width_share=args.width_share,
        variants=variants,
        students=tuple(k for k in ("depth", "width") if k in students),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher-dir", help="a converted teacher model directory (e.g. /tmp/smollm2-real)")
    parser.add_argument("--gguf", help="the teacher's GGUF file, if --teacher-dir is absent")
    parser.add_argument(
        "--tokenizer-dir",
        default=str(Path(__file__).resolve().parents[1] / "scratch" / "gpu_distill" / "tokenizer"),
        help="tokenizer of the random stand-in teacher when neither --teacher-dir nor --gguf exists",
    )
    parser.add_argument("--smoke", action="store_true", help="CPU check on a tiny random teacher")
    parser.add_argument(
        "--time-budget-s",
        "--budget-s",
        dest="time_budget_s",
        type=float,
        default=None,
        help="wall time of the whole run (default 540; 120 with --smoke)",
    )
    parser.add_argument(
        "--data-s", type=float, default=None, help="cap of the data phase (default 17%% of the budget)"
    )
    parser.add_argument(
        "--data-tokens", type=int, default=None, help="teacher answer tokens at most (default 8M)"
    )
    parser.add_argument(
        "--decode-s", type=float, default=None, help="cap of the decode-speed phase (default 13%%)"
    )
    parser.add_argument(
        "--sweep-share", type=float, default=0.3, help="share of the training time for the sweep"
    )
    parser.add_argument(
        "--sweep-tokens", type=int, default=None, help="token budget of each sweep variant, at most"
    )
    parser.add_argument(
        "--depth-tokens", type=int, default=None, help="token budget of the depth student, at most"
    )
    parser.add_argument(
        "--width-share",
        type=float,
        default=0.35,
        help="share of the long-run time for the width student (0: no width student)",
    )
    parser.add_argument(
        "--width-tokens", type=int, default=None, help="token budget of the width student, at most"
    )
    parser.add_argument(
        "--sweep", default=",".join(VARIANTS), help="comma-separated sweep variants ('' : no sweep)"
    )
    parser.add_argument(
        "--students", default="depth,width", help="which students this call prunes and trains"
    )
    parser.add_argument(
        "--loss", default="forward_kl", help="the long runs' loss when there is no sweep to choose it"
    )
    parser.add_argument(
        "--teacher-quantized",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the teacher's int8 / fp8 copies (an earlier call's page may already have them)",
    )
    parser.add_argument(
        "--refill-at",
        type=float,
        default=0.5,
        help="the teacher engine admits prompts in waves when this share of its slots is left (1: any slot)",
    )
    parser.add_argument(
        "--merge-into",
        default=None,
        help="an earlier call's page JSON: this call's rows and sections are added to it, written as "
        "that page's name next to this call's own page",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    parser.add_argument("--work-dir", default="/tmp/gpu_distill")
    parser.add_argument(
        "--name", default=None, help="results file name (default distill_results_gpu[_smoke])"
    )
    # Every size of Settings can be set (defaults: GPU, or SMOKE with --smoke).
    for name, value in asdict(GPU).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    return parser.parse_args()


if __name__ == "__main__":
    main()
