"""Prompt encoding and incremental decoding with the model's own tokenizer.

Uses the ``tokenizers`` library and the chat template stored next to the
weights, so the router can tokenize (for prefix-aware routing) without torch
or transformers, and the worker encodes exactly as the router does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from radixfair.errors import InvalidRequestError


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str


_ROLES = frozenset({"system", "user", "assistant"})


class PromptEncoder:
    """Encodes text or chat turns into token ids and decodes them back.

    ``model_dir`` holds ``tokenizer.json`` and ``tokenizer_config.json`` (with
    its ``chat_template``, or a ``chat_template.jinja`` file beside it).
    """

    def __init__(self, model_dir: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # Special tokens: decode skips them, so they add no text.
        self.silent_token_ids = frozenset(
            i for i, token in self._tokenizer.get_added_tokens_decoder().items() if token.special
        )
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        template_file = model_dir / "chat_template.jinja"
        template_text = template_file.read_text() if template_file.exists() else config.get("chat_template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        self._template = env.from_string(template_text) if template_text else None
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.eos_token_id = self._tokenizer.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_text(self, text: str) -> list[int]:
        # encode_batch, not encode: it releases the GIL while it works (encode holds it for the
        # whole call, seconds for a 1 MB text), so a caller's thread pool keeps its event loop free.
        return self._tokenizer.encode_batch([text], add_special_tokens=False)[0].ids

    def render_chat(self, turns: list[ChatTurn]) -> str:
        if self._template is None:
            raise InvalidRequestError("this model has no chat template; send text or token ids")
        for turn in turns:
            if turn.role not in _ROLES:
                raise InvalidRequestError(f"unknown chat role {turn.role!r}; use one of {sorted(_ROLES)}")
        messages = [{"role": t.role, "content": t.content} for t in turns]
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except jinja2.TemplateError as error:
            raise InvalidRequestError(f"chat template failed: {error}") from error

    def encode_chat(self, turns: list[ChatTurn]) -> list[int]:
        return self.encode_text(self.render_chat(turns))

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)

    def new_detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Byte-level BPE can split one character over several tokens, so text is only emitted once the
    bytes so far make whole characters. The tokenizers library's ``DecodeStream`` does this in Rust
    over a small window of recent ids, ~5x cheaper per token than re-decoding that window twice in
    Python (the serving front detokenizes every stream's every token, so at hundreds of streams this
    is its largest per-token cost). The concatenated deltas equal ``PromptEncoder.decode`` of all ids
    once they end on a whole character (tests/test_tokenization_stream.py).
    """

    def __init__(self, encoder: PromptEncoder) -> None:
        self._tokenizer = encoder._tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        # Ids that decode to nothing (special tokens, ids past the vocabulary) never reach the stream:
        # DecodeStream keeps re-decoding a window that yields no text, so a run of them would cost
        # quadratically in its length (a model repeating EOS under ignore_eos).
        self._silent = encoder.silent_token_ids
        self._vocab_size = encoder.vocab_size
        self.text = ""

    def push(self, token_ids: list[int]) -> str:
        pieces = []
        step, tokenizer, silent, vocab_size = (
            self._stream.step,
            self._tokenizer,
            self._silent,
            self._vocab_size,
        )
        for token_id in token_ids:
            if token_id in silent or token_id >= vocab_size:  # a negative id still fails in step
                continue
            piece = step(tokenizer, token_id)
            if piece:
                pieces.append(piece)
        delta = "".join(pieces)
        self.text += delta
        return delta


def _token_text(token: object) -> str | None:
    if isinstance(token, dict):
        return str(token.get("content"))
    return None if token is None else str(token)


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)
