"""The distillation loop: it learns, it resumes exactly, and on-policy steps learn the student's answers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from radixfair.tokenization import PromptEncoder
from radixfair_distiller.data.bundle import prepare_data
from radixfair_distiller.data.splits import TRAIN
from radixfair_distiller.evaluation import chat_agreement
from radixfair_distiller.losses.divergence import IGNORE_INDEX
from radixfair_distiller.model_dir import content_hash, load_llama, save_llama
from radixfair_distiller.pruning import prune
from radixfair_distiller.recipe import DataSpec, DepthPruning, DistillSpec, LossSpec, OnPolicySpec, PruneSpec
from radixfair_distiller.training import (
    JobCancelledError,
    TrainingHooks,
    TrainingRun,
    distill,
    learning_rate,
    on_policy_batch,
)


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    return load_llama(tiny_model_dir)


@pytest.fixture(scope="module")
def bundle(teacher, tiny_model_dir, tmp_path_factory):
    spec = DataSpec(seq_len=64, text_max_files=30, chat_prompts=50, response_max_new_tokens=8)
    encoder = PromptEncoder(tiny_model_dir)
    return prepare_data(
        spec, encoder, teacher, content_hash(tiny_model_dir), tmp_path_factory.mktemp("cache")
    )


@pytest.fixture(scope="module")
def student_dir(teacher, bundle, tiny_model_dir, tmp_path_factory):
    from radixfair_distiller.data.batches import calibration_batches

    student, _ = prune(
        teacher, PruneSpec(depth=DepthPruning(keep_layers=1)), calibration_batches(bundle, 4, 64)
    )
    return save_llama(student, tmp_path_factory.mktemp("student") / "initial", tiny_model_dir)


def hooks(stop_after: int | None = None, events: list | None = None) -> TrainingHooks:
    done = []
    return TrainingHooks(
        on_step=lambda report: (done.append(report.step), events is not None and events.append(report)),
        on_checkpoint=lambda step: events is not None and events.append(("checkpoint", step)),
        on_resume=lambda step: events is not None and events.append(("resumed", step)),
        should_stop=lambda: stop_after is not None and len(done) >= stop_after,
    )


def run_for(spec, tmp_path, tiny_model_dir, seed=0, seq_len=64):
    return TrainingRun(spec, seed, seq_len, tmp_path / "checkpoint", tiny_model_dir, torch.device("cpu"))


# The resume runs' rows: the chat prompts are 35 to 44 tokens, so 48 positions still hold a prompt and
# the first answer tokens it learns, and a step costs 3/4 of one at 64 (the 49,152-word LM head
# dominates; under bf16 on a CPU a step is seconds).
RESUME_SEQ_LEN = 48
# 4 steps, a checkpoint at 2: an interrupted run loses step 3 and resumes at 2, and with seed 0 and
# fraction 0.4 step 4 is on-policy, so the resumed steps include a sampled batch.
SPEC = DistillSpec(
    steps=4,
    batch_size=2,
    learning_rate=1e-3,
    warmup_steps=2,
    checkpoint_every=2,
    loss=LossSpec(kind="jsd", beta=0.4, hard_label_weight=0.1),
    on_policy=OnPolicySpec(fraction=0.4, max_new_tokens=6),
)
# The same 4 steps named as a token budget (2 x 48 = 96 tokens a step: 380 tokens round up to 4
# steps, 150 warm-up tokens to 2), resumed under bf16 mixed precision. In fp32 it would train exactly
# as SPEC does: the budget is read once, into a schedule, and the schedules are equal (checked below),
# so the fp32 token case ran SPEC's code path a second time.
TOKEN_SPEC = dataclasses.replace(SPEC, steps=None, warmup_steps=None, tokens=380, warmup_tokens=150)
BF16_SPEC = dataclasses.replace(TOKEN_SPEC, precision="bfloat16")


def test_the_resume_cases_token_budget_is_their_step_budget():
    assert TOKEN_SPEC.schedule(RESUME_SEQ_LEN) == SPEC.schedule(RESUME_SEQ_LEN)
    assert BF16_SPEC.schedule(RESUME_SEQ_LEN) == SPEC.schedule(RESUME_SEQ_LEN)


@pytest.mark.parametrize("spec", [SPEC, BF16_SPEC], ids=["steps", "tokens-bf16"])
def test_a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(
    spec, teacher, bundle, student_dir, tmp_path, tiny_model_dir
):
    whole_run = run_for(spec, tmp_path / "a", tiny_model_dir, seq_len=RESUME_SEQ_LEN)
    whole, whole_losses = distill(load_llama(student_dir), teacher, bundle, whole_run, hooks())
    run = run_for(spec, tmp_path / "b", tiny_model_dir, seq_len=RESUME_SEQ_LEN)
    with pytest.raises(JobCancelledError):
        distill(
            load_llama(student_dir), teacher, bundle, run, hooks(stop_after=3)
        )  # checkpoint at 2, step 3 lost
    events: list = []
    resumed, resumed_losses = distill(load_llama(student_dir), teacher, bundle, run, hooks(events=events))
    assert events[0] == ("resumed", 2)
    assert [e.step for e in events if not isinstance(e, tuple)] == [3, 4]
    assert any(e.on_policy for e in events if not isinstance(e, tuple))
    assert resumed_losses == whole_losses
    for name, tensor in whole.state_dict().items():
        assert tensor.dtype == torch.float32  # bf16 mixed precision keeps fp32 master weights
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_distillation_brings_the_student_close_to_the_teacher_on_what_it_trained_on(
    teacher, bundle, student_dir, tmp_path, tiny_model_dir
):
    examples = bundle.chat[TRAIN][:4]
    small = dataclasses.replace(bundle, chat={**bundle.chat, TRAIN: examples})
    spec = DistillSpec(steps=12, batch_size=4, learning_rate=2e-3, chat_fraction=1.0, checkpoint_every=100)
    before, agreement_before = chat_agreement(load_llama(student_dir), teacher, examples)
    student, losses = distill(
        load_llama(student_dir), teacher, small, run_for(spec, tmp_path, tiny_model_dir), hooks()
    )
    after, agreement_after = chat_agreement(student, teacher, examples)
    assert after < 0.5 * before
    assert agreement_after > agreement_before
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])


def test_on_policy_batches_hold_the_students_own_sampled_answers(
    bundle, student_dir, tmp_path, tiny_model_dir
):
    student = load_llama(student_dir)
    run = run_for(SPEC, tmp_path, tiny_model_dir, seed=5)
    batch = on_policy_batch(student, bundle, run, step=2)
    assert torch.equal(batch.input_ids, on_policy_batch(student, bundle, run, step=2).input_ids)
    prompts = {e.prompt_ids for e in bundle.chat[TRAIN]}
    for row in range(batch.input_ids.shape[0]):
        learned = (batch.labels[row] != IGNORE_INDEX).nonzero().flatten()
        assert 1 <= len(learned) <= 6
        first = int(learned[0])
        # Everything before the first learned position is one of the training prompts.
        assert tuple(batch.input_ids[row, : first + 1].tolist()) in prompts
        # Learned labels are the sampled tokens that follow, teacher-forced.
        assert torch.equal(batch.labels[row, learned[:-1]], batch.input_ids[row, learned[:-1] + 1])


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    schedule = DistillSpec(steps=100, learning_rate=1.0, warmup_steps=10).schedule(seq_len=64)
    assert learning_rate(schedule, 0) == pytest.approx(0.1)
    assert learning_rate(schedule, 9) == pytest.approx(1.0)
    assert learning_rate(schedule, 55) == pytest.approx(0.55)
    assert learning_rate(schedule, 100) == pytest.approx(0.1)


def test_a_token_budget_warms_up_and_decays_over_the_same_steps_as_its_step_equivalent():
    # batch 4 x seq_len 64 = 256 tokens a step: 25,600 tokens are 100 steps, 2,560 of warm-up are 10.
    by_tokens = DistillSpec(tokens=25_600, warmup_tokens=2_560, batch_size=4, learning_rate=1.0)
    by_steps = DistillSpec(steps=100, warmup_steps=10, batch_size=4, learning_rate=1.0)
    for step in (0, 9, 10, 55, 99):
        assert learning_rate(by_tokens.schedule(64), step) == learning_rate(by_steps.schedule(64), step)


def test_checkpoint_directory_is_a_loadable_model(teacher, bundle, student_dir, tmp_path, tiny_model_dir):
    spec = DistillSpec(steps=4, batch_size=2, checkpoint_every=2)
    run = run_for(spec, tmp_path, tiny_model_dir)
    with pytest.raises(JobCancelledError):
        distill(load_llama(student_dir), teacher, bundle, run, hooks(stop_after=3))
    state = load_file(str(run.checkpoint_dir / "model.safetensors"))
    assert (
        "model.layers.0.mlp.down_proj.weight" in state and "model.layers.1.mlp.down_proj.weight" not in state
    )
    assert load_llama(run.checkpoint_dir).config.num_hidden_layers == 1
