"""Declarative distillation recipes: YAML in, a validated frozen Recipe out.

A recipe names the teacher, how to prune it into a student, how to distill,
which quantized copies to make, the data and the evaluation. A run is
reproducible from its recipe text and seed. Every problem is reported as a
RecipeError (INVALID_ARGUMENT) that names the offending field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from radixfair.config_loading import ConfigError, build
from radixfair.errors import InvalidRequestError
from radixfair_model_format.model_config import ModelConfig
from radixfair_model_format.model_store import ModelNotFoundError, resolve_model_dir

LOSS_KINDS = ("forward_kl", "reverse_kl", "jsd")
QUANTIZATION_SCHEMES = ("int8", "fp8")
DEPTH_IMPORTANCE = ("block_influence", "ablation_kl")
TEACHER_ANSWERS = ("generate", "engine")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RecipeError(InvalidRequestError):
    """The recipe cannot run; the message names the field and the problem."""


@dataclass(frozen=True)
class DepthPruning:
    """Drop whole decoder layers, keeping the ``keep_layers`` most important."""

    keep_layers: int
    # block_influence: 1 - cos(layer input, layer output) on calibration data
    # (cheap, one forward). ablation_kl: KL to the full model with the layer
    # skipped (one forward per layer, more faithful).
    importance: str = "block_influence"

    def __post_init__(self) -> None:
        _require(self.keep_layers >= 1, "keep_layers must be >= 1")
        _require(self.importance in DEPTH_IMPORTANCE, f"importance must be one of {DEPTH_IMPORTANCE}")


@dataclass(frozen=True)
class WidthPruning:
    """Shrink every layer to the same smaller shape; unset fields keep the teacher's."""

    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    # Least-squares refit of down_proj / o_proj over the kept units, so each
    # layer's output stays close to the unpruned one on calibration data.
    refit: bool = True

    def __post_init__(self) -> None:
        for name in ("intermediate_size", "num_attention_heads", "num_key_value_heads"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{name} must be >= 1")


@dataclass(frozen=True)
class PruneSpec:
    depth: DepthPruning | None = None
    width: WidthPruning | None = None
    # Calibration sequences (of data.seq_len tokens) the importance scores use.
    calibration_sequences: int = 16

    def __post_init__(self) -> None:
        _require(self.calibration_sequences >= 1, "calibration_sequences must be >= 1")


@dataclass(frozen=True)
class LossSpec:
    """The distillation loss (see losses.divergence for the exact definitions)."""

    kind: str = "forward_kl"
    # Generalized JSD mixture weight of the student, in (0, 1); jsd only.
    beta: float = 0.5
    temperature: float = 1.0
    # Weight of the hard-label cross-entropy; 1.0 trains on labels only and
    # never runs the teacher (the no-distillation baseline).
    hard_label_weight: float = 0.0
    # Tokens per chunk of the fused LM-head + loss (peak memory ~ 6 x chunk x vocab fp32).
    chunk_tokens: int = 256

    def __post_init__(self) -> None:
        _require(self.kind in LOSS_KINDS, f"kind must be one of {LOSS_KINDS}, got {self.kind!r}")
        _require(0.0 < self.beta < 1.0, "beta must be in (0, 1)")
        _require(0.0 < self.temperature < math.inf, "temperature must be > 0 and finite")
        _require(0.0 <= self.hard_label_weight <= 1.0, "hard_label_weight must be in [0, 1]")
        _require(self.chunk_tokens >= 1, "chunk_tokens must be >= 1")


@dataclass(frozen=True)
class OnPolicySpec:
    """Steps on which the student writes the responses and the teacher scores them."""

    # Share of steps that are on-policy, in [0, 1]; chosen by seed and step.
    fraction: float = 0.0
    max_new_tokens: int = 32
    # Student sampling temperature while writing responses.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _require(0.0 <= self.fraction <= 1.0, "fraction must be in [0, 1]")
        _require(self.max_new_tokens >= 1, "max_new_tokens must be >= 1")
        _require(0.0 < self.temperature < math.inf, "temperature must be > 0 and finite")


# bfloat16: mixed precision. The student's weights, gradients and optimizer state stay fp32 (the
# master copy); its forward and the LM-head products run under bf16 autocast, and the teacher scores
# in bf16. float64 makes runs that sum in another order (N ranks against one process) agree to ~1e-16
# relative, so they can be compared tightly. Published weights are fp32 whatever the precision.
TRAINING_PRECISIONS = ("float32", "float64", "bfloat16")
# What an old step-budget recipe is rewritten to; the message says how.
_STEP_BUDGET_HELP = (
    "a budget is named in tokens or in steps, not both: tokens: N trains ceil(N / (batch_size x "
    "data.seq_len)) steps of batch_size x data.seq_len token positions each"
)


@dataclass(frozen=True)
class StepSchedule:
    """The budget in optimizer steps, once the sequence length is known (see DistillSpec.schedule)."""

    total_steps: int
    warmup_steps: int
    checkpoint_every: int
    tokens_per_step: int
    peak_learning_rate: float

    @property
    def total_tokens(self) -> int:
        return self.total_steps * self.tokens_per_step


@dataclass(frozen=True)
class DistillSpec:
    """How the student is trained.

    The budget is ``tokens``: token positions (batch_size x data.seq_len per optimizer step, chat
    padding included) seen by the student, the unit Minitron and most distillation reports count
    in, so budgets compare across batch shapes. It is rounded up to whole steps. ``warmup_tokens``
    is the linear warm-up, in the same unit. Recipes written before token budgets name ``steps``
    and ``warmup_steps`` instead; they still run as they did (one or the other, never both).
    """

    tokens: int | None = None
    warmup_tokens: int | None = None
    steps: int | None = None
    warmup_steps: int | None = None
    batch_size: int = 8
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Share of each offline batch drawn from teacher-written chat (the rest
    # is docstring text).
    chat_fraction: float = 0.5
    # Share of the text rows drawn from the standard library's code (data.code_text) instead of its
    # docstrings: more distinct text for the teacher to score, as in its own pretraining mix.
    code_fraction: float = 0.0
    # Optimizer steps between checkpoints (crash granularity, not budget); a restarted job resumes
    # from the last one.
    checkpoint_every: int = 50
    loss: LossSpec = field(default_factory=LossSpec)
    on_policy: OnPolicySpec = field(default_factory=OnPolicySpec)
    # Parameter, gradient and optimizer-state dtype of the student (see TRAINING_PRECISIONS).
    precision: str = "float32"

    def __post_init__(self) -> None:
        by_tokens = self.tokens is not None or self.warmup_tokens is not None
        by_steps = self.steps is not None or self.warmup_steps is not None
        _require(not (by_tokens and by_steps), _STEP_BUDGET_HELP)
        _require(
            self.tokens is not None or self.steps is not None,
            "name the training budget: tokens: N (token positions seen by the student)",
        )
        if self.tokens is not None:
            _require(self.tokens >= 1, "tokens must be >= 1")
            _require(0 <= (self.warmup_tokens or 0) <= self.tokens, "warmup_tokens must be in [0, tokens]")
        else:
            assert self.steps is not None
            _require(self.steps >= 1, "steps must be >= 1")
            _require(0 <= (self.warmup_steps or 0) <= self.steps, "warmup_steps must be in [0, steps]")
        _require(
            self.precision in TRAINING_PRECISIONS,
            f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, not {self.precision!r}",
        )
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.learning_rate > 0.0, "learning_rate must be > 0")
        _require(self.weight_decay >= 0.0, "weight_decay must be >= 0")
        _require(self.grad_clip >= 0.0, "grad_clip must be >= 0 (0 disables clipping)")
        _require(0.0 <= self.chat_fraction <= 1.0, "chat_fraction must be in [0, 1]")
        _require(0.0 <= self.code_fraction <= 1.0, "code_fraction must be in [0, 1]")
        _require(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        if self.on_policy.fraction > 0.0 and self.loss.hard_label_weight == 1.0:
            raise ValueError("on_policy needs the teacher, but loss.hard_label_weight 1.0 disables it")

    def schedule(self, seq_len: int) -> StepSchedule:
        """Steps, warm-up and checkpoints for sequences of ``seq_len`` tokens (a pure function)."""
        per_step = self.batch_size * seq_len
        if self.tokens is not None:
            total = -(-self.tokens // per_step)
            warmup = min(-(-(self.warmup_tokens or 0) // per_step), total)
        else:
            assert self.steps is not None
            total, warmup = self.steps, self.warmup_steps or 0
        return StepSchedule(total, warmup, self.checkpoint_every, per_step, self.learning_rate)

    @property
    def compute_dtype(self) -> str:
        """The dtype the student's weights and optimizer state are kept in while training."""
        return "float32" if self.precision == "bfloat16" else self.precision


@dataclass(frozen=True)
class DataSpec:
    # Tokens per training / calibration / evaluation sequence.
    seq_len: int = 128
    # Standard-library files whose docstrings form the text corpus; 0 = all.
    text_max_files: int = 0
    min_docstring_chars: int = 200
    # Shipped chat prompts used; 0 = all of them.
    chat_prompts: int = 0
    # Prompts of the generated set added to them (data/prompt_templates.py; split by subject, and
    # none about a subject the shipped held-out prompts mention), drawn by generated_prompts_seed.
    generated_prompts: int = 0
    generated_prompts_seed: int = 0
    # Length of the teacher's (greedy) responses.
    response_max_new_tokens: int = 64
    # Who writes them: "generate" (Hugging Face, 8 prompts at a time; fine for the shipped few
    # hundred) or "engine" (the worker's engine: continuous batching, Triton + bf16 on a GPU; for
    # tens of thousands of generated prompts). Cached separately: the two differ in rounding.
    teacher_answers: str = "generate"
    # Also the standard library's code, each file with its docstrings cut out, as a training-only
    # text stream (files of the train split; distill.code_fraction says how much of it is drawn).
    code_text: bool = False

    def __post_init__(self) -> None:
        _require(self.seq_len >= 8, "seq_len must be >= 8")
        _require(self.text_max_files >= 0, "text_max_files must be >= 0")
        _require(self.min_docstring_chars >= 1, "min_docstring_chars must be >= 1")
        _require(self.chat_prompts >= 0, "chat_prompts must be >= 0")
        _require(self.generated_prompts >= 0, "generated_prompts must be >= 0")
        _require(self.response_max_new_tokens >= 1, "response_max_new_tokens must be >= 1")
        _require(
            self.teacher_answers in TEACHER_ANSWERS,
            f"teacher_answers must be one of {', '.join(TEACHER_ANSWERS)}, not {self.teacher_answers!r}",
        )


@dataclass(frozen=True)
class EvalSpec:
    # Held-out docstring windows (data.seq_len tokens each) for perplexity.
    text_sequences: int = 16
    # Held-out chat prompts for KL, top-1 agreement and exact match.
    chat_prompts: int = 16
    # Greedy tokens compared with the teacher's answer for exact match.
    max_new_tokens: int = 32
    # Tokens decoded on the worker engine to measure speed; 0 skips it.
    decode_tokens: int = 64

    def __post_init__(self) -> None:
        _require(self.text_sequences >= 1, "text_sequences must be >= 1")
        _require(self.chat_prompts >= 1, "chat_prompts must be >= 1")
        _require(self.max_new_tokens >= 1, "max_new_tokens must be >= 1")
        _require(self.decode_tokens >= 0, "decode_tokens must be >= 0")


@dataclass(frozen=True)
class Recipe:
    """One distillation job, as written by its author."""

    # Artifact name (a directory name); quantized copies get "-int8"/"-fp8".
    name: str
    # "smollm2-135m-instruct" (the packaged checkpoint) or a model directory.
    teacher: str
    seed: int = 0
    # Omitted: the student starts as a copy of the teacher.
    prune: PruneSpec | None = None
    # Omitted: no training (prune and/or quantize only).
    distill: DistillSpec | None = None
    quantize: tuple[str, ...] = ()
    data: DataSpec = field(default_factory=DataSpec)
    evaluate: EvalSpec = field(default_factory=EvalSpec)

    def __post_init__(self) -> None:
        _require(bool(_NAME.match(self.name)), f"name {self.name!r} must match {_NAME.pattern}")
        _require(bool(self.teacher), "teacher is required")
        _require(isinstance(self.quantize, tuple), "quantize must be a list, e.g. [int8]")
        for scheme in self.quantize:
            _require(
                scheme in QUANTIZATION_SCHEMES,
                f"quantize: unknown scheme {scheme!r}; use {QUANTIZATION_SCHEMES}",
            )
        _require(len(set(self.quantize)) == len(self.quantize), "quantize lists a scheme twice")
        _require(
            self.distill is None or self.distill.code_fraction == 0.0 or self.data.code_text,
            "distill.code_fraction > 0 draws from the code stream: set data.code_text: true",
        )
        _require(
            self.evaluate.max_new_tokens <= self.data.response_max_new_tokens,
            "evaluate.max_new_tokens must not exceed data.response_max_new_tokens "
            "(the length of the teacher's answers)",
        )


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe whose teacher was found and whose shapes fit that teacher."""

    recipe: Recipe
    text: str
    teacher_dir: Path
    teacher_config: ModelConfig


def parse_recipe(text: str) -> Recipe:
    """Parses and validates the recipe on its own (no teacher needed)."""
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise RecipeError("recipe: top level must be a mapping")
    for key in ("name", "teacher"):
        if key not in data:
            raise RecipeError(f"recipe: missing required field {key!r}")
    if isinstance(data.get("quantize"), str):
        data = {**data, "quantize": [data["quantize"]]}
    try:
        return build(Recipe, data, where="recipe")
    except ConfigError as error:
        raise RecipeError(str(error)) from error


def resolve_recipe(text: str, model_cache_dir: Path) -> ResolvedRecipe:
    """Parses, finds the teacher and checks the student shape against it."""
    recipe = parse_recipe(text)
    try:
        teacher_dir = resolve_model_dir(recipe.teacher, model_cache_dir)
    except ModelNotFoundError as error:
        raise RecipeError(f"recipe.teacher: teacher {recipe.teacher!r} not found: {error}") from error
    teacher_config = ModelConfig.from_hf_config(teacher_dir / "config.json")
    check_shapes(recipe, teacher_config)
    return ResolvedRecipe(recipe, text, teacher_dir.resolve(), teacher_config)


def check_shapes(recipe: Recipe, teacher: ModelConfig) -> None:
    """Rejects a student shape the teacher cannot be pruned into."""
    if recipe.prune is None:
        return
    depth, width = recipe.prune.depth, recipe.prune.width
    if depth is not None and depth.keep_layers > teacher.num_hidden_layers:
        raise RecipeError(
            f"recipe.prune.depth.keep_layers: {depth.keep_layers} layers asked, "
            f"the teacher has {teacher.num_hidden_layers}"
        )
    if width is None:
        return
    _check_at_most(width.intermediate_size, teacher.intermediate_size, "intermediate_size")
    _check_at_most(width.num_key_value_heads, teacher.num_key_value_heads, "num_key_value_heads")
    _check_at_most(width.num_attention_heads, teacher.num_attention_heads, "num_attention_heads")
    heads = width.num_attention_heads or teacher.num_attention_heads
    kv_heads = width.num_key_value_heads or teacher.num_key_value_heads
    if heads % kv_heads:
        raise RecipeError(
            f"recipe.prune.width: num_attention_heads {heads} is not a multiple of "
            f"num_key_value_heads {kv_heads}"
        )
    teacher_group = teacher.num_attention_heads // teacher.num_key_value_heads
    if heads // kv_heads > teacher_group:
        # Query heads are kept inside their KV group; a group cannot grow.
        raise RecipeError(
            f"recipe.prune.width: {heads // kv_heads} query heads per KV group asked, "
            f"the teacher has {teacher_group}"
        )


def _check_at_most(value: int | None, teacher_value: int, name: str) -> None:
    if value is not None and value > teacher_value:
        raise RecipeError(f"recipe.prune.width.{name}: {value} asked, the teacher has {teacher_value}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads 3e-4 as a float (YAML 1.1 insists on 3.0e-4)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)
