"""Checks of the request fields that routers and workers share: the prompt and the sampling parameters.

Both validate at their edge (a router so a malformed request costs no routing or
ledger charge, a worker because it may be called directly), with the same rules
and the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from radixfair.errors import InvalidRequestError
from radixfair.tokenization import ChatTurn, PromptEncoder
from radixfair.v1 import generation_pb2

MAX_STOP_STRINGS = 16
# Longest stop string: text that could be its prefix is held back from the stream, and
# every generated token is searched for it.
MAX_STOP_STRING_CHARS = 512
# Every generated token is compared with these.
MAX_STOP_TOKEN_IDS = 256


def encode_prompt(prompt: generation_pb2.Prompt, encoder: PromptEncoder) -> list[int]:
    """Token ids of a text, chat or token-id prompt; InvalidRequestError if it is missing or empty."""
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        ids = encoder.encode_text(prompt.text)
    elif kind == "chat":
        if not prompt.chat.messages:
            raise InvalidRequestError("chat prompt has no messages")
        ids = encoder.encode_chat([ChatTurn(m.role, m.content) for m in prompt.chat.messages])
    elif kind == "token_ids":
        ids = list(prompt.token_ids.ids)
        # The vocabulary size is asked once and the range checked by min/max: asked per id, a
        # 1,088-id prompt cost about a millisecond of the serving front's event loop.
        vocab_size = encoder.vocab_size
        if ids and (min(ids) < 0 or max(ids) >= vocab_size):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            raise InvalidRequestError(f"token ids out of vocabulary range [0, {vocab_size}): {bad[:5]}")
    else:
        raise InvalidRequestError("prompt is missing: set text, chat or token_ids")
    if not ids:
        raise InvalidRequestError("prompt is empty")
    return ids


def check_sampling(params: generation_pb2.SamplingParams, vocab_size: int | None = None) -> None:
    """InvalidRequestError unless every sampling field is in its documented range.

    Every value that passes is one the engine samples correctly: any finite temperature > 0
    (a vanishing one acts as greedy, a huge one as uniform), any top_k (one beyond the
    vocabulary keeps all), any top_p in (0, 1], any uint64 seed. NaN and infinities never
    pass. ``vocab_size``, where known, also bounds ``stop_token_ids``.
    """
    if params.HasField("max_tokens") and params.max_tokens <= 0:
        raise InvalidRequestError(f"max_tokens must be > 0, got {params.max_tokens}")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise InvalidRequestError(f"temperature must be a finite number >= 0, got {params.temperature}")
    if params.top_k < 0:
        raise InvalidRequestError(f"top_k must be >= 0, got {params.top_k}")
    # Written so that NaN fails too.
    if params.HasField("top_p") and not (0.0 < params.top_p <= 1.0):
        raise InvalidRequestError(f"top_p must be in (0, 1], got {params.top_p}")
    _check_stop_token_ids(params.stop_token_ids, vocab_size)
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(params.stop)}")
    if any(not s for s in params.stop):
        raise InvalidRequestError("stop strings must not be empty")
    longest = max((len(s) for s in params.stop), default=0)
    if longest > MAX_STOP_STRING_CHARS:
        raise InvalidRequestError(
            f"stop strings have at most {MAX_STOP_STRING_CHARS} characters, got one of {longest}"
        )


def _check_stop_token_ids(ids: Sequence[int], vocab_size: int | None) -> None:
    if len(ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequestError(f"stop_token_ids takes at most {MAX_STOP_TOKEN_IDS} ids, got {len(ids)}")
    upper = vocab_size if vocab_size is not None else 2**31
    bad = [t for t in ids if not 0 <= t < upper]
    if bad:
        where = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise InvalidRequestError(f"stop_token_ids must be token ids {where}, got {bad[:5]}")
