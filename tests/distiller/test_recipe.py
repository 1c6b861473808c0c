"""Recipe validation: every bad recipe is an INVALID_ARGUMENT error that names its problem."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from radixfair_distiller.recipe import DistillSpec, RecipeError, StepSchedule, parse_recipe, resolve_recipe


def recipe_text(teacher, extra: str = "") -> str:
    return f"name: student-a\nteacher: {teacher}\n{extra}"


def test_a_full_recipe_parses_into_frozen_specs(tiny_model_dir, tmp_path):
    text = recipe_text(
        tiny_model_dir,
        """
seed: 7
prune:
  depth: {keep_layers: 1, importance: ablation_kl}
  width: {intermediate_size: 96, num_attention_heads: 2, num_key_value_heads: 1}
distill:
  tokens: 100000
  warmup_tokens: 5000
  learning_rate: 3e-4
  loss: {kind: jsd, beta: 0.3, temperature: 2, hard_label_weight: 0.1}
  on_policy: {fraction: 0.5}
quantize: [int8, fp8]
""",
    )
    resolved = resolve_recipe(text, tmp_path)
    recipe = resolved.recipe
    assert recipe.seed == 7 and recipe.prune.depth.importance == "ablation_kl"
    assert recipe.distill.learning_rate == pytest.approx(3e-4)  # YAML 1.1 would read "3e-4" as a string
    assert recipe.distill.loss.temperature == 2.0 and recipe.quantize == ("int8", "fp8")
    assert resolved.teacher_config.num_hidden_layers == 2
    assert resolved.text == text


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("distill: {steps: 10, stepz: 3}", "unknown field(s) ['stepz']"),
        ("colour: blue", "unknown field(s) ['colour']"),
        ("distill: {tokens: 10, loss: {kind: kl}}", "recipe.distill.loss: kind must be one of"),
        ("distill: {tokens: 10, loss: {kind: jsd, beta: 1.5}}", "beta must be in (0, 1)"),
        ("distill: {steps: 0}", "recipe.distill: steps must be >= 1"),
        ("distill: {steps: ten}", "recipe.distill.steps: expected int"),
        ("distill: {tokens: 0}", "recipe.distill: tokens must be >= 1"),
        ("distill: {tokens: 1e6}", "recipe.distill.tokens: expected int"),
        ("distill: {tokens: 100, warmup_tokens: 101}", "warmup_tokens must be in [0, tokens]"),
        ("distill: {batch_size: 4}", "name the training budget: tokens: N"),
        ("distill: {tokens: 1000, steps: 10}", "a budget is named in tokens or in steps, not both"),
        ("distill: {tokens: 1000, warmup_steps: 1}", "a budget is named in tokens or in steps, not both"),
        (
            "distill: {tokens: 1000, precision: float16}",
            "precision must be one of float32, float64, bfloat16",
        ),
        ("distill: {steps: 1, precision: bf16}", "recipe.distill: precision must be one of float32, float64"),
        ("quantize: [int4]", "unknown scheme 'int4'"),
        ("data: {teacher_answers: vllm}", "teacher_answers must be one of generate, engine"),
        (
            "distill: {tokens: 10, loss: {hard_label_weight: 1.0}, on_policy: {fraction: 0.5}}",
            "on_policy needs the teacher",
        ),
        ("evaluate: {max_new_tokens: 100}", "evaluate.max_new_tokens must not exceed"),
        ("prune: {width: {intermediate_size: 0}}", "recipe.prune.width: intermediate_size must be >= 1"),
    ],
)
def test_bad_fields_and_values_are_named(tiny_model_dir, extra, named):
    with pytest.raises(RecipeError) as caught:
        parse_recipe(recipe_text(tiny_model_dir, extra))
    assert named in str(caught.value)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("prune: {depth: {keep_layers: 3}}", "keep_layers: 3 layers asked, the teacher has 2"),
        ("prune: {width: {intermediate_size: 161}}", "intermediate_size: 161 asked, the teacher has 160"),
        (
            "prune: {width: {num_attention_heads: 3}}",
            "num_attention_heads 3 is not a multiple of num_key_value_heads 2",
        ),
        ("prune: {width: {num_key_value_heads: 4}}", "num_key_value_heads: 4 asked, the teacher has 2"),
        (
            "prune: {width: {num_attention_heads: 4, num_key_value_heads: 1}}",
            "4 query heads per KV group asked",
        ),
    ],
)
def test_impossible_student_shapes_are_named(tiny_model_dir, tmp_path, extra, named):
    with pytest.raises(RecipeError, match=named.replace("(", r"\(").replace(")", r"\)")):
        resolve_recipe(recipe_text(tiny_model_dir, extra), tmp_path)


def test_a_missing_teacher_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe.teacher: teacher '/nonexistent/teacher' not found"):
        resolve_recipe(recipe_text("/nonexistent/teacher"), tmp_path)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("teacher: x", "missing required field 'name'"),
        ("name: a", "missing required field 'teacher'"),
        ("- a list", "top level must be a mapping"),
        ("name: [unclosed", "not valid YAML"),
        ("name: ../escape\nteacher: x", "name '../escape' must match"),
    ],
)
def test_malformed_recipes_are_named(text, named):
    with pytest.raises(RecipeError, match=named.replace("[", r"\[").replace("(", r"\(")):
        parse_recipe(text)


def test_the_shipped_example_recipes_fit_the_packaged_teacher(smollm2_dir):
    from pathlib import Path

    from radixfair_distiller.recipe import check_shapes
    from radixfair_model_format.model_config import ModelConfig

    recipes = sorted((Path(__file__).resolve().parents[2] / "services/distiller/recipes").glob("*.yaml"))
    assert len(recipes) >= 4
    teacher = ModelConfig.from_hf_config(smollm2_dir / "config.json")
    for path in recipes:
        recipe = parse_recipe(path.read_text())
        assert recipe.teacher == "smollm2-135m-instruct", path
        check_shapes(recipe, teacher)


@given(
    tokens=st.integers(1, 10**9),
    warmup=st.floats(0.0, 1.0),
    batch_size=st.integers(1, 64),
    seq_len=st.integers(8, 4096),
)
def test_a_token_budget_is_the_fewest_whole_steps_that_cover_it(tokens, warmup, batch_size, seq_len):
    spec = DistillSpec(tokens=tokens, warmup_tokens=int(warmup * tokens), batch_size=batch_size)

    schedule = spec.schedule(seq_len)

    assert schedule.tokens_per_step == batch_size * seq_len
    assert schedule.total_tokens >= tokens > schedule.total_tokens - schedule.tokens_per_step
    assert 0 <= schedule.warmup_steps <= schedule.total_steps
    assert schedule.warmup_steps * schedule.tokens_per_step >= int(warmup * tokens)


def test_an_old_step_budget_runs_as_it_did_whatever_the_sequence_length():
    spec = DistillSpec(steps=40, warmup_steps=4, batch_size=8, checkpoint_every=10)

    assert spec.schedule(128) == StepSchedule(40, 4, 10, 1024, spec.learning_rate)
    assert spec.schedule(512).total_steps == 40


def test_the_shipped_recipes_name_their_budget_in_tokens():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[2] / "services/distiller/recipes").glob("*.yaml"))
    for path in recipes:
        recipe = parse_recipe(path.read_text())
        if recipe.distill is not None:
            assert recipe.distill.tokens is not None and recipe.distill.steps is None, path
