"""Checks a RouterServiceGenerateRequest at the edge and turns its prompt into token ids.

The router tokenizes with the served model's own tokenizer, so its prefix
tree is over the very tokens the workers cache, and forwards token ids so
the worker does not tokenize again. The worker validates too; checking here
means a malformed request costs no routing, no ledger charge and no hop.

Every request gets an id the router makes (a UUID4), unique across router
replicas: it keys everything per request here and on the worker. The
caller's ``request_id`` is only a label for logs and traces, since two
tenants may pick the same one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from radixfair.errors import InvalidRequestError
from radixfair.request_checks import check_sampling, encode_prompt
from radixfair.tokenization import PromptEncoder
from radixfair.v1 import generation_pb2, router_pb2

# Longest caller-chosen request id kept as a label.
MAX_LABEL_CHARS = 256


@dataclass(frozen=True)
class ValidatedRequest:
    # Made by the router, unique: the key of every per-request structure.
    request_id: str
    token_ids: tuple[int, ...]
    sampling: generation_pb2.SamplingParams
    model: str
    # The caller's request_id, for logs and traces only; may repeat across callers.
    label: str = ""


def new_request_id() -> str:
    return uuid.uuid4().hex


def validate_request(
    message: router_pb2.RouterServiceGenerateRequest, encoder: PromptEncoder, model_name: str
) -> ValidatedRequest:
    if model_name and message.model and message.model != model_name:
        raise InvalidRequestError(f"this router serves model {model_name!r}, not {message.model!r}")
    if len(message.request_id) > MAX_LABEL_CHARS:
        raise InvalidRequestError(
            f"request_id has {len(message.request_id)} characters; at most {MAX_LABEL_CHARS}"
        )
    check_sampling(message.sampling)
    return ValidatedRequest(
        request_id=new_request_id(),
        token_ids=tuple(encode_prompt(message.prompt, encoder)),
        sampling=message.sampling,
        model=message.model or model_name,
        label=message.request_id,
    )
