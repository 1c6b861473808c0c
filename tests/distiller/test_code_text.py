"""The standard library's code as extra training text: docstrings cut out, drawn at distill.code_fraction."""

from __future__ import annotations

import pytest
import torch

from radixfair.tokenization import PromptEncoder
from radixfair_distiller.data.batches import training_batch
from radixfair_distiller.data.bundle import DataBundle, _code_stream
from radixfair_distiller.data.docstrings import code_documents, docstring_documents
from radixfair_distiller.data.splits import SPLITS, TRAIN, split_of
from radixfair_distiller.recipe import DataSpec, RecipeError, parse_recipe

SOURCE = '''"""Module docstring that must not reach the code text, long enough to be a document of its own."""

import os  # a comment stays


class Thing:
    """Class docstring,
    on two lines."""

    def method(self):
        """Method docstring."""
        return os.sep  # code stays


def function():
    value = "a string that is not a docstring stays"
    return value
'''


def test_code_documents_keep_code_and_comments_and_drop_every_docstring(tmp_path):
    (tmp_path / "thing.py").write_text(SOURCE)

    (document,) = code_documents(root=tmp_path)

    assert document.key == "code::thing.py"
    for kept in (
        "import os  # a comment stays",
        "class Thing:",
        "return os.sep  # code stays",
        "not a docstring",
    ):
        assert kept in document.text
    for doc in docstring_documents(root=tmp_path, min_chars=1):
        for line in doc.text.splitlines():
            assert line.strip() not in document.text


def bundle(code: torch.Tensor | None) -> DataBundle:
    text = {split: torch.arange(0, 5000) for split in SPLITS}
    return DataBundle(text=text, chat={s: [] for s in SPLITS}, eos_token_id=0, pad_token_id=0, code=code)


CODE = torch.arange(100_000, 110_000)


def test_text_rows_come_from_the_code_stream_at_code_fraction():
    all_code = training_batch(bundle(CODE), 32, 16, 0.0, seed=1, step=4, code_fraction=1.0)
    half = torch.cat(
        [training_batch(bundle(CODE), 32, 16, 0.0, 1, step, 0.5).input_ids for step in range(20)]
    )

    assert bool((all_code.input_ids >= 100_000).all())
    share = float((half[:, 0] >= 100_000).float().mean())
    # 320 rows, each code with probability 1/2: the share is 0.5 +- 3 standard deviations (0.084).
    assert abs(share - 0.5) < 0.084


def test_without_code_the_batches_are_the_ones_drawn_before_there_was_code():
    plain = training_batch(bundle(None), 32, 8, 0.0, seed=2, step=7)
    zero_share = training_batch(bundle(CODE), 32, 8, 0.0, seed=2, step=7, code_fraction=0.0)
    no_stream = training_batch(bundle(None), 32, 8, 0.0, seed=2, step=7, code_fraction=0.5)

    assert torch.equal(plain.input_ids, zero_share.input_ids) and torch.equal(
        plain.input_ids, no_stream.input_ids
    )
    assert bool((plain.input_ids < 5000).all())


def test_a_code_fraction_without_the_code_stream_is_refused():
    recipe = "name: r\nteacher: t\ndistill: {tokens: 100, code_fraction: 0.3}\n"
    with pytest.raises(RecipeError, match="data.code_text"):
        parse_recipe(recipe)
    assert parse_recipe(recipe + "data: {code_text: true}\n").distill.code_fraction == 0.3


def test_only_train_split_files_reach_the_code_stream(tiny_model_dir, tmp_path):
    encoder = PromptEncoder(tiny_model_dir)
    documents = code_documents(max_files=12)
    kept = next(d for d in documents if split_of(d.key) == TRAIN)
    held_out = next(d for d in documents if split_of(d.key) != TRAIN)

    stream = _code_stream(DataSpec(text_max_files=12, code_text=True), encoder, 0, tmp_path)

    text = " ".join(map(str, stream.tolist()))
    for document, expected in ((kept, True), (held_out, False)):
        ids = encoder.encode_text(document.text)
        window = ids[len(ids) // 2 : len(ids) // 2 + 24]
        assert (" ".join(map(str, window)) in text) is expected, document.key
