"""Checks a RouterServiceGenerateRequest at the edge and turns its prompt into token ids.

The router tokenizes with the served model's own tokenizer, so its prefix
tree is over the very tokens the workers cache, and forwards token ids so
the worker does not tokenize again. The worker validates too; checking here
means a malformed request costs no routing, no ledger charge and no hop.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixfair.errors import InvalidRequestError
from radixfair.request_checks import check_sampling, encode_prompt
from radixfair.tokenization import PromptEncoder
from radixfair.v1 import generation_pb2, router_pb2


@dataclass(frozen=True)
class ValidatedRequest:
    request_id: str
    token_ids: tuple[int, ...]
    sampling: generation_pb2.SamplingParams
    model: str


def validate_request(
    message: router_pb2.RouterServiceGenerateRequest, encoder: PromptEncoder, model_name: str, request_id: str
) -> ValidatedRequest:
    if model_name and message.model and message.model != model_name:
        raise InvalidRequestError(f"this router serves model {model_name!r}, not {message.model!r}")
    check_sampling(message.sampling)
    return ValidatedRequest(
        request_id=message.request_id or request_id,
        token_ids=tuple(encode_prompt(message.prompt, encoder)),
        sampling=message.sampling,
        model=message.model or model_name,
    )
