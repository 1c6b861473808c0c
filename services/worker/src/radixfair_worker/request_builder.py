"""Validates a GenerateRequest message and turns it into an engine Request.

All of the worker's input checking lives here, at the edge: anything the
engine receives is well formed.
"""

from __future__ import annotations

import math
import uuid

from radixfair.errors import InvalidRequestError
from radixfair.tokenization import ChatTurn, PromptEncoder
from radixfair.v1 import generation_pb2, worker_pb2
from radixfair_worker.request import Request, SamplingConfig

# Without an explicit max_tokens a request may not run away with the worker.
DEFAULT_MAX_TOKENS = 256
MAX_STOP_STRINGS = 16


def build_request(
    message: worker_pb2.GenerateRequest, encoder: PromptEncoder, model_name: str, max_context: int
) -> Request:
    if not message.client_id.strip():
        raise InvalidRequestError("client_id is required")
    if message.model and message.model != model_name:
        raise InvalidRequestError(f"this worker serves model {model_name!r}, not {message.model!r}")
    weight = message.client_weight or 1.0
    if not math.isfinite(weight) or weight <= 0:
        raise InvalidRequestError("client_weight must be a positive number")
    prompt_ids = encode_prompt(message.prompt, encoder)
    sampling = build_sampling(message.sampling, max_context - len(prompt_ids))
    return Request(
        request_id=message.request_id or uuid.uuid4().hex,
        client_id=message.client_id,
        prompt_ids=prompt_ids,
        sampling=sampling,
        weight=weight,
    )


def encode_prompt(prompt: generation_pb2.Prompt, encoder: PromptEncoder) -> list[int]:
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        ids = encoder.encode_text(prompt.text)
    elif kind == "chat":
        if not prompt.chat.messages:
            raise InvalidRequestError("chat prompt has no messages")
        ids = encoder.encode_chat([ChatTurn(m.role, m.content) for m in prompt.chat.messages])
    elif kind == "token_ids":
        ids = list(prompt.token_ids.ids)
        bad = [t for t in ids if not 0 <= t < encoder.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"token ids out of vocabulary range [0, {encoder.vocab_size}): {bad[:5]}"
            )
    else:
        raise InvalidRequestError("prompt is missing: set text, chat or token_ids")
    if not ids:
        raise InvalidRequestError("prompt is empty")
    return ids


def build_sampling(params: generation_pb2.SamplingParams, room: int) -> SamplingConfig:
    max_tokens = params.max_tokens if params.HasField("max_tokens") else DEFAULT_MAX_TOKENS
    if max_tokens <= 0:
        raise InvalidRequestError(f"max_tokens must be > 0, got {max_tokens}")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise InvalidRequestError(f"temperature must be >= 0, got {params.temperature}")
    if params.top_k < 0:
        raise InvalidRequestError(f"top_k must be >= 0, got {params.top_k}")
    top_p = params.top_p if params.HasField("top_p") else 1.0
    if not (0.0 < top_p <= 1.0):
        raise InvalidRequestError(f"top_p must be in (0, 1], got {top_p}")
    if len(params.stop) > MAX_STOP_STRINGS or any(not s for s in params.stop):
        raise InvalidRequestError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings")
    return SamplingConfig(
        max_tokens=max(1, min(max_tokens, room)),
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=top_p,
        seed=params.seed if params.HasField("seed") else None,
        stop_token_ids=tuple(params.stop_token_ids),
        stop_strings=tuple(params.stop),
        ignore_eos=params.ignore_eos,
    )
