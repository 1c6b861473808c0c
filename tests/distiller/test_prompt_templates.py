"""The generated prompt set: large, deterministic by seed, and split by subject so splits never share one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair_distiller.data.chat import shipped_prompts, templated_prompts
from radixfair_distiller.data.prompt_templates import all_templated_prompts, generated_prompts, word_problems
from radixfair_distiller.data.splits import CALIBRATION, EVAL, SPLITS, TRAIN


def test_the_templated_set_holds_tens_of_thousands_of_distinct_prompts():
    prompts = all_templated_prompts()

    assert len(prompts) >= 30_000
    assert len({p.prompt for p in prompts}) == len(prompts)
    assert len({p.id for p in prompts}) == len(prompts)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31), count=st.integers(1, 3000))
def test_the_same_seed_gives_the_same_prompts_and_another_seed_another_order(seed, count):
    first = generated_prompts(count, seed)

    assert first == generated_prompts(count, seed)
    assert len(first) == count and len({p.prompt for p in first}) == count
    if count >= 50:
        assert [p.prompt for p in generated_prompts(count, seed + 1)] != [p.prompt for p in first]


def test_word_problems_draw_distinct_numbers_from_the_seed():
    problems = word_problems(500, seed=3)

    assert len({p.prompt for p in problems}) == 500
    assert problems == word_problems(500, seed=3)
    assert any(char.isdigit() for char in problems[0].prompt)


def test_every_wording_of_a_subject_is_in_one_split_and_every_split_is_used():
    prompts = templated_prompts(20_000, seed=0)
    split_of_group: dict[str, set[str]] = {}
    for prompt in prompts:
        split_of_group.setdefault(prompt.group, set()).add(prompt.split)

    assert all(len(splits) == 1 for splits in split_of_group.values())
    counts = {split: sum(p.split == split for p in prompts) for split in SPLITS}
    assert counts[TRAIN] > counts[EVAL] > counts[CALIBRATION] > 500
    texts = {split: {p.prompt for p in prompts if p.split == split} for split in SPLITS}
    assert not (texts[TRAIN] & texts[EVAL]) and not (texts[TRAIN] & texts[CALIBRATION])


def test_no_generated_prompt_is_about_a_subject_a_shipped_prompt_mentions():
    # The shipped set splits by prompt id, the generated one by subject: a subject in both could be
    # trained on through one set and evaluated through the other.
    held_out = [p.prompt.lower() for p in shipped_prompts()]
    prompts = templated_prompts(50_000, seed=0)

    # Every prompt of a group shares its subject, so checking each group once checks every prompt.
    for group in {p.group for p in prompts}:
        kind, _, subject = group.partition("::")
        if kind != "problem":
            core = subject.lower().removeprefix("the ").removeprefix("a ").removeprefix("an ")
            assert not any(core in text for text in held_out), subject
    shipped = {p.prompt for p in shipped_prompts()}
    assert not shipped & {p.prompt for p in prompts}


def test_avoiding_nothing_keeps_subjects_that_avoiding_held_out_prompts_drops():
    kept = {p.group for p in templated_prompts(50_000, seed=0, avoid_shipped=False)}
    avoided = {p.group for p in templated_prompts(50_000, seed=0)}

    assert avoided < kept  # the check above is not vacuous: some subjects were dropped
