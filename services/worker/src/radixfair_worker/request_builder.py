"""Validates a GenerateRequest message and turns it into an engine Request.

All of the worker's input checking lives here, at the edge: anything the
engine receives is well formed.
"""

from __future__ import annotations

import math
import uuid

from radixfair.errors import InvalidRequestError
from radixfair.request_checks import check_sampling, encode_prompt
from radixfair.tokenization import PromptEncoder
from radixfair.v1 import generation_pb2, worker_pb2
from radixfair_engine.request import Request, SamplingConfig

# Without an explicit max_tokens a request may not run away with the worker.
DEFAULT_MAX_TOKENS = 256


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
    sampling = build_sampling(message.sampling, max_context - len(prompt_ids), encoder.vocab_size)
    return Request(
        request_id=message.request_id or uuid.uuid4().hex,
        client_id=message.client_id,
        prompt_ids=prompt_ids,
        sampling=sampling,
        weight=weight,
    )


def build_sampling(
    params: generation_pb2.SamplingParams, room: int, vocab_size: int | None = None
) -> SamplingConfig:
    """The engine's SamplingConfig; InvalidRequestError for any field out of its range.

    ``room`` is what the context window leaves after the prompt; max_tokens is clipped to it.
    """
    check_sampling(params, vocab_size)
    max_tokens = params.max_tokens if params.HasField("max_tokens") else DEFAULT_MAX_TOKENS
    top_p = params.top_p if params.HasField("top_p") else 1.0
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
