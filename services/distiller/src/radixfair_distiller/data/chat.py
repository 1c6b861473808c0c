"""The shipped chat prompt set and the teacher's own answers to it.

The prompts (prompts/chat_prompts.jsonl) were written for this project. The
answers are the teacher's greedy generations, made once per (teacher,
prompt set, length) and cached as JSON lines. Generation appends each batch
to the cache file as it finishes, so a distiller stopped mid-way resumes
with the prompts not yet answered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from transformers import LlamaForCausalLM

from radixfair.tokenization import ChatTurn, PromptEncoder
from radixfair_distiller.data.prompt_templates import generated_prompts
from radixfair_distiller.data.splits import split_of
from radixfair_distiller.generation import generate

# Prompts answered per generation batch (and per append to the cache file).
_BATCH = 8
# (prompts as token ids, max_new_tokens, eos_token_id) -> the greedy new tokens of each prompt, or of
# the first ones only when the answerer's budget ran out (data/engine_answers.py, AnswerBudget).
Answerer = Callable[[list[list[int]], int, int | None], list[list[int]]]


@dataclass(frozen=True)
class ChatPrompt:
    id: str
    prompt: str
    # The key the split is decided by; empty: the id. Generated prompts use their subject, so
    # every wording of one subject lands in the same split (data/prompt_templates.py).
    group: str = ""

    @property
    def split(self) -> str:
        return split_of(f"chat::{self.group or self.id}")


@dataclass(frozen=True)
class ChatExample:
    """A prompt rendered with the chat template, and the teacher's answer, as token ids."""

    id: str
    split: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


def shipped_prompts(limit: int = 0) -> list[ChatPrompt]:
    """The prompt set, in file order; ``limit`` keeps the first that many (0 = all)."""
    text = resources.files("radixfair_distiller.prompts").joinpath("chat_prompts.jsonl").read_text()
    prompts = [ChatPrompt(**json.loads(line)) for line in text.splitlines() if line.strip()]
    return prompts[:limit] if limit else prompts


def templated_prompts(count: int, seed: int, avoid_shipped: bool = True) -> list[ChatPrompt]:
    """``count`` prompts of the generated set (data/prompt_templates.py), shuffled by ``seed``.

    With ``avoid_shipped`` none has a subject that any hand-written prompt mentions: the two sets
    split by different keys, so a subject in both could be trained on in one and evaluated in the other.
    """
    avoid = [p.prompt for p in shipped_prompts()] if avoid_shipped else []
    return [ChatPrompt(p.id, p.prompt, p.group) for p in generated_prompts(count, seed, avoid=avoid)]


def prompt_set_hash(prompts: list[ChatPrompt]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        group = f"\t{prompt.group}" if prompt.group else ""  # the shipped set's hash is unchanged
        digest.update(f"{prompt.id}\t{prompt.prompt}{group}\n".encode())
    return digest.hexdigest()[:16]


def teacher_examples(
    teacher: LlamaForCausalLM,
    teacher_hash: str,
    encoder: PromptEncoder,
    prompts: list[ChatPrompt],
    max_new_tokens: int,
    cache_dir: Path,
    on_progress: Callable[[int, int], None] | None = None,
    answer: Answerer | None = None,
    batch: int = _BATCH,
    answer_tag: str = "",
) -> list[ChatExample]:
    """Every prompt with the teacher's greedy answer, read from the cache where already made.

    ``answer`` writes the answers instead of ``generation.generate`` (the worker's engine, see
    data/engine_answers.py: the same greedy tokens, at serving speed); ``batch`` prompts are
    answered between appends to the cache. ``answer_tag`` names the answerer in the cache file
    (answers from a bf16 engine are not the fp32 ``generate``'s, and must not be mixed with them).
    An ``answer`` that returns fewer answers than prompts has spent its budget: the examples are
    then the prompts answered so far (cached ones included), in prompt order.
    """
    name = f"teacher-{teacher_hash[:16]}-prompts-{prompt_set_hash(prompts)}-new{max_new_tokens}{answer_tag}"
    cache = cache_dir / f"{name}.jsonl"
    answers = _read_answers(cache)
    todo = [p for p in prompts if p.id not in answers]
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.exists() and not cache.read_bytes().endswith(b"\n") and cache.stat().st_size:
        with cache.open("a") as handle:
            handle.write("\n")  # end a line a crash cut short, so the next record starts clean
    # Each prompt is rendered and tokenized once (tens of thousands take seconds each pass).
    encoded = {p.id: tuple(encoder.encode_chat([ChatTurn("user", p.prompt)])) for p in prompts}
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        prompt_ids = [list(encoded[p.id]) for p in chunk]
        if answer is not None:
            outputs = answer(prompt_ids, max_new_tokens, encoder.eos_token_id)
        else:
            outputs = generate(
                teacher,
                prompt_ids,
                max_new_tokens,
                encoder.eos_token_id,
                pad_token_id=encoder.eos_token_id or 0,
            )
        with cache.open("a") as handle:
            for prompt, output in zip(chunk, outputs):
                answers[prompt.id] = output
                handle.write(json.dumps({"id": prompt.id, "response_ids": output}) + "\n")
        if on_progress is not None:
            on_progress(len(prompts) - len(todo) + start + len(outputs), len(prompts))
        if len(outputs) < len(chunk):
            break  # the answerer's budget is spent
    return [
        ChatExample(
            id=p.id,
            split=p.split,
            prompt_ids=encoded[p.id],
            response_ids=tuple(answers[p.id]),
        )
        for p in prompts
        if p.id in answers
    ]


def _read_answers(cache: Path) -> dict[str, list[int]]:
    answers: dict[str, list[int]] = {}
    if not cache.exists():
        return answers
    for line in cache.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: that prompt is answered again
        answers[record["id"]] = record["response_ids"]
    return answers
