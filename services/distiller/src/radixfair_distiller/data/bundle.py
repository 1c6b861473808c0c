"""Everything a job reads, split apart: docstring token streams and teacher-answered chat."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from radixfair.tokenization import PromptEncoder
from radixfair_distiller.data.chat import (
    Answerer,
    ChatExample,
    shipped_prompts,
    teacher_examples,
    templated_prompts,
)
from radixfair_distiller.data.docstrings import code_documents, docstring_documents
from radixfair_distiller.data.splits import SPLITS, TRAIN, split_of
from radixfair_distiller.recipe import DataSpec


@dataclass(frozen=True)
class DataBundle:
    """Token data per split ("train", "calibration", "eval")."""

    # split -> 1-D int64 token stream: that split's documents joined by end-of-sequence.
    text: dict[str, torch.Tensor]
    chat: dict[str, list[ChatExample]]
    eos_token_id: int
    pad_token_id: int
    # 1-D int64 token stream of the train split's standard-library code (DataSpec.code_text), or None.
    code: torch.Tensor | None = None


def prepare_data(
    spec: DataSpec,
    encoder: PromptEncoder,
    teacher: LlamaForCausalLM,
    teacher_hash: str,
    cache_dir: Path,
    on_progress: Callable[[int, int], None] | None = None,
    answer: Answerer | None = None,
    answer_batch: int = 8,
    answer_tag: str = "",
) -> DataBundle:
    """Builds (or reads from ``cache_dir``) the text streams and the teacher's chat answers.

    ``answer`` (see teacher_examples) lets the worker's engine write the answers, ``answer_batch``
    prompts at a time.
    """
    eos = encoder.eos_token_id if encoder.eos_token_id is not None else 0
    text = _text_streams(spec, encoder, eos, cache_dir)
    # Before the answers: a caller that caps the answering by a deadline has the text already paid for.
    code = _code_stream(spec, encoder, eos, cache_dir) if spec.code_text else None
    prompts = shipped_prompts(spec.chat_prompts)
    if spec.generated_prompts:
        prompts += templated_prompts(spec.generated_prompts, spec.generated_prompts_seed)
    examples = teacher_examples(
        teacher,
        teacher_hash,
        encoder,
        prompts,
        spec.response_max_new_tokens,
        cache_dir,
        on_progress,
        answer,
        answer_batch,
        answer_tag,
    )
    chat = {split: [e for e in examples if e.split == split] for split in SPLITS}
    return DataBundle(text=text, chat=chat, eos_token_id=eos, pad_token_id=eos, code=code)


def _code_stream(spec: DataSpec, encoder: PromptEncoder, eos: int, cache_dir: Path) -> torch.Tensor:
    """The train split's code documents (split by file) joined by end-of-sequence; cached like the text."""
    key = json.dumps(["code", sys.version_info[:2], spec.text_max_files, encoder.vocab_size, eos])
    cache = cache_dir / f"code-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if cache.exists():
        return load_file(str(cache))["code"]
    ids: list[int] = []
    for document in code_documents(spec.text_max_files):
        if split_of(document.key) == TRAIN:
            ids.extend(encoder.encode_text(document.text))
            ids.append(eos)
    stream = torch.tensor(ids, dtype=torch.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    save_file({"code": stream}, str(partial))
    partial.rename(cache)
    return stream


def _text_streams(
    spec: DataSpec, encoder: PromptEncoder, eos: int, cache_dir: Path
) -> dict[str, torch.Tensor]:
    key = json.dumps(
        [sys.version_info[:2], spec.text_max_files, spec.min_docstring_chars, encoder.vocab_size, eos]
    )
    cache = cache_dir / f"docstrings-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if cache.exists():
        return dict(load_file(str(cache)))
    tokens: dict[str, list[int]] = {split: [] for split in SPLITS}
    for document in docstring_documents(spec.text_max_files, spec.min_docstring_chars):
        stream = tokens[split_of(f"text::{document.key}")]
        stream.extend(encoder.encode_text(document.text))
        stream.append(eos)
    streams = {split: torch.tensor(ids, dtype=torch.int64) for split, ids in tokens.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    save_file(streams, str(partial))
    partial.rename(cache)
    return streams
