"""The teacher's answers written by the worker's engine are its greedy answers, token for token."""

from __future__ import annotations

from collections import Counter

import pytest

from radixfair.tokenization import ChatTurn, PromptEncoder
from radixfair_distiller.data.bundle import prepare_data
from radixfair_distiller.data.chat import templated_prompts
from radixfair_distiller.data.engine_answers import AnswerBudget, AnswerEngineConfig, EngineAnswerer
from radixfair_distiller.data.splits import SPLITS
from radixfair_distiller.generation import generate
from radixfair_distiller.model_dir import content_hash, load_llama
from radixfair_distiller.recipe import DataSpec

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def prompts(tiny_model_dir) -> list[list[int]]:
    encoder = PromptEncoder(tiny_model_dir)
    return [encoder.encode_chat([ChatTurn("user", p.prompt)]) for p in templated_prompts(24, seed=1)]


def test_engine_answers_equal_greedy_generation_with_more_prompts_than_the_engine_runs_at_once(
    tiny_model_dir, prompts
):
    teacher = load_llama(tiny_model_dir)
    eos = PromptEncoder(tiny_model_dir).eos_token_id
    # 4 running and 16 waiting at most: the 24 prompts queue, are admitted in turns and preempt.
    config = AnswerEngineConfig(max_running_requests=4, num_pages=64, max_batched_tokens=256)
    answerer = EngineAnswerer(tiny_model_dir, config)

    answers = answerer.answer(prompts, NEW_TOKENS, eos)

    expected = generate(teacher, prompts, NEW_TOKENS, eos, pad_token_id=eos or 0)
    assert answers == expected
    assert answerer.generated_tokens == sum(len(a) for a in expected)


def test_admission_in_waves_gives_the_same_answers_in_fewer_admission_rounds(tiny_model_dir, prompts):
    every_slot = EngineAnswerer(tiny_model_dir, AnswerEngineConfig(max_running_requests=4, num_pages=64))
    waves = EngineAnswerer(
        tiny_model_dir, AnswerEngineConfig(max_running_requests=4, num_pages=64, refill_at=0.5)
    )
    # The token most answers hold stops them: answers of many lengths end at many different steps.
    free_running = every_slot.answer(prompts, NEW_TOKENS, eos_token_id=None)
    stop = Counter(t for a in free_running for t in set(a[:-1])).most_common(1)[0][0]
    every_slot.refills = 0

    expected = every_slot.answer(prompts, NEW_TOKENS, stop)
    answers = waves.answer(prompts, NEW_TOKENS, stop)

    assert answers == expected
    assert len({len(a) for a in answers}) > 2
    # A wave admits 4 - 2 = 2 prompts at least (4 the first time), so 24 prompts take at most 11 rounds;
    # admitting whenever a slot frees takes about a round per step in which an answer ends (10 here).
    assert waves.refills <= 11 and waves.refills < every_slot.refills


def test_an_answer_stops_after_the_end_of_sequence_token_it_includes(tiny_model_dir, prompts):
    answerer = EngineAnswerer(tiny_model_dir, AnswerEngineConfig(max_running_requests=8, num_pages=64))
    free_running = answerer.answer(prompts[:8], NEW_TOKENS, eos_token_id=None)
    # Make the third token of the first answer the end-of-sequence token.
    stop = free_running[0][2]

    answers = answerer.answer(prompts[:8], NEW_TOKENS, eos_token_id=stop)

    for free, stopped in zip(free_running, answers):
        cut = free.index(stop) + 1 if stop in free else len(free)
        assert stopped == free[:cut]
    assert len(answers[0]) <= 3


def test_data_prepared_through_the_engine_holds_generated_prompts_in_every_split(tiny_model_dir, tmp_path):
    encoder = PromptEncoder(tiny_model_dir)
    teacher = load_llama(tiny_model_dir)
    spec = DataSpec(
        seq_len=48, text_max_files=10, chat_prompts=10, generated_prompts=60, response_max_new_tokens=6
    )
    answerer = EngineAnswerer(tiny_model_dir, AnswerEngineConfig(max_running_requests=16, num_pages=128))

    bundle = prepare_data(
        spec,
        encoder,
        teacher,
        content_hash(tiny_model_dir),
        tmp_path,
        answer=answerer.answer,
        answer_batch=32,
        answer_tag="-engine-fp32",
    )

    examples = [e for split in SPLITS for e in bundle.chat[split]]
    assert len(examples) == 70
    assert all(bundle.chat[split] for split in SPLITS)
    assert all(1 <= len(e.response_ids) <= 6 for e in examples)
    assert list(tmp_path.glob("teacher-*-engine-fp32.jsonl"))


def test_a_token_budget_stops_taking_prompts_and_answers_a_prefix_exactly(tiny_model_dir, prompts):
    teacher = load_llama(tiny_model_dir)
    eos = PromptEncoder(tiny_model_dir).eos_token_id
    config = AnswerEngineConfig(max_running_requests=4, num_pages=64, max_batched_tokens=256)
    # One token is spent by the first answer: the engine then holds at most 4 running + 1 waiting.
    answerer = EngineAnswerer(tiny_model_dir, config, AnswerBudget(max_tokens=1))

    answers = answerer.answer(prompts, NEW_TOKENS, eos)

    assert answerer.budget_spent
    assert 1 <= len(answers) <= 5 < len(prompts)
    assert answers == generate(teacher, prompts[: len(answers)], NEW_TOKENS, eos, pad_token_id=eos or 0)
    assert answerer.answer(prompts, NEW_TOKENS, eos) == []  # a spent budget stays spent


def test_a_passed_deadline_still_answers_the_first_min_prompts(tiny_model_dir, prompts):
    config = AnswerEngineConfig(max_running_requests=4, num_pages=64, max_batched_tokens=256)
    answerer = EngineAnswerer(tiny_model_dir, config, AnswerBudget(stop_at=0.0, min_prompts=7))

    answers = answerer.answer(prompts, NEW_TOKENS, eos_token_id=None)

    # Seven must be answered; the engine is topped up to 4 running + 1 waiting at a time, so the
    # budget is next checked with 7 or more started.
    assert 7 <= len(answers) < len(prompts)
    assert all(len(a) == NEW_TOKENS for a in answers)


def test_data_cut_by_a_budget_holds_the_answered_prefix_and_a_later_run_completes_it(
    tiny_model_dir, tmp_path
):
    encoder = PromptEncoder(tiny_model_dir)
    teacher = load_llama(tiny_model_dir)
    spec = DataSpec(
        seq_len=48, text_max_files=5, chat_prompts=10, generated_prompts=30, response_max_new_tokens=4
    )
    config = AnswerEngineConfig(max_running_requests=4, num_pages=64, max_batched_tokens=256)
    cut = EngineAnswerer(tiny_model_dir, config, AnswerBudget(max_tokens=1, min_prompts=10))

    def data(answerer: EngineAnswerer):
        return prepare_data(
            spec,
            encoder,
            teacher,
            content_hash(tiny_model_dir),
            tmp_path,
            answer=answerer.answer,
            answer_batch=8,
        )

    partial = data(cut)
    full = data(EngineAnswerer(tiny_model_dir, config))

    partial_ids = [e.id for split in SPLITS for e in partial.chat[split]]
    full_examples = {e.id: e for split in SPLITS for e in full.chat[split]}
    assert 10 <= len(partial_ids) < 40 == len(full_examples)
    assert cut.answered == len(partial_ids)  # every answered prompt is in the data, and only those
    for split in SPLITS:
        for example in partial.chat[split]:
            assert full_examples[example.id] == example  # the rest came from the cache, unchanged
