"""Token batches for training, calibration and evaluation, drawn from a DataBundle.

A training batch is a pure function of (seed, step): a restarted job that
resumes at step k draws exactly the batches an uninterrupted one would.

Layout: ``input_ids`` [B, S] and ``labels`` [B, S] with labels[b, t] the
token that should follow input_ids[b, t], or IGNORE_INDEX where nothing is
learned (chat prompts, padding). Chat rows are right-padded, so padding
never influences the real positions of a causal model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from radixfair_distiller.data.bundle import DataBundle
from radixfair_distiller.data.chat import ChatExample
from radixfair_distiller.data.splits import CALIBRATION, EVAL, TRAIN
from radixfair_distiller.losses.divergence import IGNORE_INDEX


@dataclass(frozen=True)
class TokenBatch:
    input_ids: torch.Tensor  # [B, S] int64
    labels: torch.Tensor  # [B, S] int64, IGNORE_INDEX where no loss

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.labels.to(device))


def step_rng(seed: int, step: int, purpose: str) -> random.Random:
    # str seeds hash deterministically (not with PYTHONHASHSEED), unlike tuples.
    return random.Random(f"{purpose}:{seed}:{step}")


def training_batch(
    bundle: DataBundle,
    seq_len: int,
    batch_size: int,
    chat_fraction: float,
    seed: int,
    step: int,
    code_fraction: float = 0.0,
) -> TokenBatch:
    """Chat rows, then text rows; a text row is a code window with probability ``code_fraction``."""
    rng = step_rng(seed, step, "batch")
    chat = bundle.chat[TRAIN]
    chat_rows = round(batch_size * chat_fraction) if chat else 0
    stream = bundle.text[TRAIN]
    if len(stream) <= seq_len + 1:
        chat_rows = batch_size  # too little text: all chat
        if not chat:
            raise ValueError(
                "no training data: the text split is shorter than one sequence and there is no chat"
            )
    rows = [chat_row(rng.choice(chat), seq_len, bundle.pad_token_id) for _ in range(chat_rows)]
    code = bundle.code if bundle.code is not None and len(bundle.code) > seq_len + 1 else None
    for _ in range(batch_size - chat_rows):
        # The draw only happens with a code stream, so batches without one are what they always were.
        source = code if code is not None and code_fraction > 0 and rng.random() < code_fraction else stream
        start = rng.randrange(0, len(source) - seq_len - 1)
        window = source[start : start + seq_len + 1]
        rows.append((window[:-1], window[1:]))
    return _stack(rows)


def chat_row(
    example: ChatExample | tuple[tuple[int, ...], tuple[int, ...]], seq_len: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One right-padded row learning only the response tokens."""
    if isinstance(example, ChatExample):
        prompt, response = example.prompt_ids, example.response_ids
    else:
        prompt, response = example
    tokens = list(prompt) + list(response)
    targets = [IGNORE_INDEX] * (len(prompt) - 1) + list(response)
    # Too long: cut the end of the answer, never the start of the prompt, so every learned
    # position sees the same context it has at evaluation and at serving time.
    tokens, targets = tokens[: seq_len + 1], targets[:seq_len]
    inputs = tokens[:-1]
    pad = seq_len - len(inputs)
    inputs = inputs + [pad_token_id] * pad
    targets = targets + [IGNORE_INDEX] * pad
    return torch.tensor(inputs, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64)


def calibration_batches(
    bundle: DataBundle, sequences: int, seq_len: int, batch_size: int = 4
) -> list[torch.Tensor]:
    """Unpadded [b, seq_len] windows of calibration text and chat (prompt + answer), in that order."""
    parts = [bundle.text[CALIBRATION]]
    for example in bundle.chat[CALIBRATION]:
        parts.append(torch.tensor(example.prompt_ids + example.response_ids, dtype=torch.int64))
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    windows = _windows(stream, seq_len, sequences)
    if not windows:
        raise ValueError(f"calibration split holds fewer than {seq_len} tokens")
    return [torch.stack(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]


def eval_text_windows(bundle: DataBundle, sequences: int, seq_len: int) -> list[torch.Tensor]:
    """The first ``sequences`` non-overlapping held-out windows of seq_len + 1 tokens (inputs + targets)."""
    windows = _windows(bundle.text[EVAL], seq_len + 1, sequences)
    if not windows:
        raise ValueError(f"evaluation text split holds fewer than {seq_len + 1} tokens")
    return windows


def _windows(stream: torch.Tensor, length: int, count: int) -> list[torch.Tensor]:
    return [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)][:count]


def _stack(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> TokenBatch:
    return TokenBatch(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))
