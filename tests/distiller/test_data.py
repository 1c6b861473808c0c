"""Offline data: docstring text, the shipped prompts, cached teacher answers, disjoint splits, batches."""

from __future__ import annotations

import json

import pytest
import torch

from radixfair.tokenization import ChatTurn, PromptEncoder
from radixfair_distiller.data.batches import calibration_batches, eval_text_windows, training_batch
from radixfair_distiller.data.bundle import prepare_data
from radixfair_distiller.data.chat import shipped_prompts, teacher_examples
from radixfair_distiller.data.docstrings import docstring_documents
from radixfair_distiller.data.splits import CALIBRATION, EVAL, SPLITS, TRAIN, split_of
from radixfair_distiller.generation import generate
from radixfair_distiller.losses.divergence import IGNORE_INDEX
from radixfair_distiller.model_dir import content_hash, load_llama
from radixfair_distiller.recipe import DataSpec


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    return load_llama(tiny_model_dir)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return PromptEncoder(tiny_model_dir)


def test_docstrings_are_english_prose_from_the_standard_library():
    documents = docstring_documents(max_files=30, min_chars=200)
    assert len(documents) > 20
    assert len({d.key for d in documents}) == len(documents)
    text = " ".join(d.text for d in documents).lower()
    for word in (" the ", " is ", " of ", " return"):
        assert word in text
    assert all(len(d.text) >= 200 and "::" in d.key for d in documents)


def test_the_shipped_prompt_set_has_unique_ids_and_every_split():
    prompts = shipped_prompts()
    assert len(prompts) >= 200
    assert len({p.id for p in prompts}) == len(prompts)
    counts = {split: sum(p.split == split for p in prompts) for split in SPLITS}
    assert counts[TRAIN] > counts[EVAL] > counts[CALIBRATION] > 0


def test_splits_are_a_fixed_function_of_the_key():
    keys = [f"chat::p{i:04d}" for i in range(1000)]
    assigned = [split_of(k) for k in keys]
    assert assigned == [split_of(k) for k in keys]
    shares = {s: assigned.count(s) / len(keys) for s in SPLITS}
    assert shares[TRAIN] == pytest.approx(0.80, abs=0.05)
    assert shares[EVAL] == pytest.approx(0.15, abs=0.04)


def test_teacher_answers_are_greedy_cached_and_resume_after_a_torn_write(teacher, encoder, tmp_path):
    prompts = shipped_prompts(10)
    first = teacher_examples(teacher, "t" * 64, encoder, prompts, 6, tmp_path)
    cache = next(tmp_path.glob("teacher-*.jsonl"))
    lines = cache.read_text().splitlines()
    assert len(lines) == 10
    # The answer is the teacher's greedy continuation of the templated prompt.
    prompt_ids = encoder.encode_chat([ChatTurn("user", prompts[3].prompt)])
    assert list(first[3].prompt_ids) == prompt_ids
    assert list(first[3].response_ids) == generate(teacher, [prompt_ids], 6, encoder.eos_token_id, 0)[0]
    # A crash mid-write: two whole records and half of a third remain.
    cache.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])
    again = teacher_examples(teacher, "t" * 64, encoder, prompts, 6, tmp_path)
    assert again == first
    records = [json.loads(line) for line in cache.read_text().splitlines() if line != lines[2][:15]]
    assert sorted(r["id"] for r in records) == sorted(p.id for p in prompts)


@pytest.fixture(scope="module")
def bundle(teacher, encoder, tiny_model_dir, tmp_path_factory):
    spec = DataSpec(seq_len=64, text_max_files=40, chat_prompts=60, response_max_new_tokens=8)
    cache = tmp_path_factory.mktemp("data-cache")
    return prepare_data(spec, encoder, teacher, content_hash(tiny_model_dir), cache)


def test_no_text_or_prompt_is_in_two_splits(bundle):
    ids = {split: {e.id for e in bundle.chat[split]} for split in SPLITS}
    assert (
        not (ids[TRAIN] & ids[EVAL])
        and not (ids[TRAIN] & ids[CALIBRATION])
        and not (ids[EVAL] & ids[CALIBRATION])
    )
    assert all(len(bundle.text[split]) > 100 for split in SPLITS)
    windows = {split: {tuple(w.tolist()) for w in eval_text_windows(bundle, 1000, 64)} for split in (EVAL,)}
    train_text = bundle.text[TRAIN].tolist()
    train_windows = {tuple(train_text[i : i + 65]) for i in range(len(train_text) - 64)}
    assert not windows[EVAL] & train_windows


def test_training_batches_depend_only_on_seed_and_step_and_learn_only_answers(bundle):
    batch = training_batch(bundle, 64, 4, 0.5, seed=3, step=11)
    again = training_batch(bundle, 64, 4, 0.5, seed=3, step=11)
    other = training_batch(bundle, 64, 4, 0.5, seed=3, step=12)
    assert torch.equal(batch.input_ids, again.input_ids) and torch.equal(batch.labels, again.labels)
    assert not torch.equal(batch.input_ids, other.input_ids)
    assert batch.input_ids.shape == batch.labels.shape == (4, 64)
    # Text rows learn every next token; chat rows learn only the answer (prompt and padding ignored).
    for row in range(2, 4):
        assert torch.equal(batch.labels[row, :-1], batch.input_ids[row, 1:])
    for row in range(2):
        learned = batch.labels[row] != IGNORE_INDEX
        assert 0 < learned.sum() <= 8
        example_answers = {e.response_ids for e in bundle.chat[TRAIN]}
        assert tuple(batch.labels[row][learned].tolist()) in {
            a[: int(learned.sum())] for a in example_answers
        }


def test_calibration_batches_come_from_the_calibration_split_only(bundle):
    batches = calibration_batches(bundle, sequences=3, seq_len=16)
    assert sum(b.shape[0] for b in batches) == 3
    first = batches[0][0].tolist()
    assert first == bundle.text[CALIBRATION][:16].tolist()
